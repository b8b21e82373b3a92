"""A bounded FIFO of results waiting for a sink: memory first, then segment files on disk.

While the sink is healthy the spool holds a handful of results. While it is down (a Kafka broker gone for
half a minute), results keep coming from inference and must neither stall it nor be lost: the oldest
``memory_max`` wait in memory, the newer ones are appended to segment files under ``directory`` (JSON lines,
``segment_bytes`` each), and as memory empties, results are read back from the oldest segment, so the order
is always the order of ``put``. When the disk part would pass ``disk_max_bytes``, its oldest segment is
deleted (with no disk configured: the oldest result in memory is), and what was dropped is counted per stream
and returned, so the caller can say so.

One writer thread and one reader thread may use it at once (a lock guards every method). The files are this
spool's alone: while it is open it holds an exclusive ``flock`` on ``directory/.lock``, and ``directory`` is
emptied when it opens and when it closes. ``adopt`` takes over the segment files a dead predecessor left in its
own directories (a killed worker's disk part, or a killed service's, found by ``leftover_spool_dirs``): they come
first, in their order, and a line its writer did not finish is cut off. A directory whose lock another process
holds is alive and is left alone: the lock, not a process id, tells a dead spool from a live one, and the kernel
drops it the moment its holder dies, however it died.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

from stream.messages import FrameResult


class Spoolable(Protocol):
    """What a spool holds: a message of one stream that turns into one JSON line and back (``decode``): a
    ``FrameResult``, or a ``TrackEvent``."""

    stream_id: str

    def to_json(self) -> str: ...

_SEGMENT_GLOB = "segment-*.jsonl"
_LOCK_NAME = ".lock"


SPOOLED_SINKS: tuple[str, ...] = ("kafka", "kafka.tracks")  # the results' and the track events' Kafka sinks


def spool_dir(base: str | Path, run_label: str, sink: str = "kafka") -> Path:
    """Where the inference worker of ``run_label`` (``<run>`` or ``<run>.<n>``) spools what ``sink`` publishes."""
    return Path(base) / f"vidrec-spool-{run_label}-{sink}"


def spool_dirs_of_run(base: str | Path, run_id: str, sink: str = "kafka") -> list[Path]:
    """Every worker incarnation's spool folder of a run and sink under ``base``, oldest first."""

    def label(path: Path) -> str:
        return path.name[len("vidrec-spool-"):-len(f"-{sink}")]

    def incarnation(path: Path) -> int:
        tail = label(path)[len(run_id):].lstrip(".")
        return int(tail) if tail.isdigit() else 0

    found = [d for d in Path(base).glob(f"vidrec-spool-{run_id}*-{sink}") if d.is_dir()]
    return sorted((d for d in found if label(d).split(".")[0] == run_id), key=incarnation)


def leftover_spool_dirs(base: str | Path, sink: str = "kafka", *, exclude_run: str | None = None) -> list[Path]:
    """Spool folders of ``sink`` under ``base`` from other service runs (not ``exclude_run``), oldest segment
    first: what a killed service left for the next run in the same ``Kafka.spool_dir``. Live ones are among them;
    ``Spool(adopt=...)`` skips those (their lock is held)."""

    def run_of(path: Path) -> str:
        return path.name[len("vidrec-spool-"):-len(f"-{sink}")].split(".")[0]

    def oldest(path: Path) -> float:
        times = [f.stat().st_mtime for f in path.glob(_SEGMENT_GLOB)]
        return min(times) if times else float("inf")

    found = [d for d in Path(base).glob(f"vidrec-spool-*-{sink}") if d.is_dir() and run_of(d) != exclude_run]
    return sorted(found, key=lambda d: (oldest(d), d.name))


def _try_lock(directory: Path) -> int | None:
    """An open descriptor holding ``directory``'s exclusive lock, or None when another process holds it."""
    fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(directory: Path, fd: int) -> None:
    (directory / _LOCK_NAME).unlink(missing_ok=True)  # before the lock goes: nobody locks a file being removed
    os.close(fd)


