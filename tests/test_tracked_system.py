"""Recognition per track on real models and real footage (samples/bikes.mp4, the sample gallery): per-stream
track state across batches, and every way a stream's tracks end (restart, resolution change, time going back, a
tracker error), a gallery swap mid-track, and that one stream's fault never reaches another."""
from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path

import cv2
import pytest

from config import VidrecConfig
from models.shitu import ShituSystem
from stream.frames import Frame
from stream.sources import open_source
from workers.gallery_job import new_gallery
from workers.recognition import RecognitionStep, gallery_watcher
from workers.system import build_recognizer, build_system, tracking_params
from tests.sample_gallery import sample_gallery_config



@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> VidrecConfig:
    cfg = sample_gallery_config(tmp_path_factory.mktemp("gallery") / "index")
    new_gallery(cfg, build_recognizer(cfg))
    return cfg


@pytest.fixture(scope="module")
def frames(bikes_mp4: Path) -> list[Frame]:
    """Frames 110..139 of bikes.mp4: the cyclist (in the gallery) rides through, with other people and bikes."""
    with open_source(bikes_mp4) as source:
        return list(islice((f for f in source if f.index >= 110), 30))


def as_stream(frames: list[Frame], stream_id: str) -> list[Frame]:
    return [Frame(stream_id, f.index, f.pts, f.capture_time, f.image_bgr, f.decode_ms) for f in frames]


@pytest.fixture(scope="module")
def system(cfg: VidrecConfig) -> ShituSystem:
    return build_system(cfg)


def step_of(cfg: VidrecConfig, system: ShituSystem) -> RecognitionStep:
    """A step with its own tracks on the shared models (tracks live in the step, never in the system)."""
    return RecognitionStep(system, class_names=system.detector.class_names, tracking=tracking_params(cfg))


def objects(results) -> list[list[tuple]]:
    return [[(o.track_id, o.label, o.embedded, o.bbox) for o in r.objects] for r in results]


def test_streams_batched_together_are_tracked_as_if_alone(cfg: VidrecConfig, system: ShituSystem, frames: list[Frame]) -> None:
    alone = step_of(cfg, system)
    alone_a = [r for i in range(0, 30, 3) for r in alone.run(as_stream(frames[i:i + 3], "a")).results]
    mixed = step_of(cfg, system)
    a, b = as_stream(frames, "a"), as_stream(frames[::-1], "b")  # b runs the clip backwards (its own clock)
    b = [Frame("b", f.index, n / 25, f.capture_time, f.image_bgr) for n, f in enumerate(b)]
    got_a = []
    for i in range(0, 30, 3):  # batches of six: three frames of each stream, interleaved
        batch = [x for pair in zip(a[i:i + 3], b[i:i + 3]) for x in pair]
        got_a.extend(r for r in mixed.run(batch).results if r.stream_id == "a")
    assert objects(got_a) == objects(alone_a)
    ids_a = {o.track_id for r in got_a for o in r.objects} - {None}
    assert ids_a and min(ids_a) == 1  # each stream numbers its own tracks
    # The gallery's cyclist is named on its track, and far fewer crops than boxes were recognised.
    assert any(o.label == "cyclist" and o.track_id is not None for r in got_a for o in r.objects)


def test_fewer_crops_than_per_frame_recognition(cfg: VidrecConfig, system: ShituSystem, frames: list[Frame]) -> None:
    tracked = step_of(cfg, system)
    per_frame = RecognitionStep(system, class_names=system.detector.class_names, tracking=None)
    tracked_crops = sum(c for i in range(0, 30, 5) for c in tracked.run(frames[i:i + 5]).crops)
    per_frame_crops = sum(c for i in range(0, 30, 5) for c in per_frame.run(frames[i:i + 5]).crops)
    print(f"\ncrops over 30 frames: per frame {per_frame_crops}, per track {tracked_crops}")
    assert tracked_crops * 2 <= per_frame_crops


def test_a_restart_ends_the_tracks_and_ids_are_never_reused(cfg: VidrecConfig, system: ShituSystem, frames: list[Frame]) -> None:
    step = step_of(cfg, system)
    first = step.run(frames[:15])
    before = {e.track_id for e in first.events if e.event == "started"}
    assert before
    ended = step.end_stream("bikes", "stream restarted", run_id="r1")
    assert {e.track_id for e in ended} == before - {e.track_id for e in first.events if e.event == "ended"}
    assert all(e.event == "ended" and e.reason == "stream restarted" and e.run_id == "r1" and e.frame_index == -1
               for e in ended)
    assert step.end_stream("bikes", "again") == []  # nothing left to end
    again = step.run(frames[:15])  # the same frames (and times) after the restart
    after = {e.track_id for e in again.events if e.event == "started"}
    assert after and min(after) > max(before)


def test_a_resolution_change_ends_the_tracks(cfg: VidrecConfig, system: ShituSystem, frames: list[Frame]) -> None:
    step = step_of(cfg, system)
    first = step.run(frames[:10])
    live = {e.track_id for e in first.events if e.event == "started"} - {e.track_id for e in first.events if e.event == "ended"}
    assert live
    bigger = [Frame(f.stream_id, f.index, f.pts, f.capture_time, cv2.resize(f.image_bgr, (960, 408)))
              for f in frames[10:20]]
    second = step.run(bigger)
    ended = [e for e in second.events if e.event == "ended"]
    assert {e.track_id for e in ended} >= live
    assert all(e.reason == "resolution changed to 960x408" for e in ended if e.track_id in live)
    assert all(r.width == 960 for r in second.results)


