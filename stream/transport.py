"""Frames between processes without pickling pixels: a ring of shared-memory slots per stream.

The ingest process that decodes a stream owns a ``FrameProducer``; the inference process owns one
``FrameConsumer`` for all the streams it serves. Pixels go into a slot of the stream's ring; only a
``FrameRef`` (a few hundred bytes) travels on a bounded ``multiprocessing.Queue`` shared by all the
producers of that consumer. The consumer claims the slot, reads it (zero-copy view or a copy) and
releases it, which frees the slot for the producer.

Segments (POSIX shared memory, Linux: files under ``/dev/shm``), per stream, named from the run id
and the stream id (``segment_names``):

* ``vidrec_<run>_<stream-key>_ctl`` — the control block: a header of int64 words (slot count,
  current generation, slot size, producer pid, instance tag, counters) and one row per slot
  ``(state, seq, generation, nbytes)``. Its file descriptor also carries the ring's mutex
  (``flock``; see below).
* ``vidrec_<run>_<stream-key>_d<generation>`` — the pixels: ``slots`` slots of ``slot_bytes``.

Slot protocol (single producer, single consumer per ring). A slot is FREE, WRITING, WRITTEN or
IN_USE. Every change of a slot's row happens under the ring mutex, an exclusive ``flock`` on the
control segment taken through each side's own descriptor: the kernel drops it when its holder dies,
so a SIGKILLed producer can never leave the consumer stuck on it, and a consumer can map a ring by
name alone (a ``multiprocessing.Lock`` must be handed over at spawn and stays taken forever if its
holder is killed). Held for a few stores only, four times a frame; pixels are copied outside it.
``bench/transport_bench.py`` measured 2.6-4 µs a lock/unlock against 0.2-0.35 µs for a
``multiprocessing.Lock`` on a 2-vCPU VM: about 15 µs a frame, next to ~0.4 ms to copy a 720p frame.

    producer: FREE    -> WRITING  (chosen; seq and generation stamped)
              WRITING -> WRITTEN  (after the pixel copy; then its FrameRef is announced)
              WRITTEN -> WRITING  (live only: the oldest not-yet-taken frame is overwritten)
    consumer: WRITTEN -> IN_USE   (only if the slot still holds the ref's seq and generation;
                                   otherwise the ref is stale — its frame was dropped — and skipped)
              IN_USE  -> FREE     (release)

The producer never touches an IN_USE slot, so the consumer may run inference straight on the view;
the consumer never touches a FREE or WRITING slot, so it never sees a torn frame.

Policies:

* ``live`` — ``send`` never blocks. If no slot is FREE, the WRITTEN slot with the oldest frame is
  overwritten (drop reason ``overwritten``); if every slot is IN_USE (the consumer holds them all),
  the new frame is dropped (``ring_in_use``): keep ``slots`` above the most frames per stream the
  consumer holds at once. The queue never blocks it either: each stream may have at most
  ``2 * slots`` refs on the queue (``announced - received``); refs beyond that, or refused by a full
  queue, wait in the producer (in frame order, at most ``slots`` of them, forgotten when their slot
  is overwritten) and go out on the next ``send`` or ``pump``.
* ``file`` — no frame is lost: ``send`` waits until a slot is FREE and the ref is on the queue,
  polling with a short back-off and returning False as soon as ``stop_event`` is set.

Resolution changes: a slot fits any frame of up to ``slot_bytes`` (any shape), so a stream that
shrinks or changes aspect within that size goes on in the same ring. A larger frame starts a new
generation: a new data segment with larger slots. Frames still in the old generation's slots stay
readable (each slot row says its generation); the producer unlinks an old generation once no slot
refers to it. Nothing is dropped for a resize. Frames beyond ``limit_frame_bytes`` are rejected with
``FrameTooLargeError``.

End of stream: ``end()`` announces what is pending, waits (bounded) for the consumer to take what is
written, counts what is left as dropped (``closed``) and puts an ``EndOfStream`` with the final
counters; after it, per stream, ``written == taken + sum(dropped)``.

Lifecycle: the producer creates the segments and unlinks them in ``close()``; the consumer only maps
and closes (a mapping outlives the unlink, so frames already announced stay readable). When the
producer process dies without closing (SIGKILL, OOM), its segments stay: the consumer's ``receive``
raises ``ProducerDiedError`` (it watches the producer's pid through a pidfd) within ``poll_s``, and
the supervisor, which knows the run id and stream ids, removes them with
``unlink_stream_segments(run_id, stream_id)`` (or ``unlink_run_segments(run_id)``) before restarting
the stream. When the consumer process dies, the slots it held stay IN_USE; the supervisor frees them
with ``free_dead_consumer_slots(run_id, stream_id)`` and releases the queue's reader lock the dead
process may hold (``free_dead_reader``) before starting the next consumer.

Python 3.11's resource tracker registers every segment a process maps; producer and consumer must be
started by the same supervisor (one process tree, one tracker), as vidrec does, or the consumer's
tracker would unlink the producer's segments when the consumer exits. Shared memory needs room:
``slots * slot_bytes`` per stream (4 slots of 1080p ≈ 25 MB); Docker's default ``/dev/shm`` is 64 MB.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import queue as queue_mod
import re
import secrets
import select
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from multiprocessing.shared_memory import SharedMemory
from typing import Any, Literal, Mapping

import numpy as np

from stream.frames import Frame

log = logging.getLogger(__name__)

Policy = Literal["live", "file"]
POLICIES: tuple[str, ...] = ("live", "file")

# Where Linux shows POSIX shared memory; used only to list and sweep a run's segments.
SHM_DIR = "/dev/shm"
SEGMENT_PREFIX = "vidrec_"

DROP_REASONS: tuple[str, ...] = ("overwritten", "ring_in_use", "closed")

# Slot states.
FREE, WRITING, WRITTEN, IN_USE = 0, 1, 2, 3

# Header words of the control segment (int64 each).
_MAGIC = 0x7669647265633031  # b"vidrec01"
(
    _H_MAGIC,
    _H_NSLOTS,
    _H_GENERATION,
    _H_SLOT_BYTES,
    _H_PID,
    _H_INSTANCE,
    _H_POLICY,
    _H_CLOSED,
    _H_WRITTEN,  # producer: frames handed to send() and accepted (in the ring or dropped at once)
    _H_TAKEN,  # consumer: frames claimed
    _H_RECEIVED,  # consumer: refs taken off the queue, stale or not
    _H_ANNOUNCED,  # producer: refs put on the queue
    _H_DROP_OVERWRITTEN,
    _H_DROP_IN_USE,
    _H_DROP_CLOSED,
) = range(15)
_HEADER_WORDS = 16
_DROP_WORDS = {"overwritten": _H_DROP_OVERWRITTEN, "ring_in_use": _H_DROP_IN_USE, "closed": _H_DROP_CLOSED}
# Slot rows.
_S_STATE, _S_SEQ, _S_GEN, _S_NBYTES = range(4)
_SLOT_WORDS = 4

_SLOT_ALIGN = 64
# Sequence numbers carry the producer instance in their upper bits, so a ref left on the queue by a
# producer that died can never match a slot of the one restarted in its place.
_INSTANCE_SHIFT = 32

_RUN_ID_RE = re.compile(r"[A-Za-z0-9-]{1,32}")


class TransportError(Exception):
    """The frame transport failed: a segment is missing or left over, a message is malformed."""


class ProducerDiedError(TransportError):
    """The process writing a stream's ring died without closing it."""

    def __init__(self, message: str, *, stream_id: str, pid: int) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.pid = pid


