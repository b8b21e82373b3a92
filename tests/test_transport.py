"""Shared-memory frame transport between real processes ('spawn'), on real footage.

Producers run in child processes decoding samples/bikes.mp4; the consumer runs in the test process
and checks every frame it gets against a direct decode of the same index (no torn frames), the
order per stream, the counters, and that nothing of the run is left in /dev/shm.
"""
from __future__ import annotations

import hashlib
import itertools
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.frames import Frame
from stream.sources import open_source
from stream.transport import (
    SHM_DIR,
    EndOfStream,
    FrameConsumer,
    FrameLease,
    FrameProducer,
    FrameTooLargeError,
    ProducerDiedError,
    TransportError,
    free_dead_consumer_slots,
    free_dead_reader,
    list_run_segments,
    make_frame_queue,
    new_run_id,
    run_prefix,
    unlink_stream_segments,
)
from tests.polling import wait_for

FRAMES = 200
SPAWN = mp.get_context("spawn")


def digest(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()


def shm_entries(run_id: str) -> list[str]:
    """What /dev/shm holds for this run, listed directly."""
    return sorted(name for name in os.listdir(SHM_DIR) if name.startswith(run_prefix(run_id)))


@pytest.fixture(scope="module")
def bikes_digests(bikes_mp4: Path) -> list[str]:
    """Digests of the first frames of bikes.mp4, decoded directly in this process."""
    with open_source(bikes_mp4) as source:
        return [digest(frame.image_bgr) for frame in itertools.islice(source, 250)]


# ------------------------------------------------------------------------- child process entry points


def produce(frames_queue, run_id: str, path: str, stream_id: str, count: int, policy: str, slots: int) -> None:
    """Decode ``count`` frames of ``path`` and send them; ``close`` ends the stream and unlinks."""
    with open_source(path, stream_id=stream_id) as source, FrameProducer(
        frames_queue, run_id=run_id, stream_id=stream_id, policy=policy, slots=slots, max_frame_bytes=640 * 272 * 3
    ) as producer:
        for frame in itertools.islice(source, count):
            producer.send(frame)


def start_producer(frames_queue, run_id: str, bikes: Path, stream_id: str, count: int, policy: str, slots: int):
    proc = SPAWN.Process(
        target=produce, args=(frames_queue, run_id, str(bikes), stream_id, count, policy, slots), daemon=True
    )
    proc.start()
    return proc


def stop(proc) -> None:
    proc.join(30)
    if proc.is_alive():  # pragma: no cover - only on a hang
        proc.kill()
        proc.join(5)


# ---------------------------------------------------------------------------------------------- file


@pytest.mark.timeout(120)
def test_file_mode_delivers_every_frame_in_order_pixel_identical(bikes_mp4: Path, bikes_digests: list[str]) -> None:
    run_id = new_run_id()
    streams = ("bikes-a", "bikes-b")
    frames_queue = make_frame_queue(SPAWN, streams=len(streams), slots=3)
    procs = [start_producer(frames_queue, run_id, bikes_mp4, sid, FRAMES, "file", 3) for sid in streams]
    consumer = FrameConsumer(frames_queue, run_id=run_id, poll_s=0.1)
    received: dict[str, list[int]] = {sid: [] for sid in streams}
    ends: dict[str, EndOfStream] = {}
    started = time.perf_counter()
    try:
        while len(ends) < len(streams):
            item = consumer.receive(timeout_s=60)
            assert item is not None, "no frame for 60 s"
            if isinstance(item, EndOfStream):
                ends[item.stream_id] = item
                continue
            with item:
                ref = item.ref
                assert digest(item.image_bgr) == bikes_digests[ref.index], f"{ref.stream_id} frame {ref.index} differs"
                assert ref.shape == (272, 640, 3) and ref.pts == pytest.approx(ref.index / 25)
                received[ref.stream_id].append(ref.index)
    finally:
        consumer.close()
        for proc in procs:
            stop(proc)
    elapsed = time.perf_counter() - started
    print(f"\nfile mode: {2 * FRAMES} frames of 2 streams in {elapsed:.2f}s ({2 * FRAMES / elapsed:.0f} frames/s, decode-bound)")
    for sid in streams:
        assert received[sid] == list(range(FRAMES)), sid
        counters = ends[sid].counters
        assert (counters.written, counters.taken, counters.dropped_total) == (FRAMES, FRAMES, 0), counters
    assert [proc.exitcode for proc in procs] == [0, 0]
    assert shm_entries(run_id) == []


# ---------------------------------------------------------------------------------------------- live


@pytest.mark.timeout(120)
def test_live_mode_slow_consumer_drops_oldest_and_never_sees_a_torn_frame(
    bikes_mp4: Path, bikes_digests: list[str]
) -> None:
    """The consumer holds each frame until the producer has written ``slots + 2`` more: every hold
    forces drops while the producer keeps overwriting the other slots at full speed."""
    slots = 4
    run_id = new_run_id()
    frames_queue = make_frame_queue(SPAWN, streams=1, slots=slots)
    proc = start_producer(frames_queue, run_id, bikes_mp4, "cam", FRAMES, "live", slots)
    consumer = FrameConsumer(frames_queue, run_id=run_id, poll_s=0.1)
    received: list[int] = []
    end: EndOfStream | None = None
    try:
        while end is None:
            item = consumer.receive(timeout_s=60)
            assert item is not None, "no frame for 60 s"
            if isinstance(item, EndOfStream):
                end = item
                break
            with item:
                index = item.ref.index
                assert digest(item.image_bgr) == bikes_digests[index], f"frame {index} torn or wrong on arrival"
                target = min(consumer.counters("cam").written + slots + 2, FRAMES)
                wait_for(lambda: consumer.counters("cam").written >= target, 60, f"{target} frames written", every_s=0.0005)
                assert digest(item.image_bgr) == bikes_digests[index], f"frame {index} overwritten while held"
                received.append(index)
    finally:
        consumer.close()
        stop(proc)
    counters = end.counters
    print(f"\nlive mode: received {len(received)} of {FRAMES}, counters {counters}")
    assert proc.exitcode == 0
    assert received == sorted(set(received)) and len(received) >= 2
    assert counters.written == FRAMES
    assert counters.taken == len(received)
    assert counters.dropped["overwritten"] > 0
    assert counters.written == counters.taken + counters.dropped_total
    assert shm_entries(run_id) == []


# ------------------------------------------------------------------------------------------ resizing


def bikes_frames(path: Path, count: int) -> list[Frame]:
    with open_source(path) as source:
        return list(itertools.islice(source, count))


def resized(frame: Frame, index: int, width: int, height: int) -> Frame:
    image = cv2.resize(frame.image_bgr, (width, height), interpolation=cv2.INTER_AREA)
    return Frame(stream_id="cam", index=index, pts=index / 25, capture_time=frame.capture_time, image_bgr=image)


@pytest.mark.parametrize("policy", ["file", "live"])
def test_resolution_change_mid_stream(bikes_mp4: Path, policy: str) -> None:
    """Smaller, same, larger (a new generation of bigger slots), then smaller again: every frame
    arrives intact; the old generation lives while one of its frames is held, then goes."""
    sizes = [(320, 136)] * 3 + [(640, 272)] * 3 + [(1280, 544)] * 3 + [(160, 68)] * 3
    sources = bikes_frames(bikes_mp4, len(sizes))
    frames = [resized(src, i, w, h) for i, (src, (w, h)) in enumerate(zip(sources, sizes))]
    run_id = new_run_id()
    frames_queue = make_frame_queue(SPAWN, streams=1, slots=3)
    producer = FrameProducer(frames_queue, run_id=run_id, stream_id="cam", policy=policy, slots=3,
                             max_frame_bytes=640 * 272 * 3)
    consumer = FrameConsumer(frames_queue, run_id=run_id)
    held: FrameLease | None = None
    try:
        for frame in frames:
            assert producer.send(frame)
            item = consumer.receive(timeout_s=10)
            assert isinstance(item, FrameLease)
            assert item.ref.index == frame.index and item.ref.shape == frame.image_bgr.shape
            assert np.array_equal(item.image_bgr, frame.image_bgr)
            if frame.index == 5:
                held = item  # the last frame of generation 0, kept across the switch
                continue
            item.release()
            if frame.index == 6:
                assert producer.generation == 1
                assert any(name.endswith("_d0") for name in shm_entries(run_id)), "generation 0 freed while held"
        assert np.array_equal(held.image_bgr, frames[5].image_bgr)
        held.release()
        producer.pump()
        assert [name.rsplit("_", 1)[1] for name in shm_entries(run_id)] == ["ctl", "d1"]
        producer.end()
        end = consumer.receive(timeout_s=10)
        assert isinstance(end, EndOfStream)
        assert (end.counters.written, end.counters.taken, end.counters.dropped_total) == (len(frames), len(frames), 0)
    finally:
        producer.close()
        consumer.close()
    assert shm_entries(run_id) == []


# ------------------------------------------------------------------------------------- producer died


@pytest.mark.timeout(60)
def test_consumer_gets_a_clear_error_when_the_producer_is_killed(bikes_mp4: Path, bikes_digests: list[str]) -> None:
    """SIGKILL leaves the segments behind: the consumer's receive raises ProducerDiedError (not a
    hang) and the supervisor's unlink_stream_segments removes what the dead producer created."""
    run_id = new_run_id()
    frames_queue = make_frame_queue(SPAWN, streams=1, slots=4)
    proc = start_producer(frames_queue, run_id, bikes_mp4, "cam", 250, "file", 4)
    consumer = FrameConsumer(frames_queue, run_id=run_id, poll_s=0.1)
    try:
        first = consumer.receive(timeout_s=60)
        assert isinstance(first, FrameLease) and first.ref.index == 0
        first.release()
        # File mode: the producer fills the ring again and blocks, waiting for a free slot.
        wait_for(lambda: consumer.counters("cam").written >= 5, 60, "the ring to fill", every_s=0.0005)
        os.kill(proc.pid, signal.SIGKILL)  # not reaped until the error: a zombie must read as dead too
        killed = time.perf_counter()
        delivered = 0
        with pytest.raises(ProducerDiedError) as exc:
            while True:
                item = consumer.receive()  # no timeout: only the error can end this (or the test timeout)
                if isinstance(item, FrameLease):
                    with item:  # frames written before the kill are still whole
                        assert digest(item.image_bgr) == bikes_digests[item.ref.index]
                    delivered += 1
        print(f"\nproducer death noticed after {1000 * (time.perf_counter() - killed):.0f} ms "
              f"({delivered} frames delivered after the kill)")
        message = str(exc.value)
        assert exc.value.stream_id == "cam" and exc.value.pid == proc.pid
        assert "'cam'" in message and "unlink_stream_segments" in message and "\n" not in message
    finally:
        consumer.close()
        stop(proc)
    assert proc.exitcode == -signal.SIGKILL
    left = shm_entries(run_id)
    assert left, "the dead producer's segments should still be there"
    assert sorted(unlink_stream_segments(run_id, "cam")) == left
    assert shm_entries(run_id) == [] and list_run_segments(run_id) == []
    assert unlink_stream_segments(run_id, "cam") == []


def produce_and_crash(frames_queue, run_id: str, path: str, stream_id: str, count: int) -> None:
    """Send ``count`` frames live, then die without ``end()`` or ``close()``."""
    producer = FrameProducer(frames_queue, run_id=run_id, stream_id=stream_id, policy="live", slots=4,
                             max_frame_bytes=640 * 272 * 3)
    with open_source(path, stream_id=stream_id) as source:
        for frame in itertools.islice(source, count):
            producer.send(frame)
    frames_queue.close()
    frames_queue.join_thread()  # every ref announced is in the pipe
    os._exit(0)


@pytest.mark.timeout(60)
def test_restarted_producer_never_gets_refs_left_by_the_dead_one(bikes_mp4: Path) -> None:
    """A producer dies with refs still on the queue; the supervisor unlinks its segments and starts
    a new one under the same names. The consumer skips the dead one's refs (their seq carries the
    producer instance) and receives exactly the new frames."""
    run_id = new_run_id()
    frames_queue = make_frame_queue(SPAWN, streams=1, slots=4)
    proc = SPAWN.Process(target=produce_and_crash, args=(frames_queue, run_id, str(bikes_mp4), "cam", 20), daemon=True)
    proc.start()
    stop(proc)
    assert proc.exitcode == 0
    assert [name.rsplit("_", 1)[1] for name in shm_entries(run_id)] == ["ctl", "d0"]
    assert len(unlink_stream_segments(run_id, "cam")) == 2
    with FrameProducer(frames_queue, run_id=run_id, stream_id="cam", policy="file", slots=4) as restarted, \
            FrameConsumer(frames_queue, run_id=run_id) as consumer:
        got = []
        for index in (1000, 1001):  # one at a time: the dead producer's refs fill the queue but one place
            image = np.full((48, 64, 3), index % 256, np.uint8)
            assert restarted.send(Frame(stream_id="cam", index=index, pts=None, capture_time=0.0, image_bgr=image))
            got.append(consumer.receive_frame(timeout_s=10))
        assert [(f.index, f.image_bgr.shape, int(f.image_bgr[0, 0, 0])) for f in got] == [
            (1000, (48, 64, 3), 1000 % 256), (1001, (48, 64, 3), 1001 % 256)]
        restarted.end()
        end = consumer.receive(timeout_s=10)
        assert isinstance(end, EndOfStream)
        assert (end.counters.written, end.counters.taken, end.counters.dropped_total) == (2, 2, 0)
    assert shm_entries(run_id) == []


def hold_and_wait(frames_queue, run_id: str, count: int, holding) -> None:
    """A consumer that claims ``count`` frames, keeps them all and waits to be killed."""
    consumer = FrameConsumer(frames_queue, run_id=run_id)
    held = [consumer.receive(timeout_s=60) for _ in range(count)]
    assert all(isinstance(lease, FrameLease) for lease in held)
    holding.set()
    signal.pause()  # until the test's SIGKILL


@pytest.mark.timeout(120)
def test_a_file_stream_goes_on_after_its_consumer_died_holding_every_slot(bikes_mp4: Path) -> None:
    """Pins a stall seen when an inference worker was killed: its batch held every slot of a file ring, so the
    producer waited for a free slot and announced nothing, and the next consumer never heard of the ring. The
    supervisor frees the dead consumer's slots; the stream then goes on, missing only the frames it held."""
    run_id = new_run_id()
    frames_queue = make_frame_queue(SPAWN, streams=1, slots=2)
    producer = start_producer(frames_queue, run_id, bikes_mp4, "cam", 20, "file", 2)
    holding = SPAWN.Event()
    dead = SPAWN.Process(target=hold_and_wait, args=(frames_queue, run_id, 2, holding), daemon=True)
    dead.start()
    try:
        assert holding.wait(60), "the first consumer never held both slots"
        os.kill(dead.pid, signal.SIGKILL)
        dead.join(10)
        free_dead_reader(frames_queue)
        with FrameConsumer(frames_queue, run_id=run_id, poll_s=0.1) as consumer:
            assert consumer.receive(timeout_s=1.0) is None, "nothing can come while the dead consumer's claims stand"
            assert free_dead_consumer_slots(run_id, "cam") == 2
            assert free_dead_consumer_slots(run_id, "cam") == 0
            got = []
            while not isinstance(item := consumer.receive(timeout_s=30), EndOfStream):
                assert isinstance(item, FrameLease), "the stream stalled again"
                with item:
                    got.append(item.ref.index)
        assert got == list(range(2, 20))
        assert (item.counters.written, item.counters.taken, item.counters.dropped_total) == (20, 20, 0)
    finally:
        dead.kill()
        stop(producer)
    assert producer.exitcode == 0
    assert shm_entries(run_id) == []
    assert free_dead_consumer_slots(run_id, "cam") == 0  # ring gone


def test_live_frame_dropped_when_the_consumer_holds_every_slot() -> None:
    run_id = new_run_id()
    frames_queue = make_frame_queue(SPAWN, streams=1, slots=2)

    def frame(index: int) -> Frame:
        return Frame(stream_id="cam", index=index, pts=None, capture_time=0.0,
                     image_bgr=np.full((16, 16, 3), index, np.uint8))

    with FrameProducer(frames_queue, run_id=run_id, stream_id="cam", policy="live", slots=2) as producer, \
            FrameConsumer(frames_queue, run_id=run_id) as consumer:
        assert producer.send(frame(0)) and producer.send(frame(1))
        held = [consumer.receive(timeout_s=10) for _ in range(2)]
        assert [lease.ref.index for lease in held] == [0, 1]
        assert not producer.send(frame(2))  # both slots lent out: the new frame is the one dropped
        assert [int(lease.image_bgr[0, 0, 0]) for lease in held] == [0, 1]
        for lease in held:
            lease.release()
        assert producer.send(frame(3))
        assert consumer.receive_frame(timeout_s=10).index == 3
        producer.end()
        end = consumer.receive(timeout_s=10)
    assert end.counters == consumer.counters("cam")
    assert (end.counters.written, end.counters.taken, dict(end.counters.dropped)) == (
        4, 3, {"overwritten": 0, "ring_in_use": 1, "closed": 0})
    assert shm_entries(run_id) == []


# -------------------------------------------------------------------------------------- user errors


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(run_id="run_1", stream_id="cam", policy="live"), ValueError, "run_id"),  # '_' separates names
        (dict(run_id="", stream_id="cam", policy="live"), ValueError, "run_id"),  # empty run id
        (dict(run_id="r1", stream_id="", policy="live"), ValueError, "stream_id"),  # empty stream id
        (dict(run_id="r1", stream_id="cam", policy="rtsp"), ValueError, "policy"),  # unknown policy
        (dict(run_id="r1", stream_id="cam", policy="file", slots=0), ValueError, "slots"),  # no slot
        (dict(run_id="r1", stream_id="cam", policy="file", max_frame_bytes=100, limit_frame_bytes=10),
         ValueError, "max_frame_bytes"),  # limit below the first size
    ],
)
def test_bad_producer_arguments(kwargs: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        FrameProducer(make_frame_queue(SPAWN, streams=1, slots=1), **kwargs)


def test_leftover_segment_and_oversized_frame_are_named() -> None:
    run_id = new_run_id()
    frames_queue = make_frame_queue(SPAWN, streams=1, slots=2)
    producer = FrameProducer(frames_queue, run_id=run_id, stream_id="door cam", policy="live", slots=2,
                             max_frame_bytes=64 * 64 * 3, limit_frame_bytes=128 * 128 * 3)
    try:
        with pytest.raises(TransportError, match=r"already exists .*unlink_stream_segments\(.*'door cam'\)"):
            FrameProducer(frames_queue, run_id=run_id, stream_id="door cam", policy="live", slots=2)
        big = Frame(stream_id="door cam", index=0, pts=0.0, capture_time=0.0, image_bgr=np.zeros((200, 200, 3), np.uint8))
        with pytest.raises(FrameTooLargeError, match=r"'door cam'.*200x200"):
            producer.send(big)
        with pytest.raises(ValueError, match="stream 'other'"):
            producer.send(Frame(stream_id="other", index=0, pts=0.0, capture_time=0.0,
                                image_bgr=np.zeros((8, 8, 3), np.uint8)))
    finally:
        producer.close()
    assert shm_entries(run_id) == []
    with pytest.raises(TransportError, match="closed"):
        producer.send(big)
