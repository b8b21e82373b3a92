"""vidrec's tracker scored on a real MOTChallenge sequence (IDF1, MOTA, ID switches, tracker frames/s), beside SORT.

Run:  .venv/bin/python bench/mot_score.py ../shared/mot/TUD-Campus --repeat 5

Every variant reads the same detections and is scored with ``motmetrics`` 1.4.0 (IoU >= 0.5, the MOTChallenge 2D
rule) against the sequence's ``gt.txt``; the results go through ``stream.mot_format`` as `vidrec track` writes
them. Variants run interleaved per repeat so their frames/s are comparable on a noisy machine (medians printed);
the scores are deterministic and checked to be equal across repeats.

Data preparation: `vidrec track` takes scores 0..1 in the units of ``Tracker.*`` thresholds; the public
detections are min-max normalised per sequence first (as ../shared/mot/README.md measured), see ``normalise``.

TUD-Campus is for REPORTING the tracker; vidrec's defaults were not and must not be chosen from it (that would be
tuning on the test set). The settings rows only show how sensitive the numbers are.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

# motmetrics 1.4.0 (its last release) calls np.asfarray, which NumPy 2 removed; this restores it with the
# meaning it had (an array as floats), only in this process, before motmetrics is imported.
np.asfarray = lambda a, dtype=np.float64: np.asarray(a, dtype=dtype)  # noqa: E731
import motmetrics  # noqa: E402

from config import load_config  # noqa: E402
from models.tracking.tracker import TrackerParams  # noqa: E402
from stream.mot_format import MotFrame, format_results, read_detections  # noqa: E402
from workers.track_job import TrackedFrame, track_frames, tracker_params  # noqa: E402

FRAME_RATE = 25.0  # TUD-Campus (seqinfo of 2DMOT2015)


def normalise(frames: list[MotFrame]) -> list[MotFrame]:
    """Scores min-max normalised over the whole sequence to 0..1 (order and relative gaps kept)."""
    scores = np.concatenate([f.scores for f in frames])
    low, high = float(scores.min()), float(scores.max())
    span = high - low if high > low else 1.0
    return [replace(f, scores=(f.scores - low) / span) for f in frames]


@dataclass(frozen=True)
class Score:
    idf1: float
    mota: float
    id_switches: int
    tracks: int


def score(tracked: list[TrackedFrame], gt_path: Path, work: Path) -> Score:
    """motmetrics on the results file `vidrec track` would write."""
    results = work / "results.txt"
    results.write_text("".join(line + "\n" for line in format_results((f.frame, f.xyxy, f.scores, f.track_ids) for f in tracked)))
    gt = motmetrics.io.loadtxt(str(gt_path), fmt="mot15-2D", min_confidence=1)
    hyp = motmetrics.io.loadtxt(str(results), fmt="mot15-2D")
    acc = motmetrics.utils.compare_to_groundtruth(gt, hyp, "iou", distth=0.5)
    row = motmetrics.metrics.create().compute(acc, metrics=["idf1", "mota", "num_switches"], name="seq")
    ids = {int(i) for f in tracked for i in f.track_ids if i >= 1}
    return Score(float(row["idf1"].iloc[0]), float(row["mota"].iloc[0]), int(row["num_switches"].iloc[0]), len(ids))


def vidrec(params: TrackerParams) -> Callable[[list[MotFrame]], tuple[list[TrackedFrame], float]]:
    return lambda frames: track_frames(frames, params)


def library(make_tracker: Callable[[], object]) -> Callable[[list[MotFrame]], tuple[list[TrackedFrame], float]]:
    """A tracker of Roboflow's ``trackers`` called directly (no vidrec adapter), timestamps as `vidrec track`'s."""
    return lambda frames: _run_library(make_tracker(), frames)


def _sort() -> object:
    from trackers import SORTTracker

    return SORTTracker(frame_rate=FRAME_RATE)  # the library's defaults otherwise


def _bytetrack(params: TrackerParams) -> Callable[[], object]:
    from trackers import ByteTrackTracker

    # vidrec's settings as models/tracking/tracker.py hands them over (the library counts its buffer in 30 fps frames)
    return lambda: ByteTrackTracker(
        lost_track_buffer=round(params.lost_track_s * 30.0),
        frame_rate=params.frame_rate,
        track_activation_threshold=params.track_activation_threshold,
        minimum_consecutive_frames=params.minimum_consecutive_frames,
        minimum_iou_threshold=params.minimum_iou_threshold,
        high_conf_det_threshold=params.high_conf_det_threshold,
    )


def _run_library(tracker, frames: list[MotFrame]) -> tuple[list[TrackedFrame], float]:  # noqa: ANN001 - any tracker
    import supervision as sv

    by_number = {f.frame: f for f in frames}
    out, seconds = [], 0.0
    for number in range(1, frames[-1].frame + 1):
        frame = by_number.get(number)
        xyxy = frame.xyxy if frame else np.zeros((0, 4))
        scores = frame.scores if frame else np.zeros(0)
        start = time.perf_counter()  # the boxes' conversion counts, as it does inside vidrec's adapter
        detections = sv.Detections(
            xyxy=xyxy.astype(np.float32), confidence=scores.astype(np.float32), data={"row": np.arange(len(scores))}
        )
        tracked = tracker.update(detections, timestamp=(number - 1) / FRAME_RATE)
        ids = np.full(len(scores), -1, dtype=np.int64)
        if len(tracked):
            lib_ids = np.asarray(tracked.tracker_id, dtype=np.int64)
            ids[np.asarray(tracked.data["row"], dtype=np.int64)] = np.where(lib_ids >= 0, lib_ids + 1, -1)
        seconds += time.perf_counter() - start
        if frame is not None:
            out.append(TrackedFrame(frame=number, xyxy=frame.xyxy, scores=frame.scores, track_ids=ids))
    return out, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sequence", type=Path, help="folder with det.txt and gt.txt (MOTChallenge format)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    shipped = read_detections(args.sequence / "det.txt")
    frames = normalise(shipped)
    base = tracker_params(load_config(None, []), frame_rate=FRAME_RATE)
    variants: dict[str, tuple[Callable, list[MotFrame]]] = {
        "vidrec (ByteTrack), defaults": (vidrec(base), frames),
        "vidrec, Tracker.lost_track_s=0.2": (vidrec(replace(base, lost_track_s=0.2)), frames),
        "vidrec, Tracker.lost_track_s=0.5": (vidrec(replace(base, lost_track_s=0.5)), frames),
        "vidrec, Tracker.lost_track_s=2": (vidrec(replace(base, lost_track_s=2.0)), frames),
        "vidrec, Tracker.minimum_iou_threshold=0.3": (vidrec(replace(base, minimum_iou_threshold=0.3)), frames),
        "vidrec, defaults, scores as shipped (not normalised)": (vidrec(base), shipped),
        "trackers.ByteTrackTracker called directly, vidrec's settings": (library(_bytetrack(base)), frames),
        "SORT (trackers.SORTTracker, library defaults)": (library(_sort), frames),
    }
    scores: dict[str, Score] = {}
    fps: dict[str, list[float]] = {name: [] for name in variants}
    n_frames = frames[-1].frame
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for name, (run, data) in variants.items():
                tracked, seconds = run(data)
                fps[name].append(n_frames / seconds)
                got = score(tracked, args.sequence / "gt.txt", Path(tmp))
                if scores.setdefault(name, got) != got:
                    raise SystemExit(f"{name}: scores differ between repeats: {scores[name]} vs {got}")
    print(f"{args.sequence.name}: {n_frames} frames, {sum(len(f.scores) for f in frames)} detections; "
          f"motmetrics {motmetrics.__version__}, IoU >= 0.5; frames/s: median of {args.repeat}, tracker updates only")
    print("| tracker | IDF1 | MOTA | ID switches | tracks | frames/s |")
    print("|---|---|---|---|---|---|")
    for name, got in scores.items():
        print(f"| {name} | {got.idf1:.3f} | {got.mota:.3f} | {got.id_switches} | {got.tracks} | "
              f"{statistics.median(fps[name]):,.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