class FrameTooLargeError(TransportError, ValueError):
    """A frame is larger than ``limit_frame_bytes``."""


# ----------------------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class StreamCounters:
    """Per-stream totals. ``written`` counts frames the producer accepted; each one ends up taken
    by the consumer or dropped (by reason) — after ``EndOfStream``, ``written == taken + dropped_total``."""

    written: int
    taken: int
    dropped: Mapping[str, int] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@dataclass(frozen=True, slots=True)
class FrameRef:
    """Where one frame lies: ``slot`` of ``generation`` of ``stream_id``'s ring, with its metadata.

    ``seq`` is unique per frame and producer instance; the slot must still hold it for the frame to
    be taken (otherwise it was dropped). ``shape`` is (height, width, 3).
    """

    stream_id: str
    slot: int
    generation: int
    index: int
    pts: float | None
    capture_time: float
    decode_ms: float
    shape: tuple[int, int, int]
    seq: int


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The last message of a stream. ``counters`` are final (the consumer fills in ``taken``)."""

    stream_id: str
    last_seq: int
    counters: StreamCounters


# ---------------------------------------------------------------------------------------------- names


def new_run_id() -> str:
    """A fresh run id (8 hex digits): segments of different runs never collide."""
    return secrets.token_hex(4)


def _check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"run_id must be 1-32 characters of [A-Za-z0-9-], got {run_id!r}")
    return run_id


def _stream_key(stream_id: str) -> str:
    if not isinstance(stream_id, str) or not stream_id:
        raise ValueError(f"stream_id must be a non-empty string, got {stream_id!r}")
    readable = re.sub(r"[^A-Za-z0-9-]", "-", stream_id)[:24]
    digest = hashlib.blake2b(stream_id.encode("utf-8"), digest_size=4).hexdigest()
    return f"{readable}-{digest}"


def run_prefix(run_id: str) -> str:
    """What every segment name of this run starts with (run ids have no underscore)."""
    return f"{SEGMENT_PREFIX}{_check_run_id(run_id)}_"


def control_name(run_id: str, stream_id: str) -> str:
    return f"{run_prefix(run_id)}{_stream_key(stream_id)}_ctl"


def data_name(run_id: str, stream_id: str, generation: int) -> str:
    return f"{run_prefix(run_id)}{_stream_key(stream_id)}_d{generation}"


def list_run_segments(run_id: str) -> list[str]:
    """Names of this run's segments present in ``/dev/shm`` (Linux), sorted."""
    prefix = run_prefix(run_id)
    try:
        return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(prefix))
    except FileNotFoundError:
        return []


def _unlink_name(name: str) -> bool:
    try:
        shm = SharedMemory(name=name)
    except FileNotFoundError:
        return False
    shm.close()
    try:
        shm.unlink()
    except FileNotFoundError:
        return False
    return True


