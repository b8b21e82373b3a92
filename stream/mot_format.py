"""MOTChallenge text files: read detections, write tracking results.

The format every multi-object-tracking benchmark and scorer reads (MOTChallenge, ``motmetrics``, ``trackeval``):
one box per line, comma-separated, frames 1-based, ``x``/``y`` the box's top-left corner in pixels::

    detections  frame,-1,x,y,w,h,score[,...]        (7 to 10 fields; MOT15/16/17 det.txt have 10)
    results     frame,id,x,y,w,h,score,-1,-1,-1     (id >= 1)

Why written here rather than taken from a library: the scorers read ground truth and results leniently (pandas,
no line numbers), and ``trackers.io.mot`` is private API. vidrec refuses a malformed line with the file and line
number, so a user finds the one bad line in a file of thousands; that needs a reader of its own, and the format is
ten numbers.

vidrec's detector scores are 0..1, and the tracker's thresholds (``Tracker.track_activation_threshold``...) are in
those units, so a score outside 0..1 is refused rather than silently mis-thresholded: normalise a detector's raw
scores first (MOTChallenge's public ACF detections are raw values, see docs/benchmarks.md).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.errors import SourceError

DETECTION_FIELDS = ("frame", "id", "x", "y", "w", "h", "score")  # the ones read; up to 3 more are allowed and ignored
MAX_FIELDS = 10


class MotLineError(ValueError):
    """One line of a MOTChallenge file is malformed; the message says what, without the file and line."""


@dataclass(frozen=True, slots=True)
class MotDetection:
    """One detection line: frame (1-based), box as top-left x/y, width and height in pixels, score 0..1."""

    frame: int
    x: float
    y: float
    w: float
    h: float
    score: float


@dataclass(frozen=True, slots=True)
class MotFrame:
    """One frame's detections: ``xyxy`` (n, 4) corners in pixels and ``scores`` (n,), in the file's order."""

    frame: int
    xyxy: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.xyxy.shape != (len(self.scores), 4):
            raise ValueError(f"xyxy must have shape ({len(self.scores)}, 4), got {self.xyxy.shape}")


def _number(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise MotLineError(f"{name} is not a number: {text.strip()!r}") from None
    if not math.isfinite(value):
        raise MotLineError(f"{name} is not a finite number: {text.strip()!r}")
    return value


def parse_detection_line(line: str) -> MotDetection:
    """One detections line as a MotDetection; MotLineError says what is wrong (a pure function)."""
    fields = line.strip().split(",")
    if not len(DETECTION_FIELDS) <= len(fields) <= MAX_FIELDS:
        raise MotLineError(
            f"expected {len(DETECTION_FIELDS)} to {MAX_FIELDS} comma-separated fields "
            f"(frame,-1,x,y,w,h,score,...), got {len(fields)}"
        )
    values = {name: _number(text, name) for name, text in zip(DETECTION_FIELDS, fields)}
    for extra, text in enumerate(fields[len(DETECTION_FIELDS):], start=len(DETECTION_FIELDS) + 1):
        _number(text, f"field {extra}")
    frame = values["frame"]
    if frame != int(frame) or frame < 1:
        raise MotLineError(f"frame must be a whole number >= 1 (frames are 1-based), got {fields[0].strip()}")
    for name in ("w", "h"):
        if values[name] < 0:
            raise MotLineError(f"{name} is negative: {fields[DETECTION_FIELDS.index(name)].strip()}")
    if not 0.0 <= values["score"] <= 1.0:
        raise MotLineError(f"score {fields[6].strip()} is outside 0..1 (normalise the detector's scores first)")
    return MotDetection(
        frame=int(frame), x=values["x"], y=values["y"], w=values["w"], h=values["h"], score=values["score"]
    )


def parse_detections(lines: Iterable[str], *, name: str) -> list[MotFrame]:
    """Detections grouped by frame, frames in increasing order (a file need not be sorted), blank lines skipped.

    A malformed line raises SourceError ``NAME:LINE: what is wrong`` (LINE 1-based)."""
    by_frame: dict[int, list[MotDetection]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            detection = parse_detection_line(line)
        except MotLineError as exc:
            raise SourceError(f"{name}:{number}: {exc}") from None
        by_frame.setdefault(detection.frame, []).append(detection)
    return [_frame(frame, by_frame[frame]) for frame in sorted(by_frame)]


def _frame(frame: int, detections: list[MotDetection]) -> MotFrame:
    xywh = np.array([(d.x, d.y, d.w, d.h) for d in detections], dtype=np.float64).reshape(-1, 4)
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    return MotFrame(frame=frame, xyxy=xyxy, scores=np.array([d.score for d in detections], dtype=np.float64))


def read_detections(path: Path) -> list[MotFrame]:
    """A MOTChallenge detections file, parsed; SourceError names the file (and line) when it cannot be used."""
    try:
        # A byte that is not UTF-8 becomes U+FFFD, so the bad line is refused with its number like any other.
        with open(path, encoding="utf-8", errors="replace") as handle:
            return parse_detections(handle, name=str(path))
    except FileNotFoundError:
        raise SourceError(f"{path}: no such detections file") from None
    except IsADirectoryError:
        raise SourceError(f"{path}: is a folder, not a detections file") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from None


def _num(value: float) -> str:
    return f"{value:.6g}"  # six significant digits: 0.01 px on a 4K frame, and what the detections files carry


def format_result_line(*, frame: int, track_id: int, xyxy: tuple[float, float, float, float], score: float) -> str:
    """One results line ``frame,id,x,y,w,h,score,-1,-1,-1`` for a box given as corners (a pure function)."""
    if frame < 1 or track_id < 1:
        raise ValueError(f"frame and track id must be >= 1, got frame {frame}, id {track_id}")
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return f"{frame},{track_id},{_num(x1)},{_num(y1)},{_num(x2 - x1)},{_num(y2 - y1)},{_num(score)},-1,-1,-1"


def format_results(frames: Iterable[tuple[int, np.ndarray, np.ndarray, np.ndarray]]) -> Iterator[str]:
    """Results lines for ``(frame, xyxy, scores, track_ids)`` per frame; boxes no track took (id < 1) are left out."""
    for frame, xyxy, scores, ids in frames:
        for box, score, track_id in zip(xyxy, scores, ids):
            if track_id >= 1:
                yield format_result_line(frame=frame, track_id=int(track_id), xyxy=tuple(box), score=float(score))
