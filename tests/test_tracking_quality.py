"""The vtest.avi enrol-and-find scenario of tests/test_retrieval_quality.py, with tracking: the same gallery (four
pedestrians, each enrolled from ONE frame), the same frames and the same ground-truth rule, but every frame of each
window range goes IN ORDER through the tracked ``RecognitionStep`` (a tracker needs consecutive frames), and the
labels it publishes are scored the same way. Also: how often the label shown on a person's box changes, per second.

The helpers here are shared with bench/tracking_ab.py, which measures the same thing with tracking on and off
side by side (docs/benchmarks.md, "Tracking on vs off").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import pytest

from config import VidrecConfig, load_config
from stream.frames import Frame
from stream.messages import FrameResult
from stream.sources import open_source
from tests.test_retrieval_quality import MATCH_IOU, PEDESTRIANS, WINDOW, _iou, _track
from workers.gallery_job import new_gallery
from workers.recognition import RecognitionStep
from workers.system import build_recognizer, build_system, tracking_params

# The scenario's settings (as in the untracked test): more, weaker boxes so that tracks are not lost in groups;
# the per-frame test's acceptance rule (score 0.80, margin 0.08: four enrolled people being alike) and the vote's
# share of passing views (Tracker.min_share 0.5), chosen with efficientnet_lite0_ml on the tune split (A, B).
# Its gallery holds individuals, so a label names one track at a time (Tracker.unique_labels); with that, the
# Tracker tuner (bench/tracking_ab.py tune, on A and B only) takes one passing view as enough to name a track
# (min_votes 1: F1 0.661 -> 0.731, fewer crops), with efficientnet_lite0_mlc (docs/benchmarks.md).
SCENARIO_OVERRIDES = ("Global.threshold=0.3", "Global.max_det_results=10", "IndexProcess.score_thres=0.80",
                      "IndexProcess.margin_thres=0.08", "Tracker.min_share=0.5", "Tracker.unique_labels=true",
                      "Tracker.min_votes=1")


@dataclass(frozen=True, slots=True)
class ShownBox:
    """One published box as the scoring rule reads it (``_track`` needs ``xyxy`` and ``det_class_id``)."""

    xyxy: tuple[float, float, float, float]
    det_class_id: int
    label: str | None
    track_id: int | None


@dataclass(frozen=True, slots=True)
class Score:
    tp: int
    fp: int
    fn: int
    label_changes: int  # on the ground-truth tracks' boxes, summed over the people
    track_seconds: float  # the ground-truth tracks' lengths in media seconds, summed
    lines: tuple[str, ...]  # one per person, for the log

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def changes_per_s(self) -> float:
        return self.label_changes / self.track_seconds if self.track_seconds > 0 else 0.0


def label_changes(labels: Sequence[str | None]) -> int:
    """How many times the shown label differs from the frame before's (None, unnamed, is a label too)."""
    return sum(1 for before, now in zip(labels, labels[1:]) if before != now)


@pytest.mark.parametrize(("labels", "changes"), [
    ([], 0),  # no frames
    (["A"], 0),  # one frame: nothing to change from
    (["A", "A", "A"], 0),  # steady
    ([None, "A", "A"], 1),  # named once
    (["A", None, "A"], 2),  # one unnamed frame in the middle is two changes (flicker)
    (["A", "B", "A", "B"], 3),  # flicker between two names
])
def test_label_changes(labels: list[str | None], changes: int) -> None:
    assert label_changes(labels) == changes


def shown_boxes(result: FrameResult, class_names: Sequence[str]) -> list[ShownBox]:
    return [ShownBox(obj.bbox, class_names.index(obj.det_class) if obj.det_class is not None else -1, obj.label,
                     obj.track_id) for obj in result.objects]


def split_ranges(people: Iterable[str]) -> list[range]:
    """The frame ranges to run in order for ``people``: each person's window, overlapping windows merged."""
    spans = sorted((PEDESTRIANS[p][0] - WINDOW, PEDESTRIANS[p][0] + WINDOW) for p in people)
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [range(lo, hi + 1) for lo, hi in merged]


def read_frames(path: Path, indices: set[int]) -> dict[int, Frame]:
    frames: dict[int, Frame] = {}
    with open_source(path) as source:
        for frame in source:
            if frame.index in indices:
                frames[frame.index] = frame
            if frame.index == max(indices):
                break  # nothing later is looked at
    return frames


def enrol(cfg_dir: Path, frames: dict[int, Frame], extra: Sequence[str] = ()) -> VidrecConfig:
    """The four pedestrians' gallery, each from its one frame; the scenario's config around it."""
    lines = []
    for label, (start, (x1, y1, x2, y2)) in PEDESTRIANS.items():
        name = f"{label.split()[0]}.png"
        cv2.imwrite(str(cfg_dir / name), frames[start].image_bgr[y1:y2, x1:x2])
        lines.append(f"{name}\t{label}")
    (cfg_dir / "people.txt").write_text("\n".join(lines) + "\n")
    cfg = load_config(None, [f"IndexProcess.data_file={cfg_dir / 'people.txt'}", f"IndexProcess.image_root={cfg_dir}",
                             f"IndexProcess.index_dir={cfg_dir / 'index'}", *SCENARIO_OVERRIDES, *extra])
    new_gallery(cfg, build_recognizer(cfg))
    return cfg


