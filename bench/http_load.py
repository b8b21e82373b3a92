"""The HTTP API under load: `GET /streams` from 50 concurrent loopback clients while 20 overlay event streams
(`GET /streams/{id}/events`) are open, against a real `vidrec serve` with one camera; and the inference
throughput with and without that load.

Run (services up; a gallery in out/sample_index, see docs/benchmarks.md), e.g. the code before and after a
change, alternating, in one session:

    set -a; . services.env; set +a
    VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/http_load.py --repo before=../base --repo after=. --rounds 2

Each run starts the service from that repository (``python -m workers.cli serve`` with the repository as the
working directory, so its own ``workers`` package answers): one stream of ``$RTSP_BASE/<mount>``, results to
Redis (which the event streams read), ``--http`` on a free loopback port. Once the stream is live and
``--warmup`` seconds have passed:

1. quiet: ``--window`` seconds with nothing but two ``GET /streams`` (the counters at the start and the end);
2. loaded: the ``--viewers`` event streams are opened (each must get its first bytes), then ``--clients``
   clients, each one keep-alive connection, send ``GET /streams`` back to back for ``--window`` seconds (at most
   ``--max-requests`` in all). Requests/s, p50/p99 of the request→whole-answer time, errors, and the events the
   viewers received are counted.

Inference throughput: ``counters.processed`` of the stream over each window (frames/s), with the frames dropped
(``dropped_source`` + ``dropped_ring`` + ``dropped_backlog`` + ``dropped_too_old``): a camera sends at its own
rate, so inference that falls behind shows as fewer processed and more dropped frames. The clients and viewers
are asyncio coroutines in this one process (plain HTTP/1.1 over sockets): the client's own cost is the same for
every repository. Everything is bounded in time and count and talks to 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from service_probe import dropped, free_port, get_json, pct  # bench/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parent.parent


# ---- loopback HTTP/1.1 clients ------------------------------------------------------------------------------
async def read_answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    events: int = 0
    viewers_open: int = 0


async def client(port: int, until: float, budget: list[int], load: Load) -> None:
    request = b"GET /streams HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    reader = writer = None
    while time.monotonic() < until and budget[0] > 0:
        budget[0] -= 1
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
            t0 = time.perf_counter()
            writer.write(request)
            status = await asyncio.wait_for(read_answer(reader), 10)
            load.latencies.append(time.perf_counter() - t0)
            if status != 200:
                load.errors += 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
            load.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def viewer(port: int, stream_id: str, opened: asyncio.Event, stop: asyncio.Event, load: Load) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    try:
        writer.write(f"GET /streams/{stream_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"event stream refused: {head[:200]!r}")
        load.viewers_open += 1
        opened.set()
        while not stop.is_set():
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            except asyncio.TimeoutError:
                continue
            if not chunk:
                break
            load.events += chunk.count(b"event: result")
    finally:
        writer.close()


async def hammer(port: int, stream_id: str, args: argparse.Namespace) -> tuple[Load, float]:
    load = Load()
    stop = asyncio.Event()
    opened = [asyncio.Event() for _ in range(args.viewers)]
    viewers = [asyncio.create_task(viewer(port, stream_id, opened[i], stop, load)) for i in range(args.viewers)]
    await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 60)
    budget = [args.max_requests]
    t0 = time.monotonic()
    until = t0 + args.window
    await asyncio.gather(*(client(port, until, budget, load) for _ in range(args.clients)))
    wall = time.monotonic() - t0
    stop.set()
    await asyncio.gather(*viewers, return_exceptions=True)
    return load, wall


# ---- one service run ----------------------------------------------------------------------------------------
@dataclass
class RunResult:
    label: str
    quiet_fps: float = 0.0
    quiet_dropped: int = 0
    loaded_fps: float = 0.0
    loaded_dropped: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    requests: int = 0
    errors: int = 0
    events: int = 0
    viewers: int = 0


def window_counts(base: str, stream_id: str, seconds: float) -> tuple[float, int]:
    c0 = get_json(f"{base}/streams/{stream_id}")["counters"]
    t0 = time.monotonic()
    time.sleep(seconds)
    c1 = get_json(f"{base}/streams/{stream_id}")["counters"]
    return (c1["processed"] - c0["processed"]) / (time.monotonic() - t0), dropped(c1) - dropped(c0)


def run_once(label: str, repo: Path, args: argparse.Namespace) -> RunResult:
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="vidrec-http-load-"))
    cmd = [sys.executable, "-m", "workers.cli", "serve", "--stream", f"cam={args.rtsp_base}/{args.mount}",
           "--redis", args.redis, "-o", f"Redis.key_prefix=httpload{os.getpid()}", "--http", f"127.0.0.1:{port}",
           "-o", f"IndexProcess.index_dir={args.index_dir}"]
    log_path = tmp / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "VIDREC_API_TOKEN"}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, cwd=repo, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    result = RunResult(label)
    try:
        deadline = time.monotonic() + args.startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vidrec serve exited {proc.returncode} while starting; see {log_path}")
            try:
                view = get_json(f"{base}/streams/cam")
                if view["state"] == "live" and view["counters"]["processed"] > 0:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"stream not live after {args.startup_timeout} s; see {log_path}")
            time.sleep(0.5)
        time.sleep(args.warmup)
        result.quiet_fps, result.quiet_dropped = window_counts(base, "cam", args.window)
        c0 = get_json(f"{base}/streams/cam")["counters"]
        t0 = time.monotonic()
        load, wall = asyncio.run(hammer(port, "cam", args))
        c1 = get_json(f"{base}/streams/cam")["counters"]
        span = time.monotonic() - t0
        result.loaded_fps = (c1["processed"] - c0["processed"]) / span
        result.loaded_dropped = dropped(c1) - dropped(c0)
        result.requests = len(load.latencies)
        result.rps = result.requests / wall
        result.p50_ms = pct(load.latencies, 50) * 1000
        result.p99_ms = pct(load.latencies, 99) * 1000
        result.errors = load.errors
        result.events = load.events
        result.viewers = load.viewers_open
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=args.stop_timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", action="append", default=[], metavar="LABEL=PATH",
                        help="a checkout to serve from (repeat; runs alternate between them); default: this one")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--viewers", type=int, default=20)
    parser.add_argument("--window", type=float, default=20.0, help="seconds of each measured window")
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--mount", default="bikes")
    parser.add_argument("--rtsp-base", default=os.environ.get("RTSP_BASE"))
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--index-dir", type=Path, default=REPO / "out" / "sample_index")
    parser.add_argument("--startup-timeout", type=float, default=240.0)
    parser.add_argument("--stop-timeout", type=float, default=120.0)
    args = parser.parse_args()
    if not args.rtsp_base or not args.redis:
        parser.error("RTSP_BASE and REDIS_URL (or --rtsp-base and --redis) are needed: start the services")
    args.index_dir = args.index_dir.resolve()
    sys.path.insert(0, str(REPO / "bench"))
    from sample_gallery import ensure_gallery

    ensure_gallery(args.index_dir)
    repos = [(label, Path(path).resolve()) for label, _, path in (r.partition("=") for r in args.repo)] or [("this", REPO)]
    results: list[RunResult] = []
    for round_no in range(args.rounds):
        for label, repo in repos:
            print(f"round {round_no + 1}: {label} ({repo})", file=sys.stderr, flush=True)
            results.append(run_once(label, repo, args))
            print(json.dumps(results[-1].__dict__), file=sys.stderr, flush=True)
    print(f"{args.clients} clients GET /streams, {args.viewers} event streams open, {args.window:g} s windows, "
          f"camera {args.mount}")
    print("| run | GET /streams req/s | p50 ms | p99 ms | errors | result events | inference fps quiet | "
          "loaded | dropped quiet | loaded |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.label} | {r.rps:.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} | {r.events} | "
              f"{r.quiet_fps:.2f} | {r.loaded_fps:.2f} | {r.quiet_dropped} | {r.loaded_dropped} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
