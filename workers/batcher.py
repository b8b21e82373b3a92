"""Batches across streams for the inference loop: pure logic — no threads, no queue, no sleeping.

The inference worker adds each frame as it arrives and, whenever its models are free, asks
``next_batch(now)``; when that is None it waits for the next frame at most until ``deadline(now)``.
Time comes from an injectable clock (or an explicit ``now``), so the rules below are tested with a
fake clock.

Rules:

* Batch what is waiting: with ``max_wait_s`` 0 (the service's default) a batch is whatever waits when
  the loop asks, up to ``max_batch`` items under the share rules below. The loop asks when its models
  are free, so no frame waits for a batch to fill while they idle, and the frames that arrive while
  they are busy make the next batch. On a CPU a fuller batch costs as much per frame (the detector) or
  little less (the recognizer; docs/benchmarks.md), so waiting would only add latency. ``max_wait_s``
  > 0 is for accelerators, where a fuller batch pays: a batch that cannot be full yet waits until its
  oldest item has waited ``max_wait_s`` — never longer because another camera is late.
* Live streams first: while a live stream (``live(item)``: a camera) has a frame waiting, a batch holds
  live frames only; a file's frame, always ready, runs when none waits. A camera frame that arrives
  meanwhile waits for at most that one batch, while a file sharing every batch would lengthen every
  camera's batch, and equal turns would give the file a camera's share of a machine too slow for all:
  cameras lose frames they cannot get back, a file only goes slower.
* Least-recently-served first: a batch is filled in rounds, one item per stream per round, and in each
  round the streams go in the order they were last served (a stream never served first; ties by their
  oldest waiting item).
* No stream starves: a stream passed over by ``max_skips`` batches in a row while it had items waiting
  goes first in the next batch, whatever its kind — a file beside cameras that keep the models busy
  still gets a frame in every ``max_skips + 1`` batches. The default, 1, is what keeps two cameras at
  80 % of their results per second alone even when they alone keep the models busy (batches of 2 and
  3 frames in turn: 2 batches per 5 frame-times instead of per 4), while the file still gets a seventh
  of the models beside three such cameras (a file that must end in a test's time, tests/test_serve.py).
* Shares: ``per_stream_max`` (optional) caps a stream's items in one batch. The service uses 1: a
  camera that fell behind catches up by dropping (workers/freshness.py), not by a batch that makes the
  other cameras' frames wait.
* Per stream, items leave in the order they were added: every batch takes a prefix of each stream's
  waiting items, and a stream's items keep their relative order inside the batch.

Since every batch leaves in order per stream and the loop runs batches one after another, results
leave in frame order per stream without a reordering stage.
"""
from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from operator import attrgetter
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    """Collects ready items of many streams into batches; see the module docstring for the rules.

    ``key`` gives an item's stream (default: its ``stream_id`` attribute) and ``live`` whether its stream is
    live (default: every stream, i.e. no priority); ``clock`` gives "now" wherever a method's ``now`` is left
    out (default ``time.monotonic``).
    """

    def __init__(
        self,
        max_batch: int,
        max_wait_s: float = 0.0,
        *,
        per_stream_max: int | None = None,
        max_skips: int = 1,
        key: Callable[[T], Hashable] = attrgetter("stream_id"),
        live: Callable[[T], bool] = lambda item: True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s!r}")
        if per_stream_max is not None and (not isinstance(per_stream_max, int) or per_stream_max < 1):
            raise ValueError(f"per_stream_max must be None or an int >= 1, got {per_stream_max!r}")
        if not isinstance(max_skips, int) or max_skips < 0:
            raise ValueError(f"max_skips must be an int >= 0, got {max_skips!r}")
        self.max_batch = max_batch
        self.max_wait_s = float(max_wait_s)
        self.per_stream_max = per_stream_max
        self.max_skips = max_skips
        self._key = key
        self._live_item = live
        self._clock = clock
        # stream -> deque of (arrival time, arrival number, item); only streams with items waiting.
        self._streams: dict[Hashable, deque[tuple[float, int, T]]] = {}
        # stream -> number of the batch that last took one of its items; kept until ``remove_stream``.
        self._served: dict[Hashable, int] = {}
        self._live: dict[Hashable, bool] = {}  # stream -> live (its latest item says), for streams waiting
        self._skipped: dict[Hashable, int] = {}  # stream -> batches in a row that passed it over, for streams waiting
        self._count = 0
        self._arrivals = 0
        self._batches = 0

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
            self._skipped[stream] = 0
        elif waiting and arrived < waiting[-1][0]:
            arrived = waiting[-1][0]  # a stream's arrivals never go back in time
        waiting.append((arrived, self._arrivals, item))
        self._live[stream] = bool(self._live_item(item))
        self._arrivals += 1
        self._count += 1

    def next_batch(self, now: float | None = None) -> list[T] | None:
        """The next batch if one is due (``max_wait_s`` 0: anything waits; else full, or its oldest item
        waited ``max_wait_s``), else None."""
        if not self._count:
            return None
        now = self._clock() if now is None else now
        plan = self._plan()
        if len(plan) < self.max_batch and now < self._oldest() + self.max_wait_s:
            return None
        batch = []
        for stream in self._streams:
            self._skipped[stream] += 1
        for stream in plan:
            waiting = self._streams[stream]
            batch.append(waiting.popleft()[2])
            self._served[stream] = self._batches
            self._skipped[stream] = 0
            if not waiting:
                self._forget_waiting(stream)
        self._batches += 1
        self._count -= len(batch)
        return batch

    def deadline(self, now: float | None = None) -> float:
        """When ``next_batch`` will next return a batch if nothing else arrives: ``now`` or earlier
        when one is due already, ``math.inf`` when nothing waits. The caller waits until then."""
        if not self._count:
            return math.inf
        now = self._clock() if now is None else now
        due = self._oldest() + self.max_wait_s
        if due <= now or len(self._plan()) >= self.max_batch:
            return min(due, now)
        return due

    def drop_oldest(self, stream_id: Hashable, n: int) -> list[T]:
        """Take out a stream's ``n`` oldest waiting items (a live stream's backlog overflowed); its turn is kept."""
        waiting = self._streams.get(stream_id)
        taken: list[T] = []
        while waiting and len(taken) < n:
            taken.append(waiting.popleft()[2])
        if waiting is not None and not waiting:
            self._forget_waiting(stream_id)
        self._count -= len(taken)
        return taken

    def drain(self) -> list[T]:
        """Everything still waiting, in arrival order (per-stream order kept); for shutdown."""
        entries = sorted((entry for waiting in self._streams.values() for entry in waiting), key=lambda e: e[1])
        self._streams.clear()
        self._live.clear()
        self._skipped.clear()
        self._count = 0
        return [entry[2] for entry in entries]

    def remove_stream(self, stream_id: Hashable) -> list[T]:
        """Take out one stream's waiting items, in order, and forget its turn (its source ended or failed)."""
        waiting = self._streams.get(stream_id) or deque()
        if stream_id in self._streams:
            self._forget_waiting(stream_id)
        self._served.pop(stream_id, None)
        self._count -= len(waiting)
        return [entry[2] for entry in waiting]

    # ------------------------------------------------------------------------------------ internals

    def _oldest(self) -> float:
        return min(waiting[0][0] for waiting in self._streams.values())

    def _forget_waiting(self, stream: Hashable) -> None:
        del self._streams[stream], self._live[stream], self._skipped[stream]

    def _plan(self) -> list[Hashable]:
        """The streams of the next batch's items, one entry per item, in batch order."""
        # Streams passed over too often first, then live streams (files only when none is live), each least
        # recently served first (never served: -1), then by the oldest item waiting.
        overdue = [s for s in self._streams if self._skipped[s] >= self.max_skips]
        live = [s for s in self._streams if self._live[s] and s not in overdue]
        rest = live or [s for s in self._streams if s not in overdue]
        turn = lambda s: (self._served.get(s, -1), self._streams[s][0][:2])  # noqa: E731
        order = sorted(overdue, key=turn) + sorted(rest, key=turn)
        share = self.per_stream_max or self.max_batch
        plan: list[Hashable] = []
        for round_no in range(share):
            size = len(plan)
            for stream in order:
                if len(plan) == self.max_batch:
                    return plan
                if round_no < len(self._streams[stream]):
                    plan.append(stream)
            if len(plan) == size:
                break  # no stream has another item
        return plan
