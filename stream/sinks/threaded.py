"""The skeleton of a sink that never blocks its caller: results wait, and one thread of its own writes them.

``ThreadedSink`` wraps an inner sink (Kafka, Redis, JSONL) and holds what every such wrapper shares: the
writer thread and its start, ``write`` refusing once closed, ``close`` (stop taking results, let what waits go
out until a timeout, count the rest as dropped, close or abort the inner sink) and ``abort``, per-stream
``written``/``dropped``/``errors`` counters with the recent publish times, and the ``on_written`` observer.

A subclass decides how results wait and how they go out: ``AsyncSink`` (a bounded queue dropping the oldest,
one write at a time) and ``SpooledSink`` (a memory+disk spool, batches sent until acknowledged). It sets its
own fields, then calls ``super().__init__``, which starts the thread on ``_run``; its hooks run under
``self._cond`` unless they say otherwise.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from stream.errors import SinkError
from stream.latency import LatencyWindow
from stream.messages import FrameResult

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SinkStats:
    """A snapshot. ``written``: results the inner sink accepted; ``dropped``: pushed out of a full queue or
    spool, or left at close; ``errors``: writes the inner sink refused."""

    name: str
    queued: int
    written: int
    dropped: int
    errors: int
    per_stream: dict[str, dict[str, int]] = field(default_factory=dict)
    publish_ms: dict[str, float] = field(default_factory=dict)
    last_error: str | None = None
    spool: dict[str, int] = field(default_factory=dict)  # results waiting, by tier (memory, disk)
    retrying: bool = False  # the sink refuses writes now and what waits will be tried again

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "queued": self.queued, "written": self.written, "dropped": self.dropped,
            "errors": self.errors, "publish_ms": dict(self.publish_ms), "last_error": self.last_error,
            "spool": dict(self.spool) or {"memory": self.queued}, "retrying": self.retrying,
        }


class ThreadedSink:
    """``inner`` offers ``close()`` and ``abort()`` (and whatever the subclass's ``_run`` calls)."""

    def __init__(self, inner: Any, *, name: str, on_written: Callable[[FrameResult], None] | None = None) -> None:
        self.inner = inner
        self.name = name
        self._on_written = on_written  # called in the writer thread after each accepted result
        self._cond = threading.Condition()
        self._accepting = True
        self._stop = False
        self._written: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._publish_ms = LatencyWindow()
        self._last_error: str | None = None
        self._retrying = False
        self._thread = threading.Thread(target=self._run, name=f"sink[{name}]", daemon=True)
        self._thread.start()

    # -- what a subclass provides ---------------------------------------------------------------------------
    def _run(self) -> None:
        """The writer thread: take what waits and write it until ``self._stop``."""
        raise NotImplementedError

    def _pending(self) -> bool:
        """Something waits or is being written (under ``_cond``)."""
        raise NotImplementedError

    def _take_leftovers(self) -> int:
        """After the thread stopped: remove what still waits, count it as dropped, return how many (takes its
        own locks)."""
        raise NotImplementedError

    def _dropped(self) -> Counter[str]:
        """Dropped results per stream (under ``_cond``)."""
        raise NotImplementedError

    def _waiting(self) -> tuple[int, dict[str, int]]:
        """Results waiting, and by tier where the sink has tiers (under ``_cond``)."""
        raise NotImplementedError

    def _release(self) -> None:
        """Free what the waiting results used (files), once the thread stopped."""

    # -- public API -----------------------------------------------------------------------------------------
    def _check_accepting(self) -> None:
        if not self._accepting:
            raise SinkError(f"sink {self.name} is closed")

    def stats(self) -> SinkStats:
        with self._cond:
            dropped = self._dropped()
            streams = set(self._written) | set(dropped) | set(self._errors)
            per_stream = {sid: {"written": self._written[sid], "dropped": dropped[sid], "errors": self._errors[sid]}
                          for sid in sorted(streams)}
            queued, tiers = self._waiting()
            return SinkStats(self.name, queued, sum(self._written.values()), sum(dropped.values()),
                             sum(self._errors.values()), per_stream, self._publish_ms.summary(), self._last_error,
                             spool=tiers, retrying=self._retrying)

    def close(self, timeout_s: float = 15.0) -> bool:
        """Stop taking results, let what waits go out for up to ``timeout_s``, then close the inner sink (its own
        flush). True when nothing was left and the inner sink closed cleanly (errors of earlier writes are in
        ``stats()``, not here); what was left is counted as dropped. Never raises."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if not self._accepting and self._stop:
                return False  # closed or aborted before
            self._accepting = False
            self._cond.notify_all()
            drained = self._cond.wait_for(lambda: not self._pending(), timeout=max(0.0, timeout_s))
            self._stop = True
            self._cond.notify_all()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        left = self._take_leftovers()
        if left:
            log.warning("sink %s: %d result(s) not written within %gs at close (counted as dropped)",
                        self.name, left, timeout_s)
        self._release()
        if not drained or self._thread.is_alive():
            self._inner_abort()
            return False
        try:
            self.inner.close()
        except Exception as exc:  # noqa: BLE001 - the inner sink's flush failed: report it, never raise at shutdown
            with self._cond:
                self._last_error = f"close: {exc}"
            log.error("sink %s: close failed: %s", self.name, exc)
            return False
        return True

    def abort(self) -> None:
        """Drop what waits (counted) and abort the inner sink."""
        with self._cond:
            self._accepting = False
            self._stop = True
            self._cond.notify_all()
        self._thread.join(1.0)
        self._take_leftovers()
        self._release()
        self._inner_abort()

    # -- for the writer thread ------------------------------------------------------------------------------
    def _notify_written(self, results: Iterable[FrameResult]) -> None:
        if self._on_written is None:
            return
        for result in results:
            try:
                self._on_written(result)
            except Exception:  # noqa: BLE001 - an observer's bug must not stop publishing
                log.exception("sink %s: on_written callback failed", self.name)

    def _inner_abort(self) -> None:
        try:
            self.inner.abort()
        except Exception as exc:  # noqa: BLE001 - nothing more can be done for this sink
            log.error("sink %s: abort failed: %s", self.name, exc)
