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
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from typing import Any, Callable

from stream.errors import SinkError
from stream.messages import FrameResult
from stream.sinks.async_sink import AsyncSinkStats
from stream.sinks.spool import Spool

log = logging.getLogger(__name__)

_BACKOFF_S = (0.5, 5.0)
_WINDOW = 512
REOPEN_AFTER_S = 20.0  # no acknowledgement for this long: connect a new producer and send again


class SpooledSink:
    """``inner`` must offer ``send(result) -> future`` (KafkaSink), ``close()``, ``abort()``, ``describe_error``."""

    def __init__(self, inner: Any, *, name: str, spool: Spool, batch_max: int = 500,
                 on_written: Callable[[FrameResult], None] | None = None,
                 reopen_after_s: float = REOPEN_AFTER_S) -> None:
        if batch_max < 1 or batch_max > spool.memory_max:
            raise ValueError(f"batch_max must be within 1..spool memory ({spool.memory_max}), got {batch_max}")
        self.inner = inner
        self.name = name
        self.spool = spool
        self.batch_max = batch_max
        self.reopen_after_s = reopen_after_s
        self._on_written = on_written
        self._last_progress = time.monotonic()
        self._last_reopen = time.monotonic()
        self._cond = threading.Condition()
        self._accepting = True
        self._stop = False
        self._inflight = 0
        self._written: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._publish_ms: deque[float] = deque(maxlen=_WINDOW)
        self._last_error: str | None = None
        self._retrying = False
        self._drop_logged = False
        self._thread = threading.Thread(target=self._run, name=f"sink[{name}]", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------ public API -----
    def write(self, result: FrameResult) -> None:
        """Spool one result; never waits for the broker. Raises SinkError only after ``close``/``abort``."""
        with self._cond:
            if not self._accepting:
                raise SinkError(f"sink {self.name} is closed")
        dropped = self.spool.put(result)
        if dropped and not self._drop_logged:
            self._drop_logged = True
            log.warning("sink %s: spool full: dropping the oldest results (counted per stream)", self.name)
        with self._cond:
            self._cond.notify_all()

    def stats(self) -> AsyncSinkStats:
        depth = self.spool.depth()
        with self._cond:
            dropped = Counter(self.spool.dropped)
            streams = set(self._written) | set(dropped) | set(self._errors)
            per_stream = {sid: {"written": self._written[sid], "dropped": dropped[sid], "errors": self._errors[sid]}
                          for sid in sorted(streams)}
            times = sorted(self._publish_ms)
            written, errors = sum(self._written.values()), sum(self._errors.values())
            last_error, retrying = self._last_error, self._retrying
        publish = {}
        if times:
            publish = {"p50": times[len(times) // 2], "p99": times[min(len(times) - 1, int(len(times) * 0.99))],
                       "max": times[-1]}
        return AsyncSinkStats(self.name, depth["memory"] + depth["disk"], written, sum(dropped.values()), errors,
                              per_stream, publish, last_error, spool=depth, retrying=retrying)

    def close(self, timeout_s: float = 15.0) -> bool:
        """Publish what waits for up to ``timeout_s``, then close the producer. True when nothing was left
        (what is left is counted as dropped). Never raises."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._accepting = False
            self._cond.notify_all()
            drained = self._cond.wait_for(lambda: len(self.spool) == 0 and not self._inflight,
                                          timeout=max(0.0, timeout_s))
            self._stop = True
            self._cond.notify_all()
        self._thread.join(max(0.1, deadline - time.monotonic()))
        left = self.spool.drain()
        for result in left:
            self.spool.dropped[result.stream_id] += 1
        if left:
            log.warning("sink %s: %d result(s) not published within %gs at close (counted as dropped)",
                        self.name, len(left), timeout_s)
        self.spool.close()
        if not drained or self._thread.is_alive():
            self._inner_abort()
            return False
        try:
            self.inner.close()
        except Exception as exc:  # noqa: BLE001 - reported, never raised at shutdown
            with self._cond:
                self._last_error = f"close: {exc}"
            log.error("sink %s: close failed: %s", self.name, exc)
            return False
        return True

    def abort(self) -> None:
        with self._cond:
            self._accepting = False
            self._stop = True
            self._cond.notify_all()
        self._thread.join(1.0)
        for result in self.spool.drain():
            self.spool.dropped[result.stream_id] += 1
        self.spool.close()
        self._inner_abort()

    # ------------------------------------------------------------------------------------ internals ------
    def _inner_abort(self) -> None:
        try:
            self.inner.abort()
        except Exception as exc:  # noqa: BLE001
            log.error("sink %s: abort failed: %s", self.name, exc)

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
                    self._publish_ms.append(elapsed_ms)
                for result in batch[delivered:]:
                    self._errors[result.stream_id] += 1
                self.spool.pop(delivered)
                self._inflight = 0
                recovered = self._retrying and error is None
                self._retrying = error is not None
                if error is not None:
                    self._last_error = error
                self._cond.notify_all()
            if self._on_written is not None:
                for result in batch[:delivered]:
                    try:
                        self._on_written(result)
                    except Exception:  # noqa: BLE001 - an observer's bug must not stop publishing
                        log.exception("sink %s: on_written callback failed", self.name)
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