def unlink_stream_segments(run_id: str, stream_id: str) -> list[str]:
    """Remove a stream's segments left by a producer that died; returns the names removed.

    For the supervisor, after the producer's process has exited: it reads the current generation
    from the control segment and unlinks every data generation up to it, then the control segment
    (the producer creates the control segment first and unlinks it last, so none can be missed).
    A consumer still mapping them keeps its mapping until it closes.
    """
    ctl_name = control_name(run_id, stream_id)
    try:
        ctl = SharedMemory(name=ctl_name)
    except FileNotFoundError:
        return []
    try:
        words = np.ndarray((_HEADER_WORDS,), np.int64, buffer=ctl.buf) if ctl.size >= _HEADER_WORDS * 8 else None
        generation = int(words[_H_GENERATION]) if words is not None and words[_H_MAGIC] == _MAGIC else 0
        del words
    finally:
        ctl.close()
    removed = [name for gen in range(generation + 1) if _unlink_name(name := data_name(run_id, stream_id, gen))]
    if _unlink_name(ctl_name):
        removed.append(ctl_name)
    return removed


def unlink_run_segments(run_id: str) -> list[str]:
    """Remove every segment of a run found in ``/dev/shm``: the supervisor's sweep at shutdown."""
    return [name for name in list_run_segments(run_id) if _unlink_name(name)]


def free_dead_consumer_slots(run_id: str, stream_id: str) -> int:
    """Free the slots of a stream's ring that its consumer held when its process died; returns how many.

    For the supervisor, once the consumer's process is known to be dead and before the next one starts.
    A file producer whose every slot the dead consumer held has nothing left to announce, so the next
    consumer would never see a ref of that stream, never map its ring, and the stream would wait forever.
    0 when the ring is gone (its producer has ended or died)."""
    try:
        ctl = SharedMemory(name=control_name(run_id, stream_id))
    except FileNotFoundError:
        return 0
    try:
        words = np.ndarray((_HEADER_WORDS,), np.int64, buffer=ctl.buf) if ctl.size >= _HEADER_WORDS * 8 else None
        nslots = int(words[_H_NSLOTS]) if words is not None and words[_H_MAGIC] == _MAGIC else 0
        del words
        if not nslots or ctl.size < (_HEADER_WORDS + nslots * _SLOT_WORDS) * 8:
            return 0
        header, rows = _control_words(ctl, nslots)
        with _RingMutex(ctl):
            freed = _free_claims(rows)
        del header, rows
        return freed
    finally:
        ctl.close()


def _free_claims(rows: np.ndarray) -> int:
    """IN_USE -> FREE for every slot; call under the ring mutex, only when no live consumer holds a slot."""
    stale = rows[:, _S_STATE] == IN_USE
    rows[stale, _S_STATE] = FREE
    return int(stale.sum())


def make_frame_queue(ctx: Any, *, streams: int, slots: int) -> Any:
    """A ``multiprocessing`` queue sized so that ``streams`` live producers of ``slots`` slots each
    are never refused for lack of room (``2 * slots`` refs and one end marker per stream)."""
    if streams < 1 or slots < 1:
        raise ValueError(f"streams and slots must be >= 1, got streams={streams} slots={slots}")
    return ctx.Queue(maxsize=streams * (2 * slots + 1))


def free_dead_reader(frames_queue: Any) -> bool:
    """Release the frame queue's reader lock after its only reader (the consumer's process) died; True when
    the dead reader held it. The consumer waits inside ``get`` almost all the time, so a killed consumer
    usually dies holding that lock, and the next consumer could never read. A ``multiprocessing.Lock`` is a
    semaphore, which any process may release; with one reader, a lock taken now can only be the dead one's.
    Call it only once the reader is known to be dead."""
    lock = getattr(frames_queue, "_rlock", None)  # multiprocessing.Queue's reader lock (CPython)
    if lock is None:
        return False
    if lock.acquire(False):
        lock.release()
        return False
    lock.release()
    return True


# ------------------------------------------------------------------------------------ shared pieces


class _RingMutex:
    """The ring's cross-process mutex: ``flock`` on this side's own descriptor of the control segment
    (flock locks belong to the open file description, so each side's descriptor excludes the other's,
    even inside one process). A thread lock orders this side's own threads, which share the descriptor."""

    __slots__ = ("_fd", "_thread_lock")

    def __init__(self, shm: SharedMemory) -> None:
        fd = getattr(shm, "_fd", -1)  # SharedMemory keeps its descriptor open on POSIX
        if fd < 0:
            raise TransportError(f"shared-memory segment {shm.name!r} has no file descriptor to lock (POSIX only)")
        self._fd = fd
        self._thread_lock = threading.Lock()

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *exc_info: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


def _control_words(shm: SharedMemory, nslots: int) -> tuple[np.ndarray, np.ndarray]:
    words = np.ndarray((_HEADER_WORDS + nslots * _SLOT_WORDS,), np.int64, buffer=shm.buf)
    return words[:_HEADER_WORDS], words[_HEADER_WORDS:].reshape(nslots, _SLOT_WORDS)


