"""The recognition step on real models and the bundled sample gallery: each result leaves it complete (the
caller's context, every latency stage in order) and a gallery saved between batches names the next batch."""
from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from config import VidrecConfig
from stream.clockcode import encode_clock
from stream.frames import Frame
from stream.sources import open_source
from workers.gallery_job import new_gallery
from workers.recognition import FrameContext, RecognitionStep, gallery_watcher
from workers.system import build_recognizer, build_system
from tests.sample_gallery import sample_gallery_config

STAGES = ["decode", "detect", "recognize", "search", "post", "total"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> VidrecConfig:
    """The sample gallery (taxi, cyclist from frame 120, parked bicycle), built in a folder of its own."""
    cfg = sample_gallery_config(tmp_path_factory.mktemp("gallery") / "index")
    new_gallery(cfg, build_recognizer(cfg))
    return cfg


@pytest.fixture(scope="module")
def frames(bikes_mp4: Path) -> list[Frame]:
    """Frames 119..121 of bikes.mp4: the cyclist's shot."""
    with open_source(bikes_mp4) as source:
        return list(islice((f for f in source if f.index >= 119), 3))


def _stamped(frame: Frame, ms: int) -> Frame:
    """``frame`` with the wall-clock stamp ``ms`` written over its top rows, as a clock-stamping camera does."""
    image = frame.image_bgr.copy()
    strip = encode_clock(ms, frame.width)
    image[: strip.shape[0]] = strip[:, :, np.newaxis]
    return Frame(frame.stream_id, frame.index, frame.pts, frame.capture_time, image, frame.decode_ms)


def test_results_carry_the_callers_context_and_every_latency_stage(cfg: VidrecConfig, frames: list[Frame]) -> None:
    system = build_system(cfg)
    step = RecognitionStep.from_config(cfg, system, class_names=system.detector.class_names)
    camera_ms = int(frames[2].capture_time * 1000) - 40  # the camera stamped it 40 ms before it was decoded
    batch = [frames[0], frames[1], _stamped(frames[2], camera_ms)]
    contexts = [
        FrameContext(stream_state="live", seq=7, run_id="r1.2"),
        FrameContext(stream_state="stalled", seq=8, run_id="r1.2"),
        FrameContext(stream_state="live", seq=9, run_id="r1.2", clock_stamped=True),
    ]
    started = frames[2].capture_time + 0.25  # the batch started 250 ms after the newest capture

    recognized = step.run(batch, contexts, batch_started=started)

    results = recognized.results
    assert [(r.frame_index, r.stream_state, r.seq, r.run_id) for r in results] == [
        (119, "live", 7, "r1.2"), (120, "stalled", 8, "r1.2"), (121, "live", 9, "r1.2")]
    assert [list(r.latency_ms) for r in results] == [STAGES + ["queue"], STAGES + ["queue"], STAGES + ["queue", "camera"]]
    for frame, result in zip(batch, results):
        assert result.latency_ms["queue"] == pytest.approx((started - frame.capture_time) * 1000.0)
        assert result.latency_ms["detect"] == recognized.times.detect
        assert result.gallery_version == 1
    assert results[2].latency_ms["camera"] == pytest.approx(frames[2].capture_time * 1000.0 - camera_ms)
    # Recognised for real: the cyclist of the gallery (cropped from frame 120) is named on a person's track once
    # two of its crops agreed (Tracker.min_votes, the default 2), and keeps that track's id.
    [cyclist] = [o for o in results[2].objects if o.label == "cyclist"]
    assert cyclist.det_class == "person" and cyclist.track_id is not None and cyclist.embedded
    events = [(e.event, e.track_id, e.label) for e in recognized.events if e.track_id == cyclist.track_id]
    assert events[0] == ("started", cyclist.track_id, None) and ("labelled", cyclist.track_id, "cyclist") in events


def test_without_tracking_every_box_of_every_frame_is_recognised(cfg: VidrecConfig, frames: list[Frame]) -> None:
    system = build_system(cfg)
    step = RecognitionStep(system, class_names=system.detector.class_names, tracking=None)
    recognized = step.run(frames)
    # PP-ShiTu per image: the cyclist is named in every frame on its own, no track, every crop embedded.
    for result in recognized.results:
        assert any(o.label == "cyclist" and o.det_class == "person" for o in result.objects), result.frame_index
        assert all(o.track_id is None and o.embedded for o in result.objects)
    assert recognized.events == []
    # Each frame's detector boxes plus its whole-frame box went through the recognizer.
    assert recognized.crops == [len(d.xyxy) + 1 for d in system.detector.detect([f.image_bgr for f in frames])]


def test_without_context_a_result_is_a_file_jobs(cfg: VidrecConfig, frames: list[Frame]) -> None:
    system = build_system(cfg)
    step = RecognitionStep(system, class_names=system.detector.class_names)
    [result] = step.run(frames[:1]).results
    assert list(result.latency_ms) == STAGES  # no queue, no camera: the video job's messages stay as they were
    assert (result.stream_state, result.seq, result.run_id) == (None, None, None)
    assert {"stream_state", "seq", "run_id"}.isdisjoint(result.to_dict())


def test_a_gallery_saved_between_batches_names_the_next_batch(tmp_path: Path, frames: list[Frame], model_dir: Path) -> None:
    cfg = sample_gallery_config(tmp_path / "index")
    recognizer = build_recognizer(cfg)
    new_gallery(cfg, recognizer)
    system = build_system(cfg)
    step = RecognitionStep(system, class_names=system.detector.class_names,
                           watcher=gallery_watcher(cfg, system, interval_s=0.0))
    assert {r.gallery_version for r in step.run(frames).results} == {1}
    new_gallery(cfg, recognizer)  # saved again: version 2
    assert {r.gallery_version for r in step.run(frames).results} == {2}
    assert step.gallery_version == 2 and step.gallery_entries == 3


def test_one_context_per_frame(cfg: VidrecConfig, frames: list[Frame]) -> None:
    system = build_system(cfg)
    step = RecognitionStep(system, class_names=system.detector.class_names)
    with pytest.raises(ValueError, match="3 frame\\(s\\) but 1 context"):
        step.run(frames, [FrameContext()])
