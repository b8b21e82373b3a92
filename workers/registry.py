"""Which streams this service runs, and where: the registry of streams and their placement on the ingest
processes.

``StreamRegistry`` holds the streams that should run here (their plans, from the config, ``--stream`` and the
HTTP API; later also from a Kafka consumer group) and, per stream, what the workers last said about it
(state, reason) and which ingest process runs it. Deciding where a new stream goes is ``place``, a pure
function of the processes' loads. Starting and stopping the streams is the supervisor's job, not this one's.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from stream.states import StreamState
from workers.plans import StreamPlan
from workers.service_errors import Conflict


def place(loads: Sequence[int], running: Sequence[bool]) -> int:
    """The ingest process for a new stream: the one with the fewest streams among those running, the first
    of them on a tie. A process that died and waits for its restart takes none (its restart adds only the
    live streams it had again), unless none runs at all."""
    if len(loads) != len(running) or not loads:
        raise ValueError(f"one load and one running flag per ingest process, got {list(loads)} and {list(running)}")
    candidates = [i for i, up in enumerate(running) if up] or list(range(len(loads)))
    return min(candidates, key=lambda i: loads[i])


@dataclass
class StreamEntry:
    """One stream of the registry. ``first_index``: the frame index its current ingest instance starts at."""

    plan: StreamPlan
    ingest: int
    first_index: int = 0
    state: StreamState = StreamState.STARTING
    reason: str | None = None
    since: float = field(default_factory=time.time)  # wall clock of the last state change
    removing: bool = False

    @property
    def id(self) -> str:
        return self.plan.id

    def set_state(self, state: StreamState, reason: str | None, at: float | None = None) -> None:
        """A new state; a reason replaces the one before, None keeps it (``ended`` after a failure says why)."""
        self.state = StreamState(state)
        self.reason = reason if reason is not None else self.reason
        self.since = time.time() if at is None else at


class StreamRegistry:
    """The streams that should run here, by id, each with its ingest process (not thread-safe: the
    supervisor holds its lock)."""

    def __init__(self, ingest_processes: int, max_streams: int) -> None:
        self.ingest_processes = ingest_processes
        self.max_streams = max_streams
        self._entries: dict[str, StreamEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._entries

    def __iter__(self) -> Iterator[StreamEntry]:
        return iter(list(self._entries.values()))

    def get(self, stream_id: str) -> StreamEntry | None:
        return self._entries.get(stream_id)

    def loads(self) -> list[int]:
        """Streams per ingest process."""
        loads = [0] * self.ingest_processes
        for entry in self._entries.values():
            loads[entry.ingest] += 1
        return loads

    def check_room(self, stream_id: str) -> None:
        """Raises ``Conflict`` when ``stream_id`` is here already (or still being removed) or the registry is full."""
        existing = self._entries.get(stream_id)
        if existing is not None:
            what = "being removed" if existing.removing else "already present"
            raise Conflict(f"stream {stream_id!r} is {what}")
        if len(self._entries) >= self.max_streams:
            raise Conflict(f"Service.max_streams={self.max_streams} streams already")

    def add(self, plan: StreamPlan, *, running: Sequence[bool], first_index: int) -> StreamEntry:
        """Register ``plan`` on the ingest process ``place`` picks."""
        entry = StreamEntry(plan=plan, ingest=place(self.loads(), running), first_index=first_index)
        self._entries[plan.id] = entry
        return entry

    def drop(self, stream_id: str) -> StreamEntry | None:
        """Forget a stream (removed, or its ingest process died while it was being removed)."""
        return self._entries.pop(stream_id, None)

    def on_process(self, index: int) -> list[StreamEntry]:
        """The streams ingest process ``index`` runs."""
        return [entry for entry in self._entries.values() if entry.ingest == index]

    def state_counts(self) -> dict[str, int]:
        """Streams per state (``/healthz``)."""
        return dict(Counter(entry.state.value for entry in self._entries.values()))
