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
The thread, close/abort and the counters are ``ThreadedSink``'s; the queue is this sink's own.
"""
from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Callable

from stream.messages import FrameResult
from stream.sinks import ResultSink
from stream.sinks.threaded import ThreadedSink

log = logging.getLogger(__name__)


def _kind(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return type(exc).__name__ + (f"/{type(cause).__name__}" if cause is not None else "")


class AsyncSink(ThreadedSink):
    """Wraps ``inner`` with a queue of ``max_queue`` results and a writer thread, started here."""

    def __init__(self, inner: ResultSink, *, name: str, max_queue: int = 1000,
                 on_written: Callable[[FrameResult], None] | None = None) -> None:
        if max_queue < 1:
            raise ValueError(f"AsyncSink max_queue must be >= 1, got {max_queue}")
        self.max_queue = max_queue
        self._queue: deque[tuple[FrameResult, float]] = deque()
        self._busy = False  # the thread holds a result it has not finished writing
        self._dropped_by_stream: Counter[str] = Counter()
        self._kinds_logged: set[str] = set()
        self._failing = False
        self._drop_logged = False
        super().__init__(inner, name=name, on_written=on_written)

    def write(self, result: FrameResult) -> None:
        """Queue one result; never blocks. Raises SinkError only after ``close``/``abort``."""
        with self._cond:
            self._check_accepting()
            if len(self._queue) >= self.max_queue:
                old, _ = self._queue.popleft()
                self._dropped_by_stream[old.stream_id] += 1
                if not self._drop_logged:
                    self._drop_logged = True
                    log.warning("sink %s: queue full (%d results): dropping the oldest (counted)", self.name, self.max_queue)
            self._queue.append((result, time.perf_counter()))
            self._cond.notify_all()

    # -- ThreadedSink's hooks -------------------------------------------------------------------------------
    def _pending(self) -> bool:
        return bool(self._queue) or self._busy

    def _dropped(self) -> Counter[str]:
        return Counter(self._dropped_by_stream)

    def _waiting(self) -> tuple[int, dict[str, int]]:
        return len(self._queue) + int(self._busy), {}

    def _take_leftovers(self) -> int:
        with self._cond:
            left = len(self._queue)
            for result, _ in self._queue:
                self._dropped_by_stream[result.stream_id] += 1
            self._queue.clear()
            return left

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
                self._publish_ms.add(elapsed_ms)
                recovered = self._failing
                self._failing = False
            self._notify_written((result,))
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
