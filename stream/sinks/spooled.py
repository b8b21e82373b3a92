"""At-least-once publishing to Kafka: results wait in a ``Spool`` until the broker acknowledged them.

``write`` only appends to the spool (memory, then disk; never blocks inference). One thread publishes: it
takes the oldest results (up to ``batch_max``), hands them to the producer and waits for every
acknowledgement. Acknowledged ones leave the spool and count as ``written``; the rest stay at its head and go
again after a back-off, in the same order. While the broker is down the producer keeps retrying the batch
it has (until its ``delivery_timeout_ms``) and the spool absorbs what comes meanwhile, within its bounds
(beyond them the oldest results are dropped and counted per stream). After the broker returns, the spool
empties in order: per stream, results reach the topic in the order they were made.

What this gives: every result made is on the topic once the broker is back, unless it was dropped from a
full spool or the process died with it (both visible to a consumer as a gap in the stream's ``seq``). A
result whose acknowledgement was lost (broker restarted after writing it) is sent again: a consumer sees
the same ``(run_id, stream_id, seq)`` twice and keeps one. The idempotent producer (``acks=all``) already
prevents duplicates from its own retries within one batch.

The thread, close/abort and the counters are ``ThreadedSink``'s; the spool and the publishing are this sink's.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any, Callable

from stream.errors import SinkError
from stream.messages import FrameResult
from stream.sinks.spool import Spool
from stream.sinks.threaded import ThreadedSink

log = logging.getLogger(__name__)

_BACKOFF_S = (0.5, 5.0)
REOPEN_AFTER_S = 20.0  # no acknowledgement for this long: connect a new producer and send again


class SpooledSink(ThreadedSink):
    """``inner`` must offer ``send(result) -> future`` (KafkaSink), ``close()``, ``abort()``, ``describe_error``."""

    def __init__(self, inner: Any, *, name: str, spool: Spool, batch_max: int = 500,
                 on_written: Callable[[FrameResult], None] | None = None,
                 reopen_after_s: float = REOPEN_AFTER_S) -> None:
        if batch_max < 1 or batch_max > spool.memory_max:
            raise ValueError(f"batch_max must be within 1..spool memory ({spool.memory_max}), got {batch_max}")
        self.spool = spool
        self.batch_max = batch_max
        self.reopen_after_s = reopen_after_s
        self._last_progress = time.monotonic()
        self._last_reopen = time.monotonic()
        self._inflight = 0
        self._drop_logged = False
        super().__init__(inner, name=name, on_written=on_written)

    def write(self, result: FrameResult) -> None:
        """Spool one result; never waits for the broker. Raises SinkError only after ``close``/``abort``."""
        with self._cond:
            self._check_accepting()
        dropped = self.spool.put(result)
        if dropped and not self._drop_logged:
            self._drop_logged = True
            log.warning("sink %s: spool full: dropping the oldest results (counted per stream)", self.name)
        with self._cond:
            self._cond.notify_all()

    # -- ThreadedSink's hooks -------------------------------------------------------------------------------
    def _pending(self) -> bool:
        return len(self.spool) > 0 or bool(self._inflight)

    def _dropped(self) -> Counter[str]:
        return Counter(self.spool.dropped)

    def _waiting(self) -> tuple[int, dict[str, int]]:
        depth = self.spool.depth()
        return depth["memory"] + depth["disk"], depth

    def _take_leftovers(self) -> int:
        left = self.spool.drain()
        with self._cond:
            for result in left:
                self.spool.dropped[result.stream_id] += 1
        return len(left)

    def _release(self) -> None:
        self.spool.close()

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stop or len(self.spool) > 0, timeout=0.5)
                if self._stop:
                    return
            batch = self.spool.peek(self.batch_max)
            if not batch:
                continue
            with self._cond:
                self._inflight = len(batch)
            started = time.perf_counter()
            delivered, error, stuck = self._publish(batch)
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            with self._cond:
                for result in batch[:delivered]:
                    self._written[result.stream_id] += 1
                    self._publish_ms.add(elapsed_ms)
                for result in batch[delivered:]:
                    self._errors[result.stream_id] += 1
                self.spool.pop(delivered)
                self._inflight = 0
                recovered = self._retrying and error is None
                self._retrying = error is not None
                if error is not None:
                    self._last_error = error
                self._cond.notify_all()
            self._notify_written(batch[:delivered])
            if delivered:
                self._last_progress = time.monotonic()
            if error is None:
                if recovered:
                    log.warning("sink %s: publishing again after %d failed attempt(s)", self.name, failures)
                failures = 0
                continue
            if failures == 0:
                log.error("sink %s: %d result(s) not acknowledged (%s): they stay spooled and go again",
                          self.name, len(batch) - delivered, error)
            failures += 1
            if stuck or not getattr(self.inner, "connected", True):
                self._reopen(force=True)  # never send again while the old producer still holds the batch
            else:
                self._reopen(force=False)
            pause = min(_BACKOFF_S[0] * 2 ** (failures - 1), _BACKOFF_S[1])
            with self._cond:
                self._cond.wait_for(lambda: self._stop, timeout=pause)

    def _reopen(self, *, force: bool) -> None:
        """A new producer when ``force`` or after ``reopen_after_s`` without progress (the old one may never
        reconnect by itself)."""
        now = time.monotonic()
        if not hasattr(self.inner, "reopen"):
            return
        if not force and now - max(self._last_progress, self._last_reopen) < self.reopen_after_s:
            return
        self._last_reopen = now
        try:
            self.inner.reopen()
            log.warning("sink %s: no acknowledgement for %.0fs: reconnected with a new producer", self.name,
                        now - self._last_progress)
        except SinkError as exc:
            with self._cond:
                self._last_error = str(exc)

    def _publish(self, batch: list[FrameResult]) -> tuple[int, str | None, bool]:
        """Send ``batch`` and wait for its acknowledgements: (how many of its first results were
        acknowledged, the error that stopped the rest or None, whether some are still pending in the
        producer)."""
        futures = []
        error: str | None = None
        for result in batch:
            try:
                futures.append(self.inner.send(result))
            except SinkError as exc:
                error = str(exc)
                break
        give_up = time.monotonic() + self.reopen_after_s
        for future in futures:
            while not future.is_done:
                with self._cond:
                    if self._stop:
                        return self._prefix(futures), error or "stopped while waiting for the broker", True
                    self._cond.wait(0.1)
                if time.monotonic() > give_up:
                    return self._prefix(futures), f"no acknowledgement within {self.reopen_after_s:g}s", True
        delivered = self._prefix(futures)
        if delivered < len(futures):
            error = self.inner.describe_error(futures[delivered].exception)
        return delivered, error, False

    @staticmethod
    def _prefix(futures: list[Any]) -> int:
        n = 0
        for future in futures:
            if not (future.is_done and future.succeeded()):
                break
            n += 1
        return n