def discard_spool_dir(directory: Path) -> int:
    """Delete a spool folder a killed worker left behind; returns how many results its segments held (lost)."""
    files = list(directory.glob(_SEGMENT_GLOB))
    lost = sum(f.read_bytes().count(b"\n") for f in files)
    for f in files:
        f.unlink()
    (directory / _LOCK_NAME).unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        pass
    return lost


@dataclass
class _Segment:
    path: Path
    count: int = 0  # results written to it
    read: int = 0  # results read back from it
    nbytes: int = 0
    streams: Counter = field(default_factory=Counter)  # results not yet read, per stream
    reader: object | None = None  # open file while it is being read


class Spool:
    def __init__(self, memory_max: int, directory: str | Path | None = None, *, disk_max_bytes: int = 0,
                 segment_bytes: int = 4 * 1024 * 1024, adopt: Iterable[Path] = (),
                 decode: Callable[[str], Spoolable] = FrameResult.from_json) -> None:
        if memory_max < 1:
            raise ValueError(f"spool memory_max must be >= 1, got {memory_max}")
        if directory is not None and disk_max_bytes < segment_bytes:
            raise ValueError(f"spool disk_max_bytes ({disk_max_bytes}) must be at least one segment ({segment_bytes})")
        self.memory_max = memory_max
        self.directory = None if directory is None else Path(directory)
        self.disk_max_bytes = disk_max_bytes
        self.segment_bytes = segment_bytes
        self._decode = decode
        self._lock = threading.Lock()
        self._memory: deque[Spoolable] = deque()
        self._segments: deque[_Segment] = deque()
        self._writer: object | None = None  # open file of the newest segment
        self._next_segment = 0
        self._inflight = 0  # the oldest results the reader peeked and is delivering: never dropped
        self.adopted = 0  # results taken over from a predecessor's segments
        self.dropped: Counter = Counter()  # per stream, since the start
        self._lock_fd: int | None = None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _try_lock(self.directory)
            if self._lock_fd is None:
                raise OSError(f"spool folder {self.directory} is in use by another process")
            for stale in self.directory.glob(_SEGMENT_GLOB):
                stale.unlink()
            for old_dir in adopt:
                self.adopted += self._adopt(Path(old_dir))

    def _adopt(self, old_dir: Path) -> int:
        """Move ``old_dir``'s segments in (oldest first), unless its spool is alive (locked); returns how many
        results they hold."""
        assert self.directory is not None
        if not old_dir.is_dir():
            return 0  # adopted meanwhile by another spool
        fd = _try_lock(old_dir)
        if fd is None:
            return 0  # a live spool's folder
        total = 0
        for path in sorted(old_dir.glob(_SEGMENT_GLOB)):
            data = path.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]  # a killed writer may have left half a line
            if not whole:
                path.unlink()
                continue
            target = self.directory / f"segment-{self._next_segment:08d}.jsonl"
            self._next_segment += 1
            target.write_bytes(whole)
            path.unlink()
            segment = _Segment(target, nbytes=len(whole))
            for line in whole.splitlines():
                segment.count += 1
                segment.streams[json.loads(line)["stream_id"]] += 1
            self._segments.append(segment)
            total += segment.count
        _unlock(old_dir, fd)
        try:
            old_dir.rmdir()
        except OSError:
            pass
        return total

    # -- sizes --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._memory) + sum(s.count - s.read for s in self._segments)

    def depth(self) -> dict[str, int]:
        """Results waiting, by tier: ``memory`` and ``disk``."""
        with self._lock:
            return {"memory": len(self._memory), "disk": sum(s.count - s.read for s in self._segments)}

    def disk_bytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._segments)

    # -- writer side --------------------------------------------------------------------------------------
    def put(self, result: Spoolable) -> Counter:
        """Add the newest result; returns what had to be dropped to make room (per stream, usually empty)."""
        dropped: Counter = Counter()
        with self._lock:
            if not self._segments and len(self._memory) < self.memory_max:
                self._memory.append(result)
                return dropped
            if self.directory is None:
                if len(self._memory) > self._inflight:
                    old = self._memory[self._inflight]  # the oldest one not being delivered right now
                    del self._memory[self._inflight]
                    dropped[old.stream_id] += 1
                    self._memory.append(result)
                else:
                    dropped[result.stream_id] += 1  # every one in memory is on its way: no room for it
            else:
                self._append_to_disk(result)
                while sum(s.nbytes for s in self._segments) > self.disk_max_bytes and len(self._segments) > 1:
                    dropped.update(self._drop_oldest_segment())
            self.dropped.update(dropped)
        return dropped

    def _append_to_disk(self, result: Spoolable) -> None:
        line = (result.to_json() + "\n").encode("utf-8")
        newest = self._segments[-1] if self._segments else None
        if newest is None or self._writer is None or newest.nbytes + len(line) > self.segment_bytes:
            if self._writer is not None:
                self._writer.close()
            assert self.directory is not None
            path = self.directory / f"segment-{self._next_segment:08d}.jsonl"
            self._next_segment += 1
            self._writer = open(path, "ab")
            newest = _Segment(path)
            self._segments.append(newest)
        self._writer.write(line)
        self._writer.flush()  # the reader opens the file itself
        newest.count += 1
        newest.nbytes += len(line)
        newest.streams[result.stream_id] += 1

    def _drop_oldest_segment(self) -> Counter:
        segment = self._segments.popleft()
        if segment.reader is not None:
            segment.reader.close()
        segment.path.unlink(missing_ok=True)
        return segment.streams

    # -- reader side --------------------------------------------------------------------------------------
    def peek(self, n: int) -> list[Spoolable]:
        """The oldest ``n`` results (fewer when fewer wait), without removing them; until the next ``pop``
        they are not dropped to make room."""
        with self._lock:
            self._refill(n)
            items = [self._memory[i] for i in range(min(n, len(self._memory)))]
            self._inflight = len(items)
            return items

    def pop(self, n: int) -> None:
        """Remove the oldest ``n`` results (after they were delivered)."""
        with self._lock:
            if n > self._inflight:
                raise ValueError(f"pop({n}) of more than the {self._inflight} result(s) peeked")
            for _ in range(n):
                self._memory.popleft()
            self._inflight = 0
            self._refill(n)

    def drain(self) -> list[Spoolable]:
        """Everything left, oldest first (at close: to count or to write out)."""
        with self._lock:
            self._refill(float("inf"))
            items = list(self._memory)
            self._memory.clear()
            self._inflight = 0
            return items

    def _refill(self, want: float) -> None:
        """Move results from the oldest segment into memory while memory has room (or ``want`` needs it)."""
        limit = max(self.memory_max, want)
        while self._segments and len(self._memory) < limit:
            segment = self._segments[0]
            if segment.read >= segment.count:
                if segment is self._segments[-1] and self._writer is not None:
                    self._writer.close()
                    self._writer = None
                if segment.reader is not None:
                    segment.reader.close()
                segment.path.unlink(missing_ok=True)
                self._segments.popleft()
                continue
            if segment.reader is None:
                segment.reader = open(segment.path, "rb")
            line = segment.reader.readline()
            if not line.endswith(b"\n"):
                raise OSError(f"spool segment {segment.path} ends early (line {segment.read + 1} of {segment.count})")
            result = self._decode(line.decode("utf-8"))
            segment.read += 1
            segment.streams[result.stream_id] -= 1
            self._memory.append(result)

    def close(self) -> None:
        """Forget everything and remove the segment files."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            for segment in self._segments:
                if segment.reader is not None:
                    segment.reader.close()
                segment.path.unlink(missing_ok=True)
            self._segments.clear()
            self._memory.clear()
            fd, self._lock_fd = self._lock_fd, None
        if self.directory is not None:
            if fd is not None:
                _unlock(self.directory, fd)
            try:
                os.rmdir(self.directory)
            except OSError:
                pass
