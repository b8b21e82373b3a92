"""Batches across streams for the inference loop: pure logic — no threads, no queue, no sleeping.

The inference worker adds each frame as it arrives, asks ``next_batch(now)`` and, when that is None,
waits for the next frame at most until ``deadline(now)``. Time comes from an injectable clock (or an
explicit ``now``), so the rules below are tested with a fake clock.

Rules:

* A batch closes when it can be full (``max_batch`` items under the rules below) or when the oldest
  item has waited ``max_wait_s`` — never later because another camera is late.
* Fairness: a batch is filled round-robin across streams — one item per stream per round, streams
  in the order of their oldest waiting item — so a bursty camera fills spare room but cannot crowd
  out a camera that has a frame waiting. ``per_stream_max`` (optional) caps a stream's share of one
  batch outright, e.g. to the slots a transport ring can lend out at once.
* Staleness: an item that has waited ``staleness_s`` (>= ``max_wait_s``) goes first — before any
  round-robin pick and regardless of ``per_stream_max`` — oldest first. The batcher never leaves such
  an item out for a younger one; it cannot make inference faster, so when the loop is overloaded live
  streams shed load upstream (the transport drops their oldest frames), not here.
* Per stream, items leave in the order they were added: every batch takes a prefix of each stream's
  waiting items, and a stream's items keep their relative order inside the batch.

Since every batch leaves in order per stream and the loop runs batches one after another, results
leave in frame order per stream without a reordering stage.
"""
from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from operator import attrgetter
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Collects ready items of many streams into batches; see the module docstring for the rules.

    ``key`` gives an item's stream (default: its ``stream_id`` attribute); ``clock`` gives "now"
    wherever a method's ``now`` is left out (default ``time.monotonic``).
    """

    def __init__(
        self,
        max_batch: int,
        max_wait_s: float,
        staleness_s: float,
        *,
        per_stream_max: int | None = None,
        key: Callable[[T], Hashable] = attrgetter("stream_id"),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s!r}")
        if not staleness_s >= max_wait_s:
            raise ValueError(f"staleness_s must be >= max_wait_s ({max_wait_s}), got {staleness_s!r}")
        if per_stream_max is not None and (not isinstance(per_stream_max, int) or per_stream_max < 1):
            raise ValueError(f"per_stream_max must be None or an int >= 1, got {per_stream_max!r}")
        self.max_batch = max_batch
        self.max_wait_s = float(max_wait_s)
        self.staleness_s = float(staleness_s)
        self.per_stream_max = per_stream_max
        self._key = key
        self._clock = clock
        # stream -> deque of (arrival time, arrival number, item); dict order is first-seen order.
        self._streams: dict[Hashable, deque[tuple[float, int, T]]] = {}
        self._count = 0
        self._arrivals = 0

    def __len__(self) -> int:
        return self._count

    def pending(self, stream_id: Hashable) -> int:
        """Items of one stream waiting."""
        waiting = self._streams.get(stream_id)
        return len(waiting) if waiting else 0

    def add(self, item: T, *, now: float | None = None) -> None:
        """One ready item; it is timed from ``now`` (its arrival)."""
        arrived = self._clock() if now is None else now
        stream = self._key(item)
        waiting = self._streams.get(stream)
        if waiting is None:
            waiting = self._streams[stream] = deque()
        elif waiting and arrived < waiting[-1][0]:
            arrived = waiting[-1][0]  # a stream's arrivals never go back in time
        waiting.append((arrived, self._arrivals, item))
        self._arrivals += 1
        self._count += 1

    def next_batch(self, now: float | None = None) -> list[T] | None:
        """The next batch if one is due (full, or its oldest item waited ``max_wait_s``), else None."""
        if not self._count:
            return None
        now = self._clock() if now is None else now
        plan = self._plan(now)
        if len(plan) < self.max_batch and now < self._oldest() + self.max_wait_s:
            return None
        batch = []
        for stream in plan:
            waiting = self._streams[stream]
            batch.append(waiting.popleft()[2])
            if not waiting:
                del self._streams[stream]
        self._count -= len(batch)
        return batch

    def deadline(self, now: float | None = None) -> float:
        """When ``next_batch`` will next return a batch if nothing else arrives: ``now`` or earlier
        when one is due already, ``math.inf`` when nothing waits. The caller waits until then."""
        if not self._count:
            return math.inf
        now = self._clock() if now is None else now
        due = self._oldest() + self.max_wait_s
        if due <= now or len(self._plan(now)) >= self.max_batch:
            return min(due, now)
        return due

    def drain(self) -> list[T]:
        """Everything still waiting, in arrival order (per-stream order kept); for shutdown."""
        entries = sorted((entry for waiting in self._streams.values() for entry in waiting), key=lambda e: e[1])
        self._streams.clear()
        self._count = 0
        return [entry[2] for entry in entries]

    def remove_stream(self, stream_id: Hashable) -> list[T]:
        """Take out one stream's waiting items, in order (its source ended or failed)."""
        waiting = self._streams.pop(stream_id, None) or deque()
        self._count -= len(waiting)
        return [entry[2] for entry in waiting]

    # ------------------------------------------------------------------------------------ internals

    def _oldest(self) -> float:
        return min(waiting[0][0] for waiting in self._streams.values())

    def _plan(self, now: float) -> list[Hashable]:
        """The streams of the next batch's items, one entry per item, in batch order."""
        limit = self.max_batch
        cap = self.per_stream_max
        overdue_before = now - self.staleness_s
        taken: dict[Hashable, int] = dict.fromkeys(self._streams, 0)
        plan: list[Hashable] = []
        # Overdue items first, oldest first: they are a prefix of each stream's queue.
        heap = [(waiting[0][0], waiting[0][1], stream) for stream, waiting in self._streams.items()
                if waiting[0][0] <= overdue_before]
        heapq.heapify(heap)
        while heap and len(plan) < limit:
            _, _, stream = heapq.heappop(heap)
            plan.append(stream)
            n = taken[stream] = taken[stream] + 1
            waiting = self._streams[stream]
            if n < len(waiting) and waiting[n][0] <= overdue_before:
                heapq.heappush(heap, (waiting[n][0], waiting[n][1], stream))
        # Then round-robin: one per stream per round, streams by their oldest item still waiting.
        while len(plan) < limit:
            heads = [
                (waiting[taken[stream]][:2], stream)
                for stream, waiting in self._streams.items()
                if taken[stream] < len(waiting) and (cap is None or taken[stream] < cap)
            ]
            if not heads:
                break
            heads.sort(key=lambda head: head[0])
            for _, stream in heads[: limit - len(plan)]:
                plan.append(stream)
                taken[stream] += 1
        return plan
