"""One stream's multi-object tracker: ByteTrack from Roboflow's ``trackers`` library, behind a numpy API.

Why ``trackers``: a maintained, Apache-2.0 implementation of ByteTrack (and SORT, OC-SORT, BoT-SORT) that takes
plain numpy boxes and, since 2.6, a timestamp per update, so a live stream that dropped frames predicts its
tracks over the real gap instead of one nominal frame. Measured on TUD-Campus public detections (docs/benchmarks.md).

What this adapter adds:
- boxes are clipped to the frame; a box with no area left is never tracked (its id is -1);
- track ids are vidrec's: unique in the stream's run across tracker resets (``first_id``), starting at 1.
  As in ByteTrack, a track is confirmed by its second detection: an object's first box has no id (-1), so an
  object seen in one frame only never becomes a track;
- time that goes back (a file looped, a camera's clock reset) is refused with ``TimeWentBack`` so the caller can
  end the tracks and start a new tracker, rather than the library skipping updates with a warning.

``trackers`` declares a dependency on ``opencv-python``; vidrec uses ``opencv-python-headless`` (the same ``cv2``
without GUI libraries). Installing both puts two builds in one ``cv2`` folder, so ``trackers`` is installed with
``--no-deps`` (scripts/setup, Dockerfile) and its other needs are pinned in pyproject.toml; ByteTrack never
calls cv2.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class TimeWentBack(ValueError):
    """An update's timestamp is earlier than the previous one."""


@dataclass(frozen=True, slots=True)
class TrackerParams:
    """ByteTrack's settings in vidrec's units (``Tracker`` config section)."""

    lost_track_s: float = 1.0  # a track with no detection for this long ends
    track_activation_threshold: float = 0.5  # detector score to start a track
    high_conf_det_threshold: float = 0.5  # boxes below it only extend existing tracks (ByteTrack's second stage)
    minimum_iou_threshold: float = 0.1  # least IoU between a track's predicted box and a detection to match
    minimum_consecutive_frames: int = 1  # detections before a track gets an id
    frame_rate: float = 25.0  # nominal rate, used only for the first update's elapsed time


def _bytetrack(params: TrackerParams):  # noqa: ANN202 - the library's type
    try:
        from trackers import ByteTrackTracker
    except ImportError as exc:  # pragma: no cover - an install without it
        raise ImportError(
            f"tracking needs Roboflow's trackers library ({exc}): pip install --no-deps trackers==2.6.1 "
            "(see pyproject.toml), or set Tracker.enabled=false"
        ) from exc
    return ByteTrackTracker(
        # The library counts its buffer in 30 fps frames and turns it into seconds (buffer / 30) with timestamps.
        lost_track_buffer=max(0, round(params.lost_track_s * 30.0)),
        frame_rate=params.frame_rate,
        track_activation_threshold=params.track_activation_threshold,
        minimum_consecutive_frames=params.minimum_consecutive_frames,
        minimum_iou_threshold=params.minimum_iou_threshold,
        high_conf_det_threshold=params.high_conf_det_threshold,
    )


def clip_boxes(xyxy: np.ndarray, *, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to the frame, and which of them still have an area (a pure function)."""
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4).copy()
    finite = np.isfinite(boxes).all(axis=1)  # before clipping, which would make an infinite edge the frame's
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0.0, float(width))
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0.0, float(height))
    has_area = finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes, has_area


class StreamTracker:
    """ByteTrack over one stream's detections, frame by frame, in time order."""

    def __init__(self, params: TrackerParams, *, first_id: int = 1) -> None:
        if first_id < 1:
            raise ValueError(f"first_id must be >= 1, got {first_id}")
        self.params = params
        self._first_id = first_id
        self._tracker = _bytetrack(params)
        self._last_time: float | None = None

    @property
    def next_id(self) -> int:
        """The first id a tracker that replaces this one should use (ids stay unique in the stream's run)."""
        return self._first_id + int(self._tracker._next_track_id)  # the library's id counter (zero-based)

    def update(self, xyxy: np.ndarray, scores: np.ndarray, *, timestamp: float, width: int, height: int) -> np.ndarray:
        """Track ids (int64, -1 for a box no track took) for the boxes of the next frame, in the boxes' order."""
        import supervision as sv

        if self._last_time is not None and timestamp < self._last_time:
            raise TimeWentBack(f"timestamp {timestamp:.3f}s is before the previous frame's {self._last_time:.3f}s")
        if self._last_time is not None and timestamp == self._last_time:
            timestamp = np.nextafter(timestamp, np.inf)  # the library warns on a repeat; a frame is a frame
        self._last_time = float(timestamp)
        boxes, has_area = clip_boxes(xyxy, width=width, height=height)
        ids = np.full(len(boxes), -1, dtype=np.int64)
        keep = np.flatnonzero(has_area)
        detections = sv.Detections(
            xyxy=boxes[keep].astype(np.float32).reshape(-1, 4),
            confidence=np.asarray(scores, dtype=np.float32).reshape(-1)[keep],
            data={"row": keep.astype(np.int64)},
        )
        tracked = self._tracker.update(detections, timestamp=float(timestamp))
        if len(tracked):
            rows = np.asarray(tracked.data["row"], dtype=np.int64)
            lib_ids = np.asarray(tracked.tracker_id, dtype=np.int64)
            ids[rows] = np.where(lib_ids >= 0, lib_ids + self._first_id, -1)
        return ids

    def kept_ids(self) -> set[int]:
        """Ids of the tracks the tracker still keeps (seen now, or lost for less than ``lost_track_s``)."""
        return {int(t.tracker_id) + self._first_id for t in self._tracker.tracks if t.tracker_id >= 0}
