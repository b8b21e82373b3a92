"""Live latency of `vidrec serve`: N 720p cameras at 15 fps → Kafka, for N = 1, 2, 4 (one service run per N).

``--cameras 1,2,2+file``: ``N+file`` adds a file stream (``--file``, default vtest.avi played four times over)
beside the N cameras; the summary gives each camera's results/s against the same checkout's N cameras alone and
the file's frames/s and drops. ``--checkout NAME=PATH`` (repeatable) runs the service of each vidrec checkout in
turn, A B then B A per round, so a change is measured against its parent in the same minutes. Runs use the
configuration's batch settings unless ``--max-batch`` is given.

Run (services up, the RTSP server serving /street720; a gallery in out/sample_index, see docs/benchmarks.md):

    set -a; eval "$(scripts/services up)"; set +a
    VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/live_latency.py --cameras 1,2,4 --duration 40

For each N the real service runs as a subprocess (``python -m workers.cli serve``): N streams of
``$RTSP_BASE/street720`` (N RTSP sessions of the test server's shared 720p mount: real footage with the
wall-clock stamp in its pixels, so each stream has ``clock_stamp: true``), ``--kafka`` onto a fresh topic,
``--http`` on a free port, ``-o`` overrides for the Service section. A consumer in this process reads the topic
from its start. After every stream is live and ``--warmup`` seconds have passed, a window of ``--duration``
seconds is measured; then the service gets SIGTERM and must exit 0.

Latencies, per message whose ``capture_time`` falls in the window (all on this machine's one wall clock):

- ``capture→ack``: the Kafka record's broker timestamp − ``capture_time``. The topic is created with
  ``message.timestamp.type=LogAppendTime``, so the record's timestamp is the moment the broker appended it;
  with one broker and ``acks=all`` the acknowledgement leaves right after (loopback, well under 1 ms). It does
  not include the producer's callback. ``capture_time`` is when the ingest process finished decoding the frame.
- ``pixel→ack``: the same, from the wall-clock stamp in the frame's pixels (written by the RTSP server just
  before the frame was encoded) instead of ``capture_time``: the stamp is ``capture_time − latency_ms.camera``,
  which the inference worker decodes from the very pixels it ran the models on. It adds encode, RTP over
  loopback, demux and decode, i.e. what a camera-to-Kafka delay would be, minus the camera's own sensor/encoder.
- ``pixel→consumer``: stamp → this consumer's ``poll`` returning the record: arrival at a consumer, an upper
  bound of the ack (it adds the broker's fetch path and this process's scheduling).

Counts come from ``GET /streams`` at the window's start and end (deltas): ``decoded`` frames, ``processed``
(handed to the sinks) and dropped (``dropped_source`` + ``dropped_ring`` + ``dropped_backlog`` +
``dropped_too_old``). CPU: utime+stime from /proc/<pid>/stat of the service's process tree (the supervisor and
every descendant, sampled each second), in % of one core; the machine's busy share from /proc/stat (100% = both
cores); the RTSP server's and Kafka's own processes separately.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from proctree import descendants  # bench/ is on sys.path when a benchmark runs as a script
from sample_gallery import ensure_gallery
from service_probe import dropped, free_port, get_json, pct

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------------ /proc -------
def proc_ticks(pid: int) -> int | None:
    """utime + stime of one process, in clock ticks (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(rest[11]) + int(rest[12])  # fields 14 and 15 of stat(5)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return total - idle, total


def find_pid(pattern: str) -> int | None:
    """A process whose command line matches ``pattern`` (regex), for the RTSP server's and Kafka's CPU."""
    rx = re.compile(pattern)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if rx.search(cmd):
            return int(name)
    return None


class CpuMeter(threading.Thread):
    """Samples a process tree every second; ``window()`` gives each process's ticks spent in [start, stop]."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.latest: dict[int, int] = {}
        self.marks: dict[str, dict[int, int]] = {}

    def sample(self) -> None:
        seen = {}
        for pid in [self.root, *descendants(self.root)]:
            ticks = proc_ticks(pid)
            if ticks is not None:
                seen[pid] = ticks
        with self.lock:
            self.latest.update(seen)

    def mark(self, name: str) -> None:
        self.sample()
        with self.lock:
            self.marks[name] = dict(self.latest)

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            self.sample()

    def window(self, start: str, stop: str) -> dict[int, int]:
        a, b = self.marks[start], self.marks[stop]
        return {pid: b[pid] - a.get(pid, 0) for pid in b}  # a process born in the window started at 0


# ------------------------------------------------------------------------------------------ HTTP / Kafka --
def create_topic(bootstrap: str, topic: str) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="vidrec-bench")
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                      topic_configs={"message.timestamp.type": "LogAppendTime"})])
    finally:
        admin.close()


def delete_topic(bootstrap: str, topic: str) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="vidrec-bench")
    try:
        admin.delete_topics([topic])
    except Exception as exc:  # noqa: BLE001 - cleanup only
        print(f"  (topic {topic} not deleted: {exc})", file=sys.stderr)
    finally:
        admin.close()


@dataclass
class Record:
    received: float  # wall seconds, when poll returned it
    broker_ms: int  # LogAppendTime
    ts_type: int
    msg: dict


class Consumer(threading.Thread):
    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                      fetch_max_wait_ms=100, auto_offset_reset="earliest")
        tp = TopicPartition(topic, 0)
        self.consumer.assign([tp])
        self.consumer.seek_to_beginning(tp)
        self.records: list[Record] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            polled = self.consumer.poll(timeout_ms=200)
            now = time.time()
            for batch in polled.values():
                for rec in batch:
                    self.records.append(Record(now, rec.timestamp, rec.timestamp_type, json.loads(rec.value)))
        self.consumer.close()


# ------------------------------------------------------------------------------------------ one run ------
@dataclass
class RunResult:
    cameras: int
    max_batch: int | None
    duration: float
    tracking: str | None = None  # "on"/"off" with --tracking, else the config's
    with_file: bool = False  # a file stream ran beside the cameras
    checkout: str = "-"  # --checkout NAME, when runs alternate checkouts
    file_fps: float = 0.0  # the file's results per second in the window
    file_dropped: int = 0  # frames the file lost in the window (must be 0: files lose none)
    file_ended: bool = False  # the file ran out before the window ended (its fps then understates)
    messages: int = 0
    per_camera_fps: list[float] = field(default_factory=list)
    decoded: int = 0
    processed: int = 0
    dropped: int = 0
    drops: dict = field(default_factory=dict)
    ack: list[float] = field(default_factory=list)
    pixel_ack: list[float] = field(default_factory=list)
    pixel_consumer: list[float] = field(default_factory=list)
    camera: list[float] = field(default_factory=list)
    queue: list[float] = field(default_factory=list)
    models: list[float] = field(default_factory=list)
    publish: list[float] = field(default_factory=list)
    unstamped: int = 0
    cpu: dict = field(default_factory=dict)
    exit_code: int | None = None
    published_final: int | None = None
    consumed_total: int = 0
    notes: list[str] = field(default_factory=list)


def looped_clip(clip: Path, times: int, out: Path) -> Path:
    """``clip`` played ``times`` over into one file (stream copy), so a file stream outlasts a run's window."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(times - 1), "-i", str(clip), "-c", "copy",
                    str(out)], check=True)
    return out