def test_time_that_goes_back_ends_the_tracks(cfg: VidrecConfig, system: ShituSystem, frames: list[Frame]) -> None:
    step = step_of(cfg, system)
    first = step.run(frames[:10])
    live = {e.track_id for e in first.events if e.event == "started"} - {e.track_id for e in first.events if e.event == "ended"}
    looped = step.run(frames[:10])  # a file that loops: its pts start again
    reasons = {e.reason for e in looped.events if e.event == "ended" and e.track_id in live}
    assert live and len(reasons) == 1 and reasons.pop().startswith("time went back")
    assert min(e.track_id for e in looped.events if e.event == "started") > max(live)


def test_a_gallery_swap_mid_track_embeds_every_live_track_again(tmp_path: Path, frames: list[Frame],
                                                                model_dir: Path) -> None:
    cfg = sample_gallery_config(tmp_path / "index")
    recognizer = build_recognizer(cfg)
    new_gallery(cfg, recognizer)
    system = build_system(cfg)
    step = RecognitionStep(system, class_names=system.detector.class_names, tracking=tracking_params(cfg),
                           watcher=gallery_watcher(cfg, system, interval_s=0.0))
    step.run(frames[:12])
    quiet = step.run(frames[12:14])  # settled tracks reuse their answers
    assert not any(o.embedded for r in quiet.results for o in r.objects if o.track_id is not None)
    new_gallery(cfg, recognizer)  # saved again: version 2, between batches
    swapped = step.run(frames[14:15])
    [result] = swapped.results
    assert result.gallery_version == 2
    tracked = [o for o in result.objects if o.track_id is not None]
    assert tracked and all(o.embedded for o in tracked)
    # The answers stand while the new version's votes settle: the cyclist keeps its name.
    named_before = {o.track_id: o.label for r in quiet.results for o in r.objects if o.label}
    assert all(o.label == named_before[o.track_id] for o in tracked if o.track_id in named_before)


def test_a_tracker_error_ends_that_streams_tracks_only(cfg: VidrecConfig, system: ShituSystem, frames: list[Frame],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    step = step_of(cfg, system)
    a, b = as_stream(frames, "a"), as_stream(frames, "b")
    step.run(a[:10] + b[:10])
    broken = step.tracked.streams["a"].tracker

    def fail(*args, **kwargs):  # fault injection: the library raising inside one stream's tracker
        raise RuntimeError("boom")

    monkeypatch.setattr(broken, "update", fail)
    live_b = set(step.tracked.streams["b"].tracks)
    with caplog.at_level(logging.ERROR, logger="models.tracking.system"):
        batch = step.run(a[10:11] + b[10:11])
    res_a, res_b = batch.results
    assert all(o.track_id is None for o in res_a.objects) and res_a.objects  # boxes still published, untracked
    ended_a = [e for e in batch.events if e.stream_id == "a" and e.event == "ended"]
    assert ended_a and all(e.reason == "tracker error: RuntimeError: boom" for e in ended_a)
    assert not [e for e in batch.events if e.stream_id == "b" and e.event == "ended" and e.reason != "lost"]
    assert {o.track_id for o in res_b.objects} & live_b  # b goes on with its tracks
    assert "stream 'a': tracker failed on frame 120 (RuntimeError: boom)" in caplog.text
    again = step.run(a[11:13])  # the next frames of a: a fresh tracker, ids going on
    assert all(o.track_id is None or o.track_id > max(e.track_id for e in ended_a)
               for r in again.results for o in r.objects)


@pytest.mark.parametrize(
    ("tracking", "batch_size"),
    [
        (True, 1),   # vidrec video's default: one frame per batch, tracks carried between them
        (True, 3),   # several frames per batch
        (False, 2),  # per box per frame (Tracker.enabled=false)
    ],
)
def test_detecting_ahead_changes_no_result(cfg: VidrecConfig, system: ShituSystem, frames: list[Frame],
                                           tracking: bool, batch_size: int) -> None:
    """Batch N+1 detected on its own thread while N is recognised (Detector.run_ahead): every box, track id,
    label and embedded flag as when each batch is detected in its turn."""
    from workers.video_job import batched, recognized_batches

    def run(ahead: bool) -> list[list[tuple]]:
        step = RecognitionStep(system, class_names=system.detector.class_names,
                               tracking=tracking_params(cfg) if tracking else None)
        out = []
        for batch, recognized in recognized_batches(step, batched(iter(frames), batch_size), ahead=ahead):
            assert [r.frame_index for r in recognized.results] == [f.index for f in batch]
            assert recognized.times.detect > 0
            out.extend(objects(recognized.results))
        return out

    inline, ahead = run(False), run(True)
    assert len(inline) == len(frames) and sum(map(len, inline)) > len(frames)  # boxes, not just whole frames
    assert ahead == inline


def test_a_detector_error_ahead_reaches_the_caller(cfg: VidrecConfig, system: ShituSystem, frames: list[Frame]) -> None:
    """An error on the detector thread is raised where its batch is recognised, and the thread goes on."""
    from workers.detect_ahead import DetectAhead

    step = RecognitionStep(system, class_names=system.detector.class_names)
    broken = Frame("cam", 0, 0.0, 0.0, frames[0].image_bgr[:0], 0.0)  # 0 rows: the detector cannot letterbox it
    with DetectAhead(step) as ahead:
        failed = ahead.submit([broken])
        fine = ahead.submit(frames[:1])
        with pytest.raises(ValueError, match="positive height and width"):
            step.run([broken], detected=failed.result())
        assert len(step.run(frames[:1], detected=fine.result()).results) == 1
