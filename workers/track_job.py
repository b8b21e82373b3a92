"""`vidrec track`: vidrec's tracker over MOTChallenge detections, writing MOTChallenge results.

So that anyone can score the tracker `vidrec video` and `vidrec serve` use with the standard tools (``motmetrics``,
``trackeval``) on public benchmarks, without a detector in the loop. It is the same ``StreamTracker`` with the same
``Tracker`` settings (``-c``/``-o Tracker.*`` are honoured); only the boxes come from a file instead of the detector.

Time: frame ``n`` (1-based) is at ``(n - 1) / frame_rate`` seconds, and every frame from 1 to the last one in the
file is given to the tracker, those without a detection too, so a gap in the detections is time passing (as a
live stream's dropped frames are), which ``Tracker.lost_track_s`` counts.

The frame size: the tracker clips boxes to the frame as `vidrec video` does. With ``--size WxH`` that is the
image's size. Without it, nothing is clipped: the tracker gets a frame just large enough to hold every box of the
file (shifted so that boxes left of or above the image edge stay whole; the shift changes no IoU nor any written box).

What is written: each detection a track took, with the detection's own box and score and the track's id (>= 1).
A detection no track took has no line; that includes a track's first detection, as the tracker names a track
from its second one on (ByteTrack of ``trackers`` spawns tracks unnamed), as it does in `vidrec video`.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from config import ConfigError, VidrecConfig
from models.tracking.tracker import StreamTracker, TrackerParams
from stream.errors import SinkError
from stream.mot_format import MotFrame, format_results, read_detections
from workers.system import tracking_params

log = logging.getLogger(__name__)

DEFAULT_FRAME_RATE = 25.0  # MOTChallenge's most common rate, and TUD-Campus's


@dataclass(frozen=True, slots=True)
class TrackedFrame:
    """One frame's detections with the track id each got (-1: no track took it)."""

    frame: int
    xyxy: np.ndarray
    scores: np.ndarray
    track_ids: np.ndarray


@dataclass(frozen=True, slots=True)
class TrackSummary:
    frames: int
    detections: int
    tracked_boxes: int
    tracks: int
    tracker_seconds: float  # time inside the tracker's updates alone (no file reading or writing)

    @property
    def tracker_fps(self) -> float:
        return self.frames / self.tracker_seconds if self.tracker_seconds > 0 else 0.0


def tracker_params(cfg: VidrecConfig, *, frame_rate: float) -> TrackerParams:
    """The ``Tracker`` section as the tracker's settings, as `vidrec video` builds them; refused when it is off."""
    tracking = tracking_params(cfg)
    if tracking is None:
        raise ConfigError("Tracker.enabled=false: `vidrec track` runs the tracker, so it cannot be off here")
    return replace(tracking.tracker, frame_rate=frame_rate)


def frame_extent(frames: list[MotFrame]) -> tuple[float, float, int, int]:
    """``(x0, y0, width, height)``: the smallest frame, with its origin at ``(x0, y0)`` (<= 0), that holds every box
    of the file whole (a pure function; an empty file gets a 1x1 frame)."""
    boxes = np.concatenate([f.xyxy for f in frames]) if frames else np.zeros((0, 4))
    if len(boxes) == 0:
        return 0.0, 0.0, 1, 1
    x0 = min(0.0, float(boxes[:, 0].min()))
    y0 = min(0.0, float(boxes[:, 1].min()))
    width = max(1, int(np.ceil(float(boxes[:, 2].max()) - x0)))
    height = max(1, int(np.ceil(float(boxes[:, 3].max()) - y0)))
    return x0, y0, width, height


def track_frames(
    frames: list[MotFrame], params: TrackerParams, *, size: tuple[int, int] | None = None
) -> tuple[list[TrackedFrame], float]:
    """Every frame's detections with their track ids, and the seconds spent in the tracker's updates.

    ``size`` ``(width, height)`` clips boxes to that image; None clips nothing (see the module's docstring)."""
    if size is None:
        x0, y0, width, height = frame_extent(frames)
    else:
        (width, height), x0, y0 = size, 0.0, 0.0
    shift = np.array([x0, y0, x0, y0])
    by_number = {f.frame: f for f in frames}
    tracker = StreamTracker(params)
    empty = MotFrame(frame=0, xyxy=np.zeros((0, 4)), scores=np.zeros(0))
    out: list[TrackedFrame] = []
    seconds = 0.0
    last = frames[-1].frame if frames else 0
    for number in range(1, last + 1):
        frame = by_number.get(number, empty)
        start = time.perf_counter()
        ids = tracker.update(
            frame.xyxy - shift, frame.scores, timestamp=(number - 1) / params.frame_rate, width=width, height=height
        )
        seconds += time.perf_counter() - start
        if len(frame.scores):
            out.append(TrackedFrame(frame=number, xyxy=frame.xyxy, scores=frame.scores, track_ids=ids))
    return out, seconds


def write_results(tracked: list[TrackedFrame], out_path: Path) -> None:
    """MOTChallenge results, written whole or not at all (a temporary file renamed into place)."""
    partial = out_path.with_name(f".{out_path.name}.partial")
    lines = format_results((f.frame, f.xyxy, f.scores, f.track_ids) for f in tracked)
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")
        os.replace(partial, out_path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise SinkError(f"{out_path}: cannot write results: {exc.strerror}") from None


def run_track_job(
    cfg: VidrecConfig, detections_path: Path, out_path: Path, *, frame_rate: float, size: tuple[int, int] | None
) -> TrackSummary:
    params = tracker_params(cfg, frame_rate=frame_rate)
    frames = read_detections(detections_path)
    tracked, seconds = track_frames(frames, params, size=size)
    write_results(tracked, out_path)
    ids = np.concatenate([f.track_ids for f in tracked]) if tracked else np.zeros(0, dtype=np.int64)
    return TrackSummary(
        frames=frames[-1].frame if frames else 0,
        detections=len(ids),
        tracked_boxes=int((ids >= 1).sum()),
        tracks=len(set(ids[ids >= 1].tolist())),
        tracker_seconds=seconds,
    )