def run_once(args: argparse.Namespace, cameras: int, max_batch: int | None, tracking: str | None = None, *,
             with_file: bool = False, checkout: tuple[str, Path] = ("-", REPO)) -> RunResult:
    topic = f"vidrec-bench-{cameras}cam-{uuid.uuid4().hex[:8]}"
    create_topic(args.kafka, topic)
    consumer = Consumer(args.kafka, topic)
    consumer.start()
    port = free_port()
    url = f"{args.rtsp_base}/{args.mount}"
    tmp = Path(tempfile.mkdtemp(prefix="vidrec-bench-"))
    config = tmp / "serve.yaml"
    config.write_text("streams:\n" + "".join(
        f"  - {{id: cam{i}, url: \"{url}\", clock_stamp: true}}\n" for i in range(cameras))
        + (f"  - {{id: file0, url: \"{args.file}\", kind: file}}\n" if with_file else ""))
    cmd = [sys.executable, "-m", "workers.cli", "serve", "--config", str(config), "--kafka", args.kafka,
           "--topic", topic, "--http", f"127.0.0.1:{port}",
           "-o", f"IndexProcess.index_dir={args.index_dir}", "-o", f"Global.backend={args.backend}"]
    if max_batch is not None:
        cmd += ["-o", f"Service.max_batch={max_batch}", "-o", f"Global.batch_size={max_batch}"]
    for override in args.override:
        cmd += ["-o", override]
    if tracking is not None:
        cmd += ["-o", f"Tracker.enabled={'true' if tracking == 'on' else 'false'}"]
    log_path = tmp / "serve.log"
    log_file = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=checkout[1], stdout=log_file, stderr=subprocess.STDOUT)
    meter = CpuMeter(proc.pid)
    meter.start()
    result = RunResult(cameras=cameras, max_batch=max_batch, duration=args.duration, tracking=tracking,
                       with_file=with_file, checkout=checkout[0])
    base = f"http://127.0.0.1:{port}"
    others = {"rtsp server": find_pid(rf"rtsp_server\.py.*--port {args.rtsp_base.rsplit(':', 1)[1]}\b"),
              "kafka": find_pid(r"kafka\.Kafka ")}
    try:
        deadline = time.monotonic() + args.startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vidrec serve exited {proc.returncode} while starting; see {log_path}")
            try:
                streams = get_json(f"{base}/streams")["streams"]
                if len(streams) == cameras + with_file and all(
                        s["state"] == "live" and s["counters"]["processed"] > 0 for s in streams):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streams not live after {args.startup_timeout} s; see {log_path}")
            time.sleep(0.5)
        health = get_json(f"{base}/healthz")
        time.sleep(args.warmup)
        other_ticks0 = {k: proc_ticks(p) for k, p in others.items() if p}
        m0 = machine_ticks()
        meter.mark("start")
        t0 = time.time()
        before = {s["id"]: s["counters"] for s in get_json(f"{base}/streams")["streams"]}
        time.sleep(args.duration)
        after_streams = get_json(f"{base}/streams")["streams"]
        after = {s["id"]: s["counters"] for s in after_streams}
        t1 = time.time()
        meter.mark("stop")
        m1 = machine_ticks()
        other_ticks1 = {k: proc_ticks(p) for k, p in others.items() if p}
        wall = t1 - t0
        proc.send_signal(signal.SIGTERM)
        try:
            result.exit_code = proc.wait(timeout=args.stop_timeout)
        except subprocess.TimeoutExpired:
            result.notes.append(f"did not exit within {args.stop_timeout} s of SIGTERM: killed")
            proc.kill()
            result.exit_code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        meter.stop_event.set()
        log_file.close()
    time.sleep(2.0)  # the last records the drain published
    consumer.stop_event.set()
    consumer.join(10)

    # CPU over the window, per role (pids from /healthz).
    ticks = meter.window("start", "stop")
    roles = {health["workers"]["inference"]: "inference", proc.pid: "supervisor"}
    roles.update({pid: "ingest" for pid in health["workers"]["ingest"] if pid})
    cpu: dict[str, float] = {}
    for pid, n in ticks.items():
        role = roles.get(pid, "other")
        cpu[role] = cpu.get(role, 0.0) + 100.0 * n / TICKS / wall
    cpu["service"] = sum(cpu.values())
    cpu["machine"] = 100.0 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
    for k in other_ticks1:
        if other_ticks0.get(k) is not None and other_ticks1[k] is not None:
            cpu[k] = 100.0 * (other_ticks1[k] - other_ticks0[k]) / TICKS / wall
    result.cpu = cpu

    # Counters over the window.
    keys = ("decoded", "processed", "dropped_source", "dropped_backlog", "dropped_too_old")
    for sid in after:
        b, a = before[sid], after[sid]
        if sid == "file0":  # the file's own figures; the table's counts are the cameras'
            result.file_fps = (a["processed"] - b["processed"]) / wall
            result.file_dropped = dropped(a) - dropped(b)
            result.file_ended = streams_state(after_streams, sid) != "live"
            continue
        result.decoded += a["decoded"] - b["decoded"]
        result.processed += a["processed"] - b["processed"]
        result.dropped += dropped(a) - dropped(b)
        for k in keys[2:]:
            result.drops[k] = result.drops.get(k, 0) + a[k] - b[k]
        ring = sum(a["dropped_ring"].values()) - sum(b["dropped_ring"].values())
        result.drops["dropped_ring"] = result.drops.get("dropped_ring", 0) + ring

    # Messages of the window.
    per_cam: dict[str, int] = {}
    ts_types = set()
    result.consumed_total = len(consumer.records)
    for rec in consumer.records:
        msg = rec.msg
        cap = msg["capture_time"]
        if not t0 <= cap < t1 or not msg["stream_id"].startswith("cam"):
            continue
        ts_types.add(rec.ts_type)
        per_cam[msg["stream_id"]] = per_cam.get(msg["stream_id"], 0) + 1
        result.ack.append(rec.broker_ms - cap * 1000.0)
        lat = msg["latency_ms"]
        result.queue.append(lat.get("queue", float("nan")))
        result.models.append(sum(lat.get(k, 0.0) for k in ("detect", "recognize", "search", "post")))
        result.publish.append(rec.broker_ms - cap * 1000.0 - lat["total"])
        cam = msg["latency_ms"].get("camera")
        if cam is None:
            result.unstamped += 1
            continue
        stamp_ms = cap * 1000.0 - cam
        result.camera.append(cam)
        result.pixel_ack.append(rec.broker_ms - stamp_ms)
        result.pixel_consumer.append(rec.received * 1000.0 - stamp_ms)
    if ts_types != {1}:
        result.notes.append(f"record timestamp types {sorted(ts_types)} (1 = LogAppendTime expected)")
    result.messages = sum(per_cam.values())
    result.per_camera_fps = [per_cam.get(f"cam{i}", 0) / wall for i in range(cameras)]
    result.duration = wall
    text = log_path.read_text(errors="replace")
    final = re.search(r"final: (\{.*\})", text)
    if final:
        data = json.loads(final.group(1))
        result.published_final = sum(s["counters"]["published"].get("kafka", 0) for s in data["streams"])
        if result.consumed_total != result.published_final:
            result.notes.append(f"consumed {result.consumed_total} records, final counters say "
                                f"{result.published_final} published")
    else:
        result.notes.append("no final counters line in the service's log")
    lines = [ln for ln in text.splitlines() if "final: {" not in ln]
    # "detector: fp32, <file> (int8 guard failed: ...)" is the start-up's precision choice, not trouble
    trouble = [ln for ln in lines if re.search(r"Traceback|\bfailed\b|\berror\b", ln, re.IGNORECASE)
               and "int8 guard failed" not in ln]
    if trouble:
        result.notes.append(f"{len(trouble)} error line(s) in the log, first: {trouble[0].strip()[:200]}")
    outages = sum(1 for ln in lines if re.search(r"-> (stalled|reconnecting)", ln))
    if outages:
        result.notes.append(f"{outages} stall/reconnect state change(s) in the log")
    delete_topic(args.kafka, topic)
    if args.keep_logs:
        print(f"  log kept: {log_path}", file=sys.stderr)
    else:
        log_path.unlink()
        config.unlink()
        tmp.rmdir()
    return result


