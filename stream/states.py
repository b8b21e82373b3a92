"""A stream's kind and state: one enum each, used by the sources, the workers, the results and the API.

The values are what users see (``stream_state`` in results, ``state`` and ``kind`` in ``GET /streams``, the
``state`` label on ``/metrics``) and never change. In code, "live" names one thing: the kind of stream that
comes from a camera or another network source (``StreamKind.LIVE``, whose frame ring drops old frames). A stream
that is delivering frames is ``StreamState.RUNNING``, whose value stays ``"live"`` on the wire (results and
the API said "live" before the code had a name for it).
"""
from __future__ import annotations

import enum


class StreamKind(enum.StrEnum):
    """What a stream is read from: decides reconnects, the frame ring's policy and the backlog rules."""

    LIVE = "live"  # a camera or network URL: reconnects; old frames are dropped, never queued
    FILE = "file"  # a file, image or folder: read once, every (sampled) frame is processed


class StreamState(enum.StrEnum):
    """``starting`` (first connection) → ``live`` (frames coming) ⇄ ``stalled`` (none for a while) →
    ``reconnecting`` → ``live``; ``ended`` and ``failed`` are final."""

    STARTING = "starting"
    RUNNING = "live"  # wire value "live": frames are being delivered
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    ENDED = "ended"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (StreamState.ENDED, StreamState.FAILED)


STREAM_STATES: tuple[str, ...] = tuple(state.value for state in StreamState)
STREAM_KINDS: tuple[str, ...] = tuple(kind.value for kind in StreamKind)
