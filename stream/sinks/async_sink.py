"""A sink that never blocks its caller: results wait in a bounded queue and one thread writes them.

``AsyncSink(inner)`` wraps any ``ResultSink`` (Kafka, Redis, JSONL). ``write`` only appends to the queue
and returns; a thread of its own hands results to ``inner.write`` in the order they came, so per stream
the order is kept. When the inner sink is slow or down and the queue is full, the *oldest* waiting result
is dropped and counted (a live consumer wants the newest), never the caller stalled. An error from the
inner sink is counted, logged once per kind (exception type and cause) and once more when writes succeed
again; it never reaches the caller. ``close`` stops taking results, gives the queue until its timeout to
drain, then closes the inner sink (which flushes); what could not be written is counted as dropped.

Counters are kept per stream (``stats()``), so the service can say for each camera how many results each
sink took, dropped or failed, and ``publish_ms`` (queued → written by the inner sink) over recent results.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from stream.errors import SinkError
from stream.messages import FrameResult
from stream.sinks import ResultSink

log = logging.getLogger(__name__)

_LATENCY_WINDOW = 512  # recent publish times kept for the percentiles


@dataclass(frozen=True, slots=True)
class AsyncSinkStats:
    """A snapshot. ``written``: results the inner sink accepted; ``dropped``: pushed out of a full queue or
    left at close; ``errors``: writes the inner sink refused (each such result is lost too)."""

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


def _kind(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return type(exc).__name__ + (f"/{type(cause).__name__}" if cause is not None else "")


class AsyncSink:
    """Wraps ``inner`` with a queue of ``max_queue`` results and a writer thread, started here."""

    def __init__(self, inner: ResultSink, *, name: str, max_queue: int = 1000,
                 on_written: Callable[[FrameResult], None] | None = None) -> None:
        if max_queue < 1:
            raise ValueError(f"AsyncSink max_queue must be >= 1, got {max_queue}")
        self.inner = inner
        self.name = name
        self.max_queue = max_queue
        self._on_written = on_written  # called in the writer thread after each accepted result
        self._cond = threading.Condition()
        self._queue: deque[tuple[FrameResult, float]] = deque()
        self._busy = False  # the thread holds a result it has not finished writing
        self._accepting = True
        self._stop = False
        self._written: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._publish_ms: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._kinds_logged: set[str] = set()
        self._failing = False
        self._last_error: str | None = None
        self._drop_logged = False
        self._thread = threading.Thread(target=self._run, name=f"sink[{name}]", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------ public API -----
    def write(self, result: FrameResult) -> None:
        """Queue one result; never blocks. Raises SinkError only after ``close``/``abort``."""
        with self._cond:
            if not self._accepting:
                raise SinkError(f"sink {self.name} is closed")
            if len(self._queue) >= self.max_queue:
                old, _ = self._queue.popleft()
                self._dropped[old.stream_id] += 1
                if not self._drop_logged:
                    self._drop_logged = True
                    log.warning("sink %s: queue full (%d results): dropping the oldest (counted)", self.name, self.max_queue)
            self._queue.append((result, time.perf_counter()))
            self._cond.notify_all()

    def stats(self) -> AsyncSinkStats:
        with self._cond:
            streams = set(self._written) | set(self._dropped) | set(self._errors)
            per_stream = {
                sid: {"written": self._written[sid], "dropped": self._dropped[sid], "errors": self._errors[sid]}
                for sid in sorted(streams)
            }
            times = sorted(self._publish_ms)
            queued = len(self._queue) + int(self._busy)
            written, dropped, errors = sum(self._written.values()), sum(self._dropped.values()), sum(self._errors.values())
            last_error = self._last_error
        publish = {}
        if times:
            publish = {"p50": times[len(times) // 2], "p99": times[min(len(times) - 1, int(len(times) * 0.99))], "max": times[-1]}
        return AsyncSinkStats(self.name, queued, written, dropped, errors, per_stream, publish, last_error)

    def close(self, timeout_s: float = 15.0) -> bool:
        """Stop taking results, let the queue drain for up to ``timeout_s``, then close the inner sink (its own
        flush). True when the queue drained and the inner sink closed cleanly (errors of earlier writes are in
        ``stats()``, not here). Never raises."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if not self._accepting and self._stop:
                return False
            self._accepting = False
            self._cond.notify_all()
            drained = self._cond.wait_for(lambda: not self._queue and not self._busy, timeout=max(0.0, timeout_s))
            left = self._drop_all()
            self._stop = True
            self._cond.notify_all()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        if left:
            log.warning("sink %s: %d result(s) not written within %gs at close (counted as dropped)", self.name, left, timeout_s)
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
            self._drop_all()
            self._stop = True
            self._cond.notify_all()
        self._thread.join(1.0)
        self._inner_abort()

    # ------------------------------------------------------------------------------------ internals ------
    def _drop_all(self) -> int:
        left = len(self._queue)
        for result, _ in self._queue:
            self._dropped[result.stream_id] += 1
        self._queue.clear()
        return left

    def _inner_abort(self) -> None:
        try:
            self.inner.abort()
        except Exception as exc:  # noqa: BLE001 - nothing more can be done for this sink
            log.error("sink %s: abort failed: %s", self.name, exc)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._queue or self._stop)
                if self._stop:
                    return
                result, queued_at = self._queue.popleft()
                self._busy = True
            try:
                self.inner.write(result)
            except Exception as exc:  # noqa: BLE001 - a sink error of any kind must not end the writer thread
                self._on_error(result, exc)
                continue
            elapsed_ms = (time.perf_counter() - queued_at) * 1000.0
            with self._cond:
                self._written[result.stream_id] += 1
                self._publish_ms.append(elapsed_ms)
                recovered = self._failing
                self._failing = False
            if self._on_written is not None:
                try:
                    self._on_written(result)
                except Exception:  # noqa: BLE001 - an observer's bug must not stop publishing
                    log.exception("sink %s: on_written callback failed", self.name)
            if recovered:
                log.warning("sink %s: writing again (%d error(s) so far)", self.name, sum(self._errors.values()))

    def _on_error(self, result: FrameResult, exc: Exception) -> None:
        kind = _kind(exc)
        with self._cond:
            self._errors[result.stream_id] += 1
            self._last_error = str(exc).splitlines()[0] if str(exc) else kind
            first = kind not in self._kinds_logged
            self._kinds_logged.add(kind)
            self._failing = True
        if first:
            log.error("sink %s: write failed (%s): %s; further errors of this kind are only counted", self.name, kind, exc)
