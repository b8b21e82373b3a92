"""JPEG snapshots for the live overlay page: encoded in the inference process, kept by the supervisor.

Only frames that were processed become snapshots, so every snapshot has a result with the same
``frame_index`` (the page draws that result's boxes on exactly those pixels). Encoding costs CPU that
inference needs, so it happens only for streams someone watched in the last seconds (``Watch`` messages,
sent when the page fetches a frame), at most ``fps`` a second per stream, scaled down to ``max_width``.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import cv2

from stream.frames import Frame


@dataclass(frozen=True, slots=True)
class Snapshot:
    stream_id: str
    frame_index: int
    pts: float | None
    capture_time: float
    width: int  # the frame's own size: the results' box coordinates
    height: int
    jpeg: bytes


class SnapshotEncoder:
    """In the inference process: which streams are watched, and the rate limit per stream."""

    def __init__(self, fps: float, max_width: int, quality: int) -> None:
        self.interval_s = 1.0 / fps
        self.max_width = max_width
        self.quality = quality
        self._until: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def watch(self, stream_id: str, until: float) -> None:
        self._until[stream_id] = max(until, self._until.get(stream_id, 0.0))

    def maybe_encode(self, frame: Frame, frame_index: int, now: float | None = None) -> Snapshot | None:
        now = time.time() if now is None else now
        sid = frame.stream_id
        if self._until.get(sid, 0.0) < now:
            self._until.pop(sid, None)
            return None
        if now - self._last.get(sid, float("-inf")) < self.interval_s:
            return None
        self._last[sid] = now
        return encode_snapshot(frame, frame_index, self.max_width, self.quality)


def encode_snapshot(frame: Frame, frame_index: int, max_width: int, quality: int) -> Snapshot:
    image = frame.image_bgr
    if frame.width > max_width:
        height = max(1, round(frame.height * max_width / frame.width))
        image = cv2.resize(image, (max_width, height), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"{frame.stream_id}: JPEG encoding of frame {frame_index} failed")
    return Snapshot(frame.stream_id, frame_index, frame.pts, frame.capture_time, frame.width, frame.height,
                    data.tobytes())


class SnapshotStore:
    """In the supervisor: the newest ``keep`` snapshots per stream, and who is watching (thread-safe)."""

    def __init__(self, keep: int = 16, watch_s: float = 10.0) -> None:
        self.keep = keep
        self.watch_s = watch_s
        self._lock = threading.Lock()
        self._frames: dict[str, OrderedDict[int, Snapshot]] = {}
        self._watch_sent: dict[str, float] = {}

    def add(self, snapshot: Snapshot) -> None:
        with self._lock:
            frames = self._frames.setdefault(snapshot.stream_id, OrderedDict())
            frames[snapshot.frame_index] = snapshot
            while len(frames) > self.keep:
                frames.popitem(last=False)

    def get(self, stream_id: str, index: int | None = None) -> Snapshot | None:
        with self._lock:
            frames = self._frames.get(stream_id)
            if not frames:
                return None
            if index is None:
                return next(reversed(frames.values()))
            return frames.get(index)

    def forget(self, stream_id: str) -> None:
        with self._lock:
            self._frames.pop(stream_id, None)
            self._watch_sent.pop(stream_id, None)

    def watch_due(self, stream_id: str, now: float | None = None) -> float | None:
        """A viewer asked for this stream: the new watch deadline when the inference process must be told
        (at most every ``watch_s / 2``), else None."""
        now = time.time() if now is None else now
        with self._lock:
            if now - self._watch_sent.get(stream_id, float("-inf")) < self.watch_s / 2:
                return None
            self._watch_sent[stream_id] = now
            return now + self.watch_s
