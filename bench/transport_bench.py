"""Frames between two processes: shared-memory slots (stream/transport.py) against pickling the ndarray
through a multiprocessing.Queue.

Run:  .venv/bin/python bench/transport_bench.py --frames 600 --rate 60 --repeat 3

For each frame size, each way of moving frames is run ``--repeat`` times, interleaved, and the
median is reported:

* throughput — the producer sends as fast as the consumer takes (back-pressure, no drops);
  frames/s between the first and the last frame received;
* latency — the producer sends at ``--rate`` frames/s; per frame, from just before the producer
  hands it over to when the consumer holds an ndarray of it (p50 / p99). Both processes read
  CLOCK_MONOTONIC (time.perf_counter on Linux), so the two ends are comparable.

"shm view" reads the slot in place (the inference path: release after the model ran); "shm copy"
copies it out first; "pickle queue" is mp.Queue(maxsize=4).put(ndarray). Also measured: the cost of
one lock/unlock of the ring mutex (flock) next to a multiprocessing.Lock and a threading.Lock; the
transport takes it four times per frame. Prints Markdown tables.
"""
from __future__ import annotations

import argparse
import fcntl
import multiprocessing as mp
import statistics
import threading
import time
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from stream.frames import Frame
from stream.transport import EndOfStream, FrameConsumer, FrameProducer, make_frame_queue, new_run_id

SPAWN = mp.get_context("spawn")
SIZES = {"720p": (720, 1280), "1080p": (1080, 1920)}
POOL = 4  # distinct frames cycled by the producer (so no cache keeps one hot)


def _pool(shape: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8) for _ in range(POOL)]


def _pace(start: float, i: int, rate: float | None) -> None:
    if rate:
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


# -------------------------------------------------------------------------------- producer processes


def shm_producer(frames_queue, run_id: str, n: int, shape: tuple[int, int], rate: float | None) -> None:
    pool = _pool(shape)
    with FrameProducer(frames_queue, run_id=run_id, stream_id="bench", policy="file", slots=4,
                       max_frame_bytes=shape[0] * shape[1] * 3) as producer:
        start = time.perf_counter()
        for i in range(n):
            _pace(start, i, rate)
            producer.send(Frame(stream_id="bench", index=i, pts=None, capture_time=time.perf_counter(),
                                image_bgr=pool[i % POOL]))


def pickle_producer(frames_queue, n: int, shape: tuple[int, int], rate: float | None) -> None:
    pool = _pool(shape)
    start = time.perf_counter()
    for i in range(n):
        _pace(start, i, rate)
        frames_queue.put((time.perf_counter(), pool[i % POOL]))
    frames_queue.put(None)


# ------------------------------------------------------------------------------------------ consumers


def run_shm(n: int, shape: tuple[int, int], rate: float | None, copy: bool) -> tuple[float, list[float]]:
    run_id = new_run_id()
    frames_queue = make_frame_queue(SPAWN, streams=1, slots=4)
    proc = SPAWN.Process(target=shm_producer, args=(frames_queue, run_id, n, shape, rate))
    proc.start()
    latencies: list[float] = []
    first = last = 0.0
    with FrameConsumer(frames_queue, run_id=run_id) as consumer:
        while True:
            item = consumer.receive(timeout_s=60)
            if item is None:
                raise RuntimeError("no frame for 60 s")
            if isinstance(item, EndOfStream):
                break
            with item:
                image = item.image_bgr.copy() if copy else item.image_bgr
                now = time.perf_counter()
                _ = int(image[-1, -1, 0])  # touch it
                latencies.append(now - item.ref.capture_time)
            first = first or now
            last = now
    proc.join()
    return (n - 1) / (last - first), latencies


def run_pickle(n: int, shape: tuple[int, int], rate: float | None) -> tuple[float, list[float]]:
    frames_queue = SPAWN.Queue(maxsize=4)
    proc = SPAWN.Process(target=pickle_producer, args=(frames_queue, n, shape, rate))
    proc.start()
    latencies: list[float] = []
    first = last = 0.0
    while (item := frames_queue.get(timeout=60)) is not None:
        sent, image = item
        now = time.perf_counter()
        _ = int(image[-1, -1, 0])
        latencies.append(now - sent)
        first = first or now
        last = now
    proc.join()
    return (n - 1) / (last - first), latencies


WAYS = {
    "shm view": lambda n, shape, rate: run_shm(n, shape, rate, copy=False),
    "shm copy": lambda n, shape, rate: run_shm(n, shape, rate, copy=True),
    "pickle queue": run_pickle,
}


# ------------------------------------------------------------------------------------------ lock cost


def lock_costs(rounds: int = 200_000) -> dict[str, float]:
    """Microseconds per uncontended lock + unlock."""
    shm = SharedMemory(create=True, size=4096)
    try:
        fd = shm._fd
        thread_lock = threading.Lock()

        def flock_pair() -> None:
            with thread_lock:  # the transport pairs the flock with a thread lock
                fcntl.flock(fd, fcntl.LOCK_EX)
                fcntl.flock(fd, fcntl.LOCK_UN)

        mp_lock = SPAWN.Lock()
        ways = {
            "flock on the control segment (+ thread lock), as used": flock_pair,
            "multiprocessing.Lock": lambda: (mp_lock.acquire(), mp_lock.release()),
            "threading.Lock (in-process only)": lambda: (thread_lock.acquire(), thread_lock.release()),
        }
        out = {}
        for name, pair in ways.items():
            start = time.perf_counter()
            for _ in range(rounds):
                pair()
            out[name] = (time.perf_counter() - start) / rounds * 1e6
        return out
    finally:
        shm.close()
        shm.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--rate", type=float, default=60.0, help="frames/s for the latency runs")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["720p"], choices=sorted(SIZES))
    args = parser.parse_args()

    print("| frames | transport | throughput (frames/s) | MB/s | latency p50 (ms) | latency p99 (ms) |")
    print("|---|---|---:|---:|---:|---:|")
    for size in args.sizes:
        shape = SIZES[size]
        mb = shape[0] * shape[1] * 3 / 1e6
        fps: dict[str, list[float]] = {way: [] for way in WAYS}
        p50: dict[str, list[float]] = {way: [] for way in WAYS}
        p99: dict[str, list[float]] = {way: [] for way in WAYS}
        for _ in range(args.repeat):
            for way, run in WAYS.items():
                fps[way].append(run(args.frames, shape, None)[0])
                lat = np.asarray(run(args.frames, shape, args.rate)[1][10:]) * 1000  # skip warm-up
                p50[way].append(float(np.percentile(lat, 50)))
                p99[way].append(float(np.percentile(lat, 99)))
        for way in WAYS:
            rate = statistics.median(fps[way])
            print(f"| {size} | {way} | {rate:.0f} | {rate * mb:.0f} | "
                  f"{statistics.median(p50[way]):.2f} | {statistics.median(p99[way]):.2f} |")
    print(f"\n({args.frames} frames a run, median of {args.repeat}; latency at {args.rate:g} frames/s)\n")
    print("| ring mutex | µs per lock + unlock |")
    print("|---|---:|")
    for name, cost in lock_costs().items():
        print(f"| {name} | {cost:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
