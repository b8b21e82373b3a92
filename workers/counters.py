"""One stream's counters, one schema: every frame a stream decoded is processed or dropped for one reason.

The reasons are named once here (``Drop``); the frame ring names its own three (``stream/transport.py``
``DROP_REASONS``: ``overwritten``, ``ring_in_use``, ``closed``) and they are the same strings. The workers count
under these names (ingest: ``every_nth``, ``source``; the ring: its three; inference: ``backlog``, ``too_old``,
``inference_error``), ``/metrics`` uses them as the ``reason`` label, and ``GET /streams`` shows the same numbers
under the keys it has always had (``VIEW_KEYS``: the one place that maps a reason to such a key).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Mapping


from stream.transport import DROP_REASONS as RING_DROP_REASONS


class Drop(enum.StrEnum):
    EVERY_NTH = "every_nth"  # left out by the stream's every_nth (ingest)
    SOURCE = "source"  # replaced by a newer frame in the live source before ingest took it
    OVERWRITTEN = "overwritten"  # frame ring: overwritten by a newer frame before inference took it
    RING_IN_USE = "ring_in_use"  # frame ring: every slot held by inference
    CLOSED = "closed"  # frame ring: still unread when the stream ended
    BACKLOG = "backlog"  # inference: beyond a live stream's live_backlog
    TOO_OLD = "too_old"  # inference: a live frame older than live_max_age_ms at its batch
    INFERENCE_ERROR = "inference_error"  # inference: its batch failed


DROP_REASONS: tuple[str, ...] = tuple(reason.value for reason in Drop)
INGEST_DROPS = (Drop.EVERY_NTH, Drop.SOURCE)
RING_DROPS = tuple(Drop(reason) for reason in RING_DROP_REASONS)
INFERENCE_DROPS = (Drop.BACKLOG, Drop.TOO_OLD, Drop.INFERENCE_ERROR)
assert set(INGEST_DROPS) | set(RING_DROPS) | set(INFERENCE_DROPS) == set(Drop), "every reason has one counting side"

# ``GET /streams`` counters: the key each reason has there (the ring's are under ``dropped_ring`` by reason).
VIEW_KEYS: Mapping[Drop, str] = {
    Drop.EVERY_NTH: "skipped",
    Drop.SOURCE: "dropped_source",
    Drop.BACKLOG: "dropped_backlog",
    Drop.TOO_OLD: "dropped_too_old",
    Drop.INFERENCE_ERROR: "inference_errors",
}


@dataclass(frozen=True, slots=True)
class StreamCounts:
    """A stream's counters, ingest's and inference's together. ``decoded``: frames the source decoded;
    ``written``/``taken``: into the frame ring / out of it by inference; ``processed``: run through the models
    and handed to the sinks; ``dropped``: by reason (``Drop`` values; a reason no side has reported yet, such as
    the ring's before the stream's ring exists, is absent)."""

    decoded: int = 0
    written: int = 0
    taken: int = 0
    processed: int = 0
    reconnects: int = 0
    decode_errors: int = 0
    detected: int = 0
    recognized: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)

    def __add__(self, other: "StreamCounts") -> "StreamCounts":
        return StreamCounts(
            decoded=self.decoded + other.decoded, written=self.written + other.written,
            taken=self.taken + other.taken, processed=self.processed + other.processed,
            reconnects=self.reconnects + other.reconnects, decode_errors=self.decode_errors + other.decode_errors,
            detected=self.detected + other.detected, recognized=self.recognized + other.recognized,
            dropped={reason: self.dropped.get(reason, 0) + other.dropped.get(reason, 0)
                     for reason in DROP_REASONS if reason in self.dropped or reason in other.dropped},
        )


def view_counters(counts: StreamCounts, published: Mapping[str, int]) -> dict[str, object]:
    """``GET /streams``'s ``counters`` object (its keys and order are the API's)."""
    d = counts.dropped
    n = lambda reason: d.get(reason, 0)  # noqa: E731
    return {
        "decoded": counts.decoded,
        VIEW_KEYS[Drop.EVERY_NTH]: n(Drop.EVERY_NTH),
        VIEW_KEYS[Drop.SOURCE]: n(Drop.SOURCE),
        "reconnects": counts.reconnects,
        "decode_errors": counts.decode_errors,
        "written": counts.written,
        "taken": counts.taken,
        "dropped_ring": {reason.value: d[reason] for reason in sorted(RING_DROPS) if reason in d},
        VIEW_KEYS[Drop.BACKLOG]: n(Drop.BACKLOG),
        VIEW_KEYS[Drop.TOO_OLD]: n(Drop.TOO_OLD),
        VIEW_KEYS[Drop.INFERENCE_ERROR]: n(Drop.INFERENCE_ERROR),
        "processed": counts.processed,
        "published": dict(published),
    }
