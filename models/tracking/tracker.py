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
    """ByteTrack over one stream's detections, frame by frame, in time order, one tracker per detector class.

    Per class, because ByteTrack matches boxes by overlap alone: a cyclist's person box and bicycle box overlap
    most of the time, and one class-blind track would pass from the rider to the bike and mix their votes. A
    track therefore never changes class. Ids come from one counter for all classes of the stream.
    """

    def __init__(self, params: TrackerParams, *, first_id: int = 1) -> None:
        if first_id < 1:
            raise ValueError(f"first_id must be >= 1, got {first_id}")
        self.params = params
        self._next_id = first_id
        self._trackers: dict[int, object] = {}  # class id -> the library's ByteTrackTracker
        self._ids: dict[tuple[int, int], int] = {}  # (class id, the library's track id) -> vidrec's track id
        self._last_time: float | None = None  # the caller's clock
        self._lib_time: float | None = None  # what the library was given (strictly increasing)

    @property
    def next_id(self) -> int:
        """The first id a tracker that replaces this one should use (ids stay unique in the stream's run)."""
        return self._next_id

    def update(self, xyxy: np.ndarray, scores: np.ndarray, *, timestamp: float, width: int, height: int,
               class_ids: np.ndarray | None = None) -> np.ndarray:
        """Track ids (int64, -1 for a box no track took) for the boxes of the next frame, in the boxes' order.
        ``class_ids``: the detector's class per box (None: all one class)."""
        import supervision as sv

        if self._last_time is not None and timestamp < self._last_time:
            raise TimeWentBack(f"timestamp {timestamp:.3f}s is before the previous frame's {self._last_time:.3f}s")
        self._last_time = float(timestamp)
        # The library skips a repeated time with a warning; here a frame is a frame, a hair later.
        lib_time = float(timestamp)
        if self._lib_time is not None and lib_time <= self._lib_time:
            lib_time = float(np.nextafter(self._lib_time, np.inf))
        self._lib_time = lib_time
        boxes, has_area = clip_boxes(xyxy, width=width, height=height)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1)
        classes = np.zeros(len(boxes), np.int64) if class_ids is None else np.asarray(class_ids, np.int64).reshape(-1)
        ids = np.full(len(boxes), -1, dtype=np.int64)
        # Every class with a tracker is updated, boxes or not, so that its tracks age and end on time.
        for class_id in sorted(set(self._trackers) | set(classes[has_area].tolist())):
            rows = np.flatnonzero(has_area & (classes == class_id))
            tracker = self._trackers.get(class_id)
            if tracker is None:
                tracker = self._trackers[class_id] = _bytetrack(self.params)
            detections = sv.Detections(xyxy=boxes[rows].astype(np.float32).reshape(-1, 4), confidence=scores[rows],
                                       data={"row": rows.astype(np.int64)})
            tracked = tracker.update(detections, timestamp=lib_time)
            for row, lib_id in zip(np.asarray(tracked.data.get("row", []), np.int64).tolist(),
                                   np.asarray(tracked.tracker_id, np.int64).tolist()):
                if lib_id >= 0:
                    ids[row] = self._id_of(class_id, lib_id)
        self._forget_ended()
        return ids

    def kept_ids(self) -> set[int]:
        """Ids of the tracks the tracker still keeps (seen now, or lost for less than ``lost_track_s``)."""
        return set(self._ids.values())

    def _id_of(self, class_id: int, lib_id: int) -> int:
        key = (class_id, lib_id)
        track_id = self._ids.get(key)
        if track_id is None:
            track_id = self._ids[key] = self._next_id
            self._next_id += 1
        return track_id

    def _forget_ended(self) -> None:
        """Drop the ids of tracks the library no longer keeps, and trackers with no track left (bounded memory)."""
        kept = {(class_id, int(t.tracker_id)) for class_id, tracker in self._trackers.items()
                for t in tracker.tracks if t.tracker_id >= 0}
        for key in [key for key in self._ids if key not in kept]:
            del self._ids[key]
        for class_id in [c for c, tracker in self._trackers.items() if not tracker.tracks]:
            del self._trackers[class_id]