def run_in_order(step: RecognitionStep, frames: dict[int, Frame], ranges: Sequence[range],
                 class_names: Sequence[str]) -> tuple[dict[int, list[ShownBox]], int]:
    """Every frame of each range through ``step``, in order, one range a stream run (its tracks end after it):
    the published boxes per frame index, and the crops the recognizer saw."""
    shown: dict[int, list[ShownBox]] = {}
    crops = 0
    for frames_range in ranges:
        for index in frames_range:
            batch = step.run([frames[index]])
            shown[index] = shown_boxes(batch.results[0], class_names)
            crops += sum(batch.crops)
        step.end_stream(frames[frames_range[0]].stream_id, "range done")
    return shown, crops


def score(shown: dict[int, list[ShownBox]], people: Iterable[str], person_class: int,
          pts: dict[int, float]) -> Score:
    """The untracked test's rule, per person: ground truth = ``_track`` from the enrolled box over the published
    boxes; recall = the track's box carries the person's label, precision = boxes carrying the label lie on the
    track's box (the enrolment frame left out); and the label shown on the track's box, frame by frame, for the
    changes."""
    tp = fp = fn = changes = 0
    seconds = 0.0
    lines = []
    for label in people:
        start, box = PEDESTRIANS[label]
        track = _track(shown, start, box, person_class)
        assert len(track) >= WINDOW, f"{label}: track lost after {len(track)} frames"
        hits = wrong = 0
        for index, truth in track.items():
            if index == start:
                continue
            named = [b for b in shown[index] if b.label == label]
            on_track = any(_iou(b.xyxy, truth) >= MATCH_IOU for b in named)
            hits += on_track
            wrong += len(named) - on_track
        misses = len(track) - 1 - hits
        order = sorted(track)
        on_box = [max(shown[i], key=lambda b: _iou(b.xyxy, track[i])).label for i in order]
        person_changes = label_changes(on_box)
        person_seconds = pts[order[-1]] - pts[order[0]]
        lines.append(f"{label}: {len(track) - 1} frames, named {hits}, missed {misses}, on someone else {wrong}, "
                     f"label changes {person_changes} in {person_seconds:.1f} s")
        tp, fp, fn = tp + hits, fp + wrong, fn + misses
        changes, seconds = changes + person_changes, seconds + person_seconds
    return Score(tp, fp, fn, changes, seconds, tuple(lines))


def test_pedestrians_are_named_along_their_tracks(tmp_path: Path, vtest_avi: Path, model_dir: Path) -> None:
    ranges = split_ranges(PEDESTRIANS)
    frames = read_frames(vtest_avi, {i for r in ranges for i in r})
    cfg = enrol(tmp_path, frames)
    assert cfg.Tracker.enabled, "the scenario runs with tracking on"
    system = build_system(cfg)
    names = system.detector.class_names
    step = RecognitionStep(system, class_names=names, tracking=tracking_params(cfg))
    shown, crops = run_in_order(step, frames, ranges, names)
    result = score(shown, PEDESTRIANS, names.index("person"), {i: f.pts for i, f in frames.items()})
    print("\n" + "\n".join(result.lines))
    print(f"pedestrians with tracking: precision {result.precision:.3f}, recall {result.recall:.3f}, "
          f"{result.changes_per_s:.2f} label changes per track-second, {crops / len(shown):.2f} crops per frame")
    # Measured with efficientnet_lite0_mlc in fp32 (as the tests run it), the scenario's settings above: precision
    # 0.962 (128/133), recall 0.800 (128/160), 0.69 label changes per track-second (11 in 16 s), 1.24 crops per
    # frame; frame by frame the same frames give 0.905 / 0.838 and 0.56 changes/s (docs/benchmarks.md, "Colour
    # layout in the embedding"). Issue 11 asks 0.9 / 0.7 of these people: the floors are that target. Label
    # changes: each person's first naming is one (a fresh track is unnamed until its first attempt), and "A dark
    # coat" is named in 14 of 40 frames, with three more changes; frame by frame C and D are named on every
    # frame, so tracking cannot make fewer changes than that here. With efficientnet_lite0_ml the same test
    # measured 0.730 / 0.575 / 0.38 (A was never named, so it made no changes); with efficientnet_lite0 and
    # without tracking 0.723 / 0.506 / 2.12.
    assert result.precision >= 0.9
    assert result.recall >= 0.7
    assert result.changes_per_s <= 0.9
    assert crops / len(shown) <= 2.0