def _counters(header: np.ndarray) -> StreamCounters:
    return StreamCounters(
        written=int(header[_H_WRITTEN]),
        taken=int(header[_H_TAKEN]),
        dropped={reason: int(header[word]) for reason, word in _DROP_WORDS.items()},
    )


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class _Backoff:
    """Short sleeps for waits on the other process (the shared slot table has no wake-up)."""

    def __init__(self, first_s: float = 50e-6, max_s: float = 1e-3) -> None:
        self._delay = first_s
        self._max = max_s

    def wait(self) -> None:
        time.sleep(self._delay)
        self._delay = min(self._delay * 2, self._max)


# ------------------------------------------------------------------------------------------ producer


class FrameProducer:
    """Writes one stream's frames into its ring and announces them on ``frames_queue``.

    Create it in the process that decodes the stream (it records that process's pid for the
    consumer's liveness check). ``max_frame_bytes`` sizes the first generation's slots (default
    1080p BGR); ``limit_frame_bytes`` is the largest frame accepted at all (default 8K BGR).
    """

    def __init__(
        self,
        frames_queue: Any,
        *,
        run_id: str,
        stream_id: str,
        policy: Policy,
        slots: int = 4,
        max_frame_bytes: int = 1920 * 1080 * 3,
        limit_frame_bytes: int = 7680 * 4320 * 3,
        stop_event: Any = None,
        drain_timeout_s: float | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        if not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an int >= 1, got {slots!r}")
        if max_frame_bytes < 1 or limit_frame_bytes < max_frame_bytes:
            raise ValueError(
                f"need 1 <= max_frame_bytes <= limit_frame_bytes, got {max_frame_bytes} and {limit_frame_bytes}"
            )
        self.run_id = _check_run_id(run_id)
        self.stream_id = stream_id
        self.policy: Policy = policy
        self.slots = slots
        self._queue = frames_queue
        self._stop = stop_event
        self._limit = limit_frame_bytes
        self._cap = 2 * slots
        # end() waits this long for the consumer to take what is written (live: short; file: no loss).
        self._drain_timeout_s = drain_timeout_s if drain_timeout_s is not None else (1.0 if policy == "live" else 30.0)
        self._instance = secrets.randbits(30) + 1
        self._seq = self._instance << _INSTANCE_SHIFT
        self._pending: deque[FrameRef] = deque()
        self._ended = False
        self._closed = False
        self._final: StreamCounters | None = None
        self._segments: dict[int, SharedMemory] = {}

        self._ctl = self._create(control_name(run_id, stream_id), (_HEADER_WORDS + slots * _SLOT_WORDS) * 8)
        try:
            self._header, self._slot_rows = _control_words(self._ctl, slots)
            self._mutex = _RingMutex(self._ctl)
            self._generation = 0
            self._slot_bytes = _round_up(max_frame_bytes, _SLOT_ALIGN)
            self._segments[0] = self._create(data_name(run_id, stream_id, 0), slots * self._slot_bytes)
            h = self._header
            h[_H_NSLOTS] = slots
            h[_H_GENERATION] = 0
            h[_H_SLOT_BYTES] = self._slot_bytes
            h[_H_PID] = os.getpid()
            h[_H_INSTANCE] = self._instance
            h[_H_POLICY] = POLICIES.index(policy)
            h[_H_MAGIC] = _MAGIC
        except BaseException:
            self._unlink_all()
            raise

    def _create(self, name: str, size: int) -> SharedMemory:
        try:
            shm = SharedMemory(name=name, create=True, size=size)
        except FileExistsError:
            raise TransportError(
                f"shared-memory segment {name!r} already exists (left by a producer of run {self.run_id!r} that died?): "
                f"remove it with unlink_stream_segments({self.run_id!r}, {self.stream_id!r})"
            ) from None
        except OSError as exc:
            raise TransportError(
                f"cannot create shared-memory segment {name!r} of {size} bytes for stream {self.stream_id!r}: "
                f"{exc.strerror or exc} (is /dev/shm large enough?)"
            ) from exc
        try:
            # Reserve the pages now: tmpfs grants any size at ftruncate and answers a full /dev/shm
            # with SIGBUS on the first write; posix_fallocate answers it with ENOSPC here.
            os.posix_fallocate(shm._fd, 0, size)
        except OSError as exc:
            shm.close()
            shm.unlink()
            raise TransportError(
                f"cannot reserve {size} bytes of shared memory for {name!r} (stream {self.stream_id!r}): "
                f"{exc.strerror or exc}; /dev/shm is too small for {self.slots} slots of this frame size"
            ) from exc
        return shm

    def __reduce__(self) -> Any:
        raise TypeError("FrameProducer cannot be pickled: create it inside the process that decodes the stream")

    # -------------------------------------------------------------------------------- public API

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def counters(self) -> StreamCounters:
        """This stream's counters (``taken`` as last written by the consumer); frozen at ``close``."""
        if self._final is not None:
            return self._final
        return _counters(self._header)

    def send(self, frame: Frame) -> bool:
        """Put one frame in the ring and announce it.

        Returns True when the frame is in the ring, False when it was dropped at once (live: every
        slot held by the consumer) or not accepted because ``stop_event`` was set (file).
        """
        self._check_open()
        if frame.stream_id != self.stream_id:
            raise ValueError(f"frame of stream {frame.stream_id!r} sent to the producer of {self.stream_id!r}")
        image = frame.image_bgr
        if image.nbytes > self._slot_bytes:
            self._new_generation(image)
        self._flush()
        if self.policy == "live":
            slot = self._take_slot_live()
        else:
            slot = self._take_slot_file()
        if slot is None:
            return False
        seq = self._seq
        dst = np.ndarray(image.shape, np.uint8, buffer=self._segments[self._generation].buf, offset=slot * self._slot_bytes)
        np.copyto(dst, image)
        del dst
        with self._mutex:
            row = self._slot_rows[slot]
            row[_S_NBYTES] = image.nbytes
            row[_S_STATE] = WRITTEN
        self._pending.append(
            FrameRef(
                stream_id=self.stream_id,
                slot=slot,
                generation=self._generation,
                index=frame.index,
                pts=frame.pts,
                capture_time=frame.capture_time,
                decode_ms=frame.decode_ms,
                shape=(int(image.shape[0]), int(image.shape[1]), int(image.shape[2])),
                seq=seq,
            )
        )
        if self.policy == "live":
            self._flush()
        else:
            self._flush_blocking(deadline=None)
        self._retire_generations()
        return True

    def pump(self) -> None:
        """Announce refs that found no room earlier and free unused old generations; a live ingest
        loop calls it while its source is idle (``send`` does it on every frame)."""
        self._check_open()
        self._flush()
        self._retire_generations()

    def end(self) -> None:
        """Finish the stream: announce what is pending, give the consumer up to ``drain_timeout_s``
        to take what is written, count the rest as dropped (``closed``), put the ``EndOfStream``."""
        if self._closed:
            raise TransportError(f"producer of stream {self.stream_id!r} is closed")
        if self._ended:
            return
        self._ended = True
        deadline = time.monotonic() + self._drain_timeout_s
        self._flush_blocking(deadline=deadline)
        backoff = _Backoff(max_s=2e-3)
        while self._has_written() and not self._expired(deadline):
            backoff.wait()
        with self._mutex:
            rows = self._slot_rows
            left = 0
            for slot in range(self.slots):
                if rows[slot, _S_STATE] == WRITTEN:
                    rows[slot, _S_STATE] = FREE
                    left += 1
            self._header[_H_DROP_CLOSED] += left
        if left:
            log.warning("stream %r: %d frame(s) not taken by the consumer before the end", self.stream_id, left)
        self._pending.clear()
        marker = EndOfStream(stream_id=self.stream_id, last_seq=self._seq, counters=self.counters)
        if not self._put_blocking(marker, deadline=max(deadline, time.monotonic() + 1.0)):
            log.warning("stream %r: frame queue full, end-of-stream marker not delivered", self.stream_id)

    def close(self) -> None:
        """``end()`` if not done, then unlink this stream's segments. Idempotent."""
        if self._closed:
            return
        try:
            if not self._ended:
                self.end()
        finally:
            self._header[_H_CLOSED] = 1
            self._final = _counters(self._header)
            self._closed = True
            self._unlink_all()

    def __enter__(self) -> "FrameProducer":
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None and not self._ended:
            self._drain_timeout_s = 0.0  # failing: do not wait on the consumer
        self.close()

    # ------------------------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(f"producer of stream {self.stream_id!r} is closed")
        if self._ended:
            raise TransportError(f"stream {self.stream_id!r} has ended: no more frames can be sent")

    def _stopped(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _expired(self, deadline: float | None) -> bool:
        return self._stopped() or (deadline is not None and time.monotonic() >= deadline)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _claim_free(self, rows: np.ndarray, seq: int) -> int | None:
        for slot in range(self.slots):
            if rows[slot, _S_STATE] == FREE:
                self._stamp(rows, slot, seq)
                return slot
        return None

    def _stamp(self, rows: np.ndarray, slot: int, seq: int) -> None:
        rows[slot, _S_STATE] = WRITING
        rows[slot, _S_SEQ] = seq
        rows[slot, _S_GEN] = self._generation
        rows[slot, _S_NBYTES] = 0

    def _take_slot_live(self) -> int | None:
        header, rows = self._header, self._slot_rows
        seq = self._next_seq()
        header[_H_WRITTEN] += 1
        dropped_seq = None
        with self._mutex:
            slot = self._claim_free(rows, seq)
            if slot is None:
                written = [s for s in range(self.slots) if rows[s, _S_STATE] == WRITTEN]
                if written:
                    slot = min(written, key=lambda s: rows[s, _S_SEQ])
                    dropped_seq = int(rows[slot, _S_SEQ])
                    self._stamp(rows, slot, seq)
                    header[_H_DROP_OVERWRITTEN] += 1
                else:
                    header[_H_DROP_IN_USE] += 1
        if dropped_seq is not None:
            self._forget_pending(dropped_seq)
        return slot

    def _take_slot_file(self) -> int | None:
        backoff = _Backoff()
        while True:
            with self._mutex:
                slot = self._claim_free(self._slot_rows, self._seq + 1)
            if slot is not None:
                self._next_seq()
                self._header[_H_WRITTEN] += 1
                return slot
            if self._stopped():
                return None
            self._flush()  # refs refused by a full queue must go out, or no slot would ever free
            self._retire_generations()
            backoff.wait()

    def _forget_pending(self, seq: int) -> None:
        for ref in self._pending:
            if ref.seq == seq:
                self._pending.remove(ref)
                return

    def _flush(self) -> bool:
        """Announce pending refs in order while this stream has room on the queue; True when none is left."""
        header, pending = self._header, self._pending
        while pending:
            if header[_H_ANNOUNCED] - header[_H_RECEIVED] >= self._cap:
                return False
            try:
                self._queue.put_nowait(pending[0])
            except queue_mod.Full:
                return False
            pending.popleft()
            header[_H_ANNOUNCED] += 1
        return True

    def _flush_blocking(self, deadline: float | None) -> bool:
        backoff = _Backoff()
        while not self._flush():
            if self._expired(deadline):
                return False
            backoff.wait()
        return True

    def _put_blocking(self, item: object, deadline: float) -> bool:
        while True:
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue_mod.Full:
                if time.monotonic() >= deadline:
                    return False

    def _has_written(self) -> bool:
        with self._mutex:
            return bool((self._slot_rows[:, _S_STATE] == WRITTEN).any())

    def _new_generation(self, image: np.ndarray) -> None:
        nbytes = image.nbytes
        if nbytes > self._limit:
            raise FrameTooLargeError(
                f"stream {self.stream_id!r}: frame {image.shape[1]}x{image.shape[0]} ({nbytes} bytes) is larger "
                f"than limit_frame_bytes={self._limit}"
            )
        generation = self._generation + 1
        slot_bytes = _round_up(nbytes, _SLOT_ALIGN)
        shm = self._create(data_name(self.run_id, self.stream_id, generation), self.slots * slot_bytes)
        self._segments[generation] = shm
        with self._mutex:
            self._header[_H_SLOT_BYTES] = slot_bytes
            self._header[_H_GENERATION] = generation
        log.info("stream %r: frame %dx%d needs %d bytes, slots grown to generation %d",
                 self.stream_id, image.shape[1], image.shape[0], nbytes, generation)
        self._generation = generation
        self._slot_bytes = slot_bytes

    def _retire_generations(self) -> None:
        if len(self._segments) == 1:
            return
        with self._mutex:
            rows = self._slot_rows
            in_use = {int(rows[s, _S_GEN]) for s in range(self.slots) if rows[s, _S_STATE] != FREE}
        for generation in [g for g in self._segments if g != self._generation and g not in in_use]:
            shm = self._segments.pop(generation)
            shm.close()
            try:
                shm.unlink()
            except FileNotFoundError:  # swept by the supervisor already
                pass

    def _unlink_all(self) -> None:
        segments, self._segments = self._segments, {}
        for shm in segments.values():
            shm.close()
            try:
                shm.unlink()
            except FileNotFoundError:
                pass
        ctl = getattr(self, "_ctl", None)
        if ctl is not None:
            self._header = self._slot_rows = None  # type: ignore[assignment]
            ctl.close()
            try:
                ctl.unlink()
            except FileNotFoundError:
                pass


# ------------------------------------------------------------------------------------------ consumer


class _ProcessWatch:
    """Whether a process (not necessarily our child) is still running: a pidfd becomes readable
    when it exits, zombie or not, and cannot be fooled by pid reuse once opened."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = None
        self._gone = False
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._gone = True
        except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): signal 0 + /proc
            self._fd = None

    def alive(self) -> bool:
        if self._gone:
            return False
        if self._fd is not None:
            poller = select.poll()
            poller.register(self._fd, select.POLLIN)
            self._gone = bool(poller.poll(0))
            return not self._gone
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            self._gone = True
            return False
        except PermissionError:
            return True
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as fh:
                self._gone = fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            pass
        return not self._gone

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _StreamView:
    """The consumer's mapping of one producer instance's ring."""

    def __init__(self, run_id: str, stream_id: str) -> None:
        self.stream_id = stream_id
        self.run_id = run_id
        ctl = SharedMemory(name=control_name(run_id, stream_id))
        try:
            probe = np.ndarray((_HEADER_WORDS,), np.int64, buffer=ctl.buf) if ctl.size >= _HEADER_WORDS * 8 else None
            ok = probe is not None and probe[_H_MAGIC] == _MAGIC
            nslots = int(probe[_H_NSLOTS]) if ok else 0
            del probe
            if not ok or ctl.size < (_HEADER_WORDS + nslots * _SLOT_WORDS) * 8:
                raise TransportError(f"shared-memory segment {ctl.name!r} is not an initialised vidrec ring")
        except BaseException:
            ctl.close()
            raise
        self.ctl = ctl
        self.nslots = nslots
        self.header, self.rows = _control_words(ctl, nslots)
        self.mutex = _RingMutex(ctl)
        # A slot IN_USE now was claimed by an earlier consumer of this ring that died holding it (one consumer
        # at a time, and this one holds nothing here yet): free it, or a live ring would lose the slot for good.
        # (A ring whose producer waits on those slots sends no ref to attach by: free_dead_consumer_slots.)
        with self.mutex:
            stale = _free_claims(self.rows)
        if stale:
            log.warning("stream %r: %d slot(s) held by a consumer that is gone were freed", stream_id, stale)
        self.instance = int(self.header[_H_INSTANCE])
        self.pid = int(self.header[_H_PID])
        self.watch = _ProcessWatch(self.pid)
        self.segments: dict[int, SharedMemory] = {}
        self.leases: Counter[int] = Counter()  # generation -> frames leased from it
        self.detached = False

    def producer_died(self) -> bool:
        return not self.header[_H_CLOSED] and not self.watch.alive()

    def segment(self, generation: int) -> tuple[SharedMemory, int]:
        shm = self.segments.get(generation)
        if shm is None:
            shm = SharedMemory(name=data_name(self.run_id, self.stream_id, generation))
            self.segments[generation] = shm
        return shm, shm.size // self.nslots

    def drop_unused_segments(self) -> None:
        newest = max(self.segments, default=-1)
        for generation in [g for g in self.segments if (g < newest or self.detached) and not self.leases[g]]:
            self.segments.pop(generation).close()

    def close(self) -> bool:
        """Unmap everything; False (mapping left to the garbage collector) while views are alive."""
        ok = True
        for shm in list(self.segments.values()):
            try:
                shm.close()
            except BufferError:
                ok = False
        self.segments.clear()
        self.watch.close()
        self.header = self.rows = None  # type: ignore[assignment]
        try:
            self.ctl.close()
        except BufferError:
            ok = False
        return ok


class FrameLease:
    """A claimed slot: ``image_bgr`` is a read-only view of the slot, valid until ``release()``.

    Use ``frame()`` for a ``Frame`` (a copy by default, so the slot can be released at once).
    Release every lease: a held slot cannot take new frames (live drops them as ``ring_in_use``).
    """

    __slots__ = ("ref", "_image", "_consumer", "_view")

    def __init__(self, ref: FrameRef, image: np.ndarray, consumer: "FrameConsumer", view: _StreamView) -> None:
        self.ref = ref
        self._image: np.ndarray | None = image
        self._consumer = consumer
        self._view = view

    @property
    def image_bgr(self) -> np.ndarray:
        if self._image is None:
            raise TransportError(f"frame {self.ref.index} of stream {self.ref.stream_id!r} was released")
        return self._image

    @property
    def released(self) -> bool:
        return self._image is None

    def frame(self, *, copy: bool = True) -> Frame:
        image = self.image_bgr
        ref = self.ref
        return Frame(
            stream_id=ref.stream_id,
            index=ref.index,
            pts=ref.pts,
            capture_time=ref.capture_time,
            image_bgr=image.copy() if copy else image,
            decode_ms=ref.decode_ms,
        )

    def release(self) -> None:
        """Give the slot back to the producer. Idempotent."""
        if self._image is None:
            return
        self._image = None
        self._consumer._release(self.ref, self._view)

    def __enter__(self) -> "FrameLease":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class FrameConsumer:
    """Receives the frames of every stream announced on ``frames_queue`` (one consumer per queue).

    ``receive`` returns a ``FrameLease``, an ``EndOfStream``, or None when ``timeout_s`` passed;
    it raises ``ProducerDiedError`` when a stream's producer process died without closing (checked
    every ``poll_s`` while receiving), after which that stream is forgotten and the others go on.
    """

    def __init__(self, frames_queue: Any, *, run_id: str, poll_s: float = 0.25) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        self.run_id = _check_run_id(run_id)
        self._queue = frames_queue
        self._poll_s = poll_s
        self._streams: dict[str, _StreamView] = {}
        self._retired: list[_StreamView] = []  # detached, waiting for their leases
        self._gone: dict[str, set[int]] = {}  # instances ended or dead, per stream
        self._final: dict[str, StreamCounters] = {}
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._closed = False

    def __reduce__(self) -> Any:
        raise TypeError("FrameConsumer cannot be pickled: create it inside the inference process")

    def receive(self, timeout_s: float | None = None) -> FrameLease | EndOfStream | None:
        if self._closed:
            raise TransportError("frame consumer is closed")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + self._poll_s
                self._check_producers()
            wait = self._poll_s if deadline is None else min(self._poll_s, deadline - now)
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue_mod.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            if isinstance(item, FrameRef):
                lease = self._claim(item)
                if lease is not None:
                    return lease
            elif isinstance(item, EndOfStream):
                return self._on_end(item)
            else:
                raise TransportError(f"unexpected {type(item).__name__} on the frame queue (expected FrameRef or EndOfStream)")

    def receive_frame(self, timeout_s: float | None = None) -> Frame | EndOfStream | None:
        """``receive`` that copies the frame out and releases its slot at once."""
        item = self.receive(timeout_s)
        if isinstance(item, FrameLease):
            with item:
                return item.frame()
        return item

    def counters(self, stream_id: str) -> StreamCounters:
        """Live counters of a stream being received, or the final ones after its ``EndOfStream``."""
        view = self._streams.get(stream_id)
        if view is not None:
            return _counters(view.header)
        if stream_id in self._final:
            return self._final[stream_id]
        raise KeyError(f"no frames received from stream {stream_id!r}")

    def close(self) -> None:
        """Unmap every ring (the producers unlink them). Leases still held keep theirs alive."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            views = list(self._streams.values()) + self._retired
            self._streams.clear()
            self._retired = []
        for view in views:
            if not view.close():
                log.warning("stream %r: frames still leased at close; their mapping is left to the garbage collector",
                            view.stream_id)

    def __enter__(self) -> "FrameConsumer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------ internals

    def _view_for(self, stream_id: str, instance: int) -> _StreamView | None:
        view = self._streams.get(stream_id)
        if view is not None and view.instance == instance:
            return view
        if instance in self._gone.get(stream_id, ()):
            log.debug("stream %r: ref left on the queue by an ended or dead producer, skipped", stream_id)
            return None
        try:
            fresh = _StreamView(self.run_id, stream_id)
        except FileNotFoundError:
            log.warning("stream %r: no ring %r (producer already gone, or another run id)",
                        stream_id, control_name(self.run_id, stream_id))
            self._gone.setdefault(stream_id, set()).add(instance)
            return None
        if fresh.instance != instance:
            fresh.close()
            self._gone.setdefault(stream_id, set()).add(instance)
            return None
        if view is not None:
            self._detach(view)
        self._streams[stream_id] = fresh
        return fresh

    def _claim(self, ref: FrameRef) -> FrameLease | None:
        view = self._view_for(ref.stream_id, ref.seq >> _INSTANCE_SHIFT)
        if view is None:
            return None
        view.header[_H_RECEIVED] += 1
        if not 0 <= ref.slot < view.nslots:
            raise TransportError(f"stream {ref.stream_id!r}: ref names slot {ref.slot} of a {view.nslots}-slot ring")
        with view.mutex:
            row = view.rows[ref.slot]
            if row[_S_STATE] != WRITTEN or row[_S_SEQ] != ref.seq or row[_S_GEN] != ref.generation:
                return None  # dropped (overwritten) after it was announced
            row[_S_STATE] = IN_USE
            nbytes = int(row[_S_NBYTES])
            view.header[_H_TAKEN] += 1
        try:
            shm, slot_bytes = view.segment(ref.generation)
            if nbytes != ref.shape[0] * ref.shape[1] * ref.shape[2] or nbytes > slot_bytes:
                raise TransportError(
                    f"stream {ref.stream_id!r}: frame {ref.index} shape {ref.shape} does not match its slot "
                    f"({nbytes} bytes written, slots of {slot_bytes})"
                )
            image = np.ndarray(ref.shape, np.uint8, buffer=shm.buf, offset=ref.slot * slot_bytes)
        except BaseException as exc:
            with view.mutex:
                view.rows[ref.slot, _S_STATE] = FREE
            if isinstance(exc, FileNotFoundError):
                raise TransportError(
                    f"stream {ref.stream_id!r}: data segment {data_name(self.run_id, ref.stream_id, ref.generation)!r} "
                    "is gone while a slot of it was claimed"
                ) from exc
            raise
        image.flags.writeable = False
        with self._lock:
            view.leases[ref.generation] += 1
            view.drop_unused_segments()
        return FrameLease(ref, image, self, view)

    def _release(self, ref: FrameRef, view: _StreamView) -> None:
        with self._lock:
            if view.header is None:
                return  # consumer already closed
            with view.mutex:
                row = view.rows[ref.slot]
                if row[_S_STATE] == IN_USE and row[_S_SEQ] == ref.seq:
                    row[_S_STATE] = FREE
            view.leases[ref.generation] -= 1
            view.drop_unused_segments()
            if view.detached and not +view.leases:
                self._retired.remove(view)
                view.close()

    def _detach(self, view: _StreamView) -> None:
        with self._lock:
            if self._streams.get(view.stream_id) is view:
                del self._streams[view.stream_id]
            self._gone.setdefault(view.stream_id, set()).add(view.instance)
            view.detached = True
            if +view.leases:
                self._retired.append(view)
            else:
                view.close()

    def _on_end(self, marker: EndOfStream) -> EndOfStream:
        instance = marker.last_seq >> _INSTANCE_SHIFT
        view = self._streams.get(marker.stream_id)
        taken = 0
        if view is not None and view.instance == instance:
            taken = int(view.header[_H_TAKEN])
            self._detach(view)
        else:
            self._gone.setdefault(marker.stream_id, set()).add(instance)
        counters = replace(marker.counters, taken=taken)
        self._final[marker.stream_id] = counters
        return replace(marker, counters=counters)

    def _check_producers(self) -> None:
        for view in list(self._streams.values()):
            if view.producer_died():
                self._final[view.stream_id] = _counters(view.header)
                self._detach(view)
                raise ProducerDiedError(
                    f"stream {view.stream_id!r}: producer process {view.pid} died without closing its ring "
                    f"(run {self.run_id!r}); its segments stay in shared memory until the supervisor calls "
                    f"unlink_stream_segments({self.run_id!r}, {view.stream_id!r})",
                    stream_id=view.stream_id,
                    pid=view.pid,
                )