def streams_state(streams: list[dict], sid: str) -> str | None:
    return next((s["state"] for s in streams if s["id"] == sid), None)


# ------------------------------------------------------------------------------------------ main ---------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", default="1,2,4", help="comma-separated camera counts, one service run each")
    parser.add_argument("--duration", type=float, default=40.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds after every stream is live")
    parser.add_argument("--mount", default="street720")
    parser.add_argument("--rtsp-base", default=os.environ.get("RTSP_BASE"))
    parser.add_argument("--kafka", default=os.environ.get("KAFKA_BOOTSTRAP"))
    parser.add_argument("--index-dir", type=Path, default=REPO / "out" / "sample_index")
    parser.add_argument("--max-batch", default="default",
                        help="Service.max_batch (and Global.batch_size; comma-separated: one run per camera count "
                             "each); default: the configuration's")
    parser.add_argument("--backend", default="onnx")
    parser.add_argument("-o", dest="override", action="append", default=[], help="more vidrec -o overrides")
    parser.add_argument("--file", type=Path, help="the file of N+file runs (default: vtest.avi played 4 times over)")
    parser.add_argument("--checkout", action="append", default=[], metavar="NAME=PATH",
                        help="run the service of this vidrec checkout (repeat: alternated per round, A B then B A)")
    parser.add_argument("--startup-timeout", type=float, default=240.0)
    parser.add_argument("--stop-timeout", type=float, default=120.0)
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--tracking", default=None,
                        help="comma-separated on/off: one run each per setting (Tracker.enabled), alternated per round")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all runs; with --tracking, B A in even rounds")
    args = parser.parse_args()
    if not args.rtsp_base or not args.kafka:
        parser.error("RTSP_BASE and KAFKA_BOOTSTRAP (or --rtsp-base/--kafka): run scripts/services up")
    ensure_gallery(args.index_dir)
    problem = subprocess.run(["/usr/bin/python3", str(REPO / "scripts" / "rtsp_server.py"), "--describe",
                              f"{args.rtsp_base}/{args.mount}"], capture_output=True, text=True)
    if problem.returncode != 0:
        print(f"{problem.stderr.strip()} (restart the RTSP server: scripts/services stop rtsp; "
              "scripts/services start rtsp)", file=sys.stderr)
        return 1
    cases = []
    for spec in args.cameras.split(","):
        n, _, extra = spec.partition("+")
        if not n.isdigit() or extra not in ("", "file"):
            parser.error(f"--cameras takes counts like 1,2,2+file; got {spec!r}")
        cases.append((int(n), extra == "file"))
    checkouts = [("-", REPO)]
    if args.checkout:
        checkouts = []
        for spec in args.checkout:
            name, _, path = spec.partition("=")
            if not path or not (Path(path) / "workers" / "cli.py").is_file():
                parser.error(f"--checkout NAME=PATH to a vidrec checkout, got {spec!r}")
            checkouts.append((name, Path(path).resolve()))
    tmp_clip = None
    if any(f for _, f in cases) and args.file is None:
        tmp_clip = Path(tempfile.mkdtemp(prefix="vidrec-bench-file-"))
        args.file = looped_clip(REPO / ".cache" / "media" / "vtest.avi", 4, tmp_clip / "vtest-x4.avi")

    results = []
    settings = args.tracking.split(",") if args.tracking else [None]
    if any(t not in (None, "on", "off") for t in settings):
        parser.error(f"--tracking takes on and/or off, got {args.tracking!r}")
    batches = [None if b == "default" else int(b) for b in args.max_batch.split(",")]
    runs = [(c, b, n, f, t) for k in range(args.rounds) for b in batches for n, f in cases
            for t in (settings if k % 2 == 0 else settings[::-1]) for c in (checkouts if k % 2 == 0 else checkouts[::-1])]
    for c, b, n, f, t in runs:
        print(f"{c[0]}: {n} camera(s){' + a file' if f else ''}, max_batch {b or 'default'}, tracking "
              f"{t or 'as configured'}: {args.warmup + args.duration:.0f} s + startup; load average "
              f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}", file=sys.stderr, flush=True)
        r = run_once(args, n, b, t, with_file=f, checkout=c)
        results.append(r)
        print(f"  {r.messages} messages, fps/camera {[round(v, 1) for v in r.per_camera_fps]}, file {r.file_fps:.1f} fps, "
              f"ack p50 {pct(r.ack, 50):.0f} p99 {pct(r.ack, 99):.0f} ms, exit {r.exit_code}, cpu {r.cpu}, "
              f"notes {r.notes}", file=sys.stderr, flush=True)
    if tmp_clip is not None:
        for path in tmp_clip.iterdir():
            path.unlink()
        tmp_clip.rmdir()

    load = os.getloadavg()
    print(f"\nload average before the last run's report: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"backend {args.backend}, {args.duration:.0f} s measured per run\n")
    print("| run | max_batch | tracking | fps/camera (results) | decoded | processed | dropped | capture→ack p50 / p99 / max (ms) "
          "| pixel→ack p50 / p99 (ms) | pixel→consumer p99 (ms) | service CPU (% of a core) | machine busy "
          "| file fps / dropped | p99 under 150 ms: capture / pixel | exit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        target = 150.0
        ok_ack, ok_pixel = pct(r.ack, 99) < target, pct(r.pixel_ack, 99) < target
        fps = " / ".join(f"{v:.1f}" for v in r.per_camera_fps)
        drop_pct = 100.0 * r.dropped / max(1, r.decoded)
        file_cell = f"{r.file_fps:.1f} / {r.file_dropped}{' (ended)' if r.file_ended else ''}" if r.with_file else "-"
        print(f"| {run_name(r)} | {r.max_batch or 'default'} | {r.tracking or '-'} | {fps} | {r.decoded} | {r.processed} "
              f"| {r.dropped} ({drop_pct:.0f}%) "
              f"| {pct(r.ack, 50):.0f} / {pct(r.ack, 99):.0f} / {max(r.ack, default=float('nan')):.0f} "
              f"| {pct(r.pixel_ack, 50):.0f} / {pct(r.pixel_ack, 99):.0f} | {pct(r.pixel_consumer, 99):.0f} "
              f"| {r.cpu['service']:.0f} | {r.cpu['machine']:.0f}% | {file_cell} "
              f"| {'yes' if ok_ack else 'NO'} / {'yes' if ok_pixel else 'NO'} | {r.exit_code} |")
    print("\n| run | max_batch | tracking | p50 ms: queue (capture→batch) / models / publish (handed→ack) | CPU % of a core: inference / ingest / supervisor / other; RTSP server; Kafka "
          "| drops by kind | camera (stamp→capture) p50 / p99 ms | unstamped | notes |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        c = r.cpu
        drops = ", ".join(f"{k.removeprefix('dropped_')} {v}" for k, v in r.drops.items() if v) or "none"
        print(f"| {run_name(r)} | {r.max_batch or 'default'} | {r.tracking or '-'} | {pct(r.queue, 50):.0f} / {pct(r.models, 50):.0f} / {pct(r.publish, 50):.0f} "
              f"| {c.get('inference', 0):.0f} / {c.get('ingest', 0):.0f} / {c.get('supervisor', 0):.0f} / "
              f"{c.get('other', 0):.0f}; {c.get('rtsp server', float('nan')):.0f}; {c.get('kafka', float('nan')):.0f} "
              f"| {drops} | {pct(r.camera, 50):.0f} / {pct(r.camera, 99):.0f} | {r.unstamped} "
              f"| {'; '.join(r.notes) or '-'} |")
    summary(results)
    return 0 if all(r.exit_code == 0 for r in results) else 1


def run_name(r: RunResult) -> str:
    return f"{'' if r.checkout == '-' else r.checkout + ' '}{r.cameras} cam{'s' if r.cameras > 1 else ''}{' + file' if r.with_file else ''}"


def summary(results: list[RunResult]) -> None:
    """Medians over rounds per checkout and case: capture→ack p99, share of decoded frames processed, and for
    N+file runs each camera's results/s against the same checkout's N cameras alone (issue 13: at least 80 %)."""
    groups: dict[tuple[str, int, bool], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.checkout, r.cameras, r.with_file), []).append(r)
    print("\n| checkout, case (medians over rounds) | capture→ack p99 (ms) | processed / decoded | worst camera fps "
          "| worst camera fps vs alone | file fps / dropped |")
    print("|---|---|---|---|---|---|")
    med = statistics.median
    for (checkout, n, with_file), rs in groups.items():
        alone = groups.get((checkout, n, False))
        worst = med([min(r.per_camera_fps) for r in rs])
        share = f"{worst / med([min(r.per_camera_fps) for r in alone]):.2f}" if with_file and alone else "-"
        files = f"{med([r.file_fps for r in rs]):.1f} / {sum(r.file_dropped for r in rs)}" if with_file else "-"
        print(f"| {'' if checkout == '-' else checkout + ', '}{n} cam{'s' if n > 1 else ''}{' + file' if with_file else ''} "
              f"| {med([pct(r.ack, 99) for r in rs]):.0f} | {med([r.processed / max(1, r.decoded) for r in rs]):.3f} "
              f"| {worst:.1f} | {share} | {files} |")


if __name__ == "__main__":
    sys.exit(main())
