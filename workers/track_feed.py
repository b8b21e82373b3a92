"""Recent track events and their thumbnails for the HTTP API (``GET /track-events``, ``GET /thumbnails/...``):
encoded in the inference process, kept by the supervisor.

The inference worker sends each batch's track events with JPEGs of the best crops of the tracks that were
labelled or ended in it (``TrackEvents``, over its report pipe like the overlay's snapshots): a thumbnail is
encoded only on those events, a few per track, never per frame. The supervisor keeps the newest ``keep_events``
events of every stream, numbered in arrival order (``n``, so a client asks for what came after the last one it
saw), and the newest ``keep_thumbnails`` thumbnails, by (stream, run id, track id): a track id is unique within
one stream and one inference worker's run id (``TrackEvent.run_id``).
"""
from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

from stream.track_events import TrackEvent

KEEP_EVENTS = 500
KEEP_THUMBNAILS = 1000
DEFAULT_LIMIT = 50
THUMBNAIL_JPEG_QUALITY = 85

ThumbnailKey = tuple[str, str, int]  # (stream id, run id, track id)


@dataclass(frozen=True, slots=True)
class TrackEvents:
    """inference → supervisor: one batch's track events, in the order they happened, and JPEG thumbnails."""

    events: tuple[TrackEvent, ...]
    thumbnails: dict[ThumbnailKey, bytes] = field(default_factory=dict)


def encode_thumbnail(rgb: np.ndarray, quality: int = THUMBNAIL_JPEG_QUALITY) -> bytes:
    """A track's crop (RGB, as models/tracking keeps it) as JPEG bytes."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding of a {rgb.shape} thumbnail failed")
    return data.tobytes()


def thumbnail_path(stream_id: str, run_id: str, track_id: int) -> str:
    """The URL path ``GET /thumbnails/{stream_id}/{run_id}/{track_id}`` (each part escaped, ``/`` included)."""
    return f"/thumbnails/{quote(stream_id, safe='')}/{quote(run_id, safe='')}/{track_id}"


def page_bounds(after: int | None, limit: int, oldest: int, newest: int) -> tuple[int, int]:
    """Which event numbers (``first``..``last``, inclusive; empty when first > last) a request for ``limit``
    events after ``after`` gets while events ``oldest``..``newest`` are kept (numbered 1, 2, ...; none kept:
    oldest = newest + 1): the ones right after ``after``, from the oldest kept when those are gone; without
    ``after``, or with one beyond ``newest`` (a number from an earlier service run), the newest ``limit``."""
    if after is None or after > newest:
        return max(oldest, newest - limit + 1), newest
    first = max(after + 1, oldest)
    return first, min(newest, first + limit - 1)


class TrackEventStore:
    """In the supervisor: the newest events and thumbnails, bounded (thread-safe)."""

    def __init__(self, keep_events: int = KEEP_EVENTS, keep_thumbnails: int = KEEP_THUMBNAILS) -> None:
        self.keep_events = keep_events
        self.keep_thumbnails = keep_thumbnails
        self._lock = threading.Lock()
        self._events: deque[tuple[int, TrackEvent]] = deque(maxlen=keep_events)
        self._newest = 0
        self._thumbnails: OrderedDict[ThumbnailKey, bytes] = OrderedDict()

    def add(self, message: TrackEvents) -> None:
        with self._lock:
            for key, jpeg in message.thumbnails.items():
                self._thumbnails[key] = jpeg
                self._thumbnails.move_to_end(key)
            while len(self._thumbnails) > self.keep_thumbnails:
                self._thumbnails.popitem(last=False)
            for event in message.events:
                self._newest += 1
                self._events.append((self._newest, event))

    def thumbnail(self, stream_id: str, run_id: str, track_id: int) -> bytes | None:
        with self._lock:
            return self._thumbnails.get((stream_id, run_id, track_id))

    def page(self, after: int | None, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
        """``{"events": [{"n", "event", "thumbnail"}, ...], "next"}``: oldest first; ``next`` is the ``after`` of
        the following request. ``thumbnail`` is the path of the track's thumbnail when one is kept now."""
        with self._lock:
            oldest = self._events[0][0] if self._events else self._newest + 1
            first, last = page_bounds(after, limit, oldest, self._newest)
            rows = [(n, event) for n, event in self._events if first <= n <= last]
            out = []
            for n, event in rows:
                key = (event.stream_id, event.run_id or "", event.track_id)
                kept = event.run_id is not None and key in self._thumbnails
                out.append({"n": n, "event": event.to_dict(),
                            "thumbnail": thumbnail_path(*key) if kept else None})
            # Caught up: the same ``after`` again (or the newest number, for an ``after`` of an earlier run).
            return {"events": out, "next": last if rows or after is None else min(after, self._newest)}
