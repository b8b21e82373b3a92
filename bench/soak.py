"""Soak of `vidrec serve`: 2 RTSP cameras and a looping file for N minutes; memory, descriptors, shared memory.

Run (services up; a gallery in out/sample_index is built if missing; see docs/benchmarks.md):

    set -a; eval "$(scripts/services up)"; set +a
    VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/soak.py --minutes 10 --out out/soak.json

The real service runs as a subprocess (``python -m workers.cli serve``, default config) with three streams:
``cam-bikes`` = ``$RTSP_BASE/bikes`` and ``cam-vtest`` = ``$RTSP_BASE/vtest`` (the test RTSP server loops its
clips forever) and ``loop`` = samples/bikes.mp4. vidrec has no option to loop a file (a file stream is
processed once, then ``ended``), so a thread here loops it through the HTTP API: as soon as ``loop`` is
``ended`` it is removed (``DELETE /streams/loop``), and once it is gone added again with the same id (``POST
/streams``): every loop is an add/remove of a stream, its ingest thread, its shared-memory ring and the
inference side's mapping of it, which is what a leak would most likely come from. Results go to Kafka (a fresh
one-partition topic) and Redis (a fresh key prefix); both are removed at the end.

t = 0 is the moment every stream has results. Every ``--interval`` seconds (10) it samples, for every process
of the service's tree (the supervisor, the workers named by ``GET /healthz`` and any other descendant, e.g.
multiprocessing's resource tracker): VmRSS / RssAnon / RssFile / RssShmem and Threads from
``/proc/<pid>/status``, open descriptors from ``/proc/<pid>/fd`` by kind (socket, pipe, /dev/shm file,
anon inode, other), the /dev/shm files mapped (``/proc/<pid>/maps``), CPU seconds; ``GET /metrics``'s
``vidrec_process_resident_memory_bytes`` per process (to compare); this run's segments in /dev/shm
(``vidrec_<run_id>_*``); per stream its state and counters (``GET /streams``). A sample is only taken while
``loop`` is running (not between its end and its re-add), so that descriptor and segment counts of two samples
describe the same set of streams.

Verdict (exit status 1 when any check fails):

- RSS: every process's VmRSS at every sample from minute ``--baseline-minute`` (2) on is within
  ``--rss-tolerance`` (±10 %) of its value at that minute;
- descriptors: at the end, per process, non-socket descriptors equal to the baseline's, sockets within
  ``--fd-slack`` (see the option's help: connections the clients may open or drop on their own);
- shared memory: this run's segments at the end == at the baseline (two per stream: the ring's control block
  and its data), none in a sample outside the running streams', none left after SIGTERM;
- SIGTERM: exit code 0 within ``--stop-timeout``, no process of the tree left, nothing left in the service's
  TMPDIR (the Kafka spool's folder goes there);
- it kept working: every camera's ``processed`` grew in every interval after the baseline, the file looped at
  least once after it, no worker restarted, no stream failed; Kafka's end offset == the final ``published``.

All samples go to ``--out`` (JSON); the summary (markdown tables) to stdout. ``--report FILE`` prints the summary
of an earlier run again (with other thresholds if given). ``--probe-recognizer arena-on|arena-off`` starts no
service: it feeds the service's recognizer the crop batches an inference worker gives it and prints each step up
of its RSS, to tell the inference worker's warm-up steps from a leak (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from proctree import descendants  # bench/ is on sys.path when a benchmark runs as a script
from sample_gallery import ensure_gallery
from service_probe import free_port

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
SHM_DIR = Path("/dev/shm")
CAMERAS = {"cam-bikes": "bikes", "cam-vtest": "vtest"}
LOOP_ID = "loop"


# ------------------------------------------------------------------------------------------ /proc -------
def read_status(pid: int) -> dict[str, int] | None:
    """VmRSS, RssAnon, RssFile, RssShmem (kB) and Threads of one process; None when it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads"):
                    out[key] = int(value.split()[0])
    except (OSError, ValueError):
        return None
    return out


def cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(rest[11]) + int(rest[12])) / TICKS


def fd_kinds(pid: int) -> dict[str, int] | None:
    """Open descriptors by kind: socket, pipe, shm (a /dev/shm file), anon (anon_inode: pidfd, eventfd...),
    dev (/dev/null, /dev/urandom...), file (anything else); None when the process is gone."""
    kinds = {"socket": 0, "pipe": 0, "shm": 0, "anon": 0, "dev": 0, "file": 0}
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue  # closed while listing
        if target.startswith("socket:"):
            kinds["socket"] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("/dev/shm/"):
            kinds["shm"] += 1
        elif target.startswith("anon_inode:"):
            kinds["anon"] += 1
        elif target.startswith("/dev/"):
            kinds["dev"] += 1
        else:
            kinds["file"] += 1
    return kinds


def shm_mapped(pid: int) -> tuple[int, int, int] | None:
    """From /proc/<pid>/maps: (vidrec segments mapped, of which already unlinked, other /dev/shm files mapped,
    e.g. multiprocessing's semaphores), each counted once however many mappings it has."""
    ours, deleted, other = set(), set(), set()
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                i = line.find("/dev/shm/")
                if i < 0:
                    continue
                path = line[i:].strip()
                name = path.removesuffix(" (deleted)")
                if not name.startswith("/dev/shm/vidrec_"):
                    other.add(path)
                    continue
                ours.add(name)
                if path.endswith(" (deleted)"):
                    deleted.add(name)
    except OSError:
        return None
    return len(ours), len(deleted), len(other)


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """True while the pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


def shm_entries(prefix: str = "vidrec_") -> list[str]:
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def shm_bytes(names: list[str]) -> int:
    total = 0
    for n in names:
        try:
            total += (SHM_DIR / n).stat().st_size
        except OSError:
            pass
    return total


# ------------------------------------------------------------------------------------------ HTTP ---------
class Api:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base, token

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if method in ("POST", "DELETE"):
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                status = r.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        if path == "/metrics":
            return status, raw.decode()
        return status, json.loads(raw or b"{}")

    def get(self, path: str) -> Any:
        status, body = self.call("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body}")
        return body


def metrics_rss(text: str) -> dict[str, int]:
    return {m.group(1): int(float(m.group(2))) for m in re.finditer(
        r'^vidrec_process_resident_memory_bytes\{(?:node="[^"]*",)?process="([^"]+)"\}\s+(\S+)', text, re.MULTILINE)}


# ------------------------------------------------------------------------------------------ the file loop --
class Looper(threading.Thread):
    """Re-adds ``loop`` whenever it ended. Holds ``gate`` from the moment it sees the end until the new
    instance has results again, so that the sampler never sees the stream half gone."""

    def __init__(self, api: Api, spec: dict, t0_ref: list[float]) -> None:
        super().__init__(daemon=True)
        self.api, self.spec, self.t0_ref = api, spec, t0_ref
        self.gate = threading.Lock()
        self.stop_event = threading.Event()
        self.loops: list[dict] = []  # one per finished pass: when it ended, its counters then
        self.errors: list[str] = []

    def _stream(self) -> dict | None:
        status, body = self.api.call("GET", f"/streams/{LOOP_ID}")
        return body if status == 200 else None

    def run(self) -> None:
        while not self.stop_event.wait(1.0):
            try:
                s = self._stream()
                if s is None or s["state"] not in ("ended", "failed"):
                    continue
                with self.gate:
                    self._relaunch(s)
            except Exception as exc:  # noqa: BLE001 - reported in the verdict, the soak goes on
                self.errors.append(f"{time.time() - self.t0_ref[0]:.0f} s: {exc!r}")

    def _relaunch(self, s: dict) -> None:
        t = time.time() - self.t0_ref[0]
        self.loops.append({"t_end": round(t, 1), "state": s["state"], "reason": s.get("reason"),
                           "frame_count": s.get("frame_count"), "counters": s["counters"]})
        if s["state"] == "failed":
            self.errors.append(f"{t:.0f} s: loop failed: {s.get('reason')}")
        status, body = self.api.call("DELETE", f"/streams/{LOOP_ID}")
        if status not in (202, 404):
            raise RuntimeError(f"DELETE: {status} {body}")
        deadline = time.monotonic() + 60
        while self._stream() is not None:
            if time.monotonic() > deadline:
                raise RuntimeError("loop not gone 60 s after DELETE")
            time.sleep(0.2)
        status, body = self.api.call("POST", "/streams", self.spec)
        if status != 201:
            raise RuntimeError(f"POST: {status} {body}")
        processed0 = s["counters"]["processed"]
        deadline = time.monotonic() + 60
        while not self.stop_event.is_set():  # until the new pass has results (counters carry on per id)
            cur = self._stream()
            if cur is not None and (cur["counters"]["processed"] > processed0 or cur["state"] in ("ended", "failed")):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("loop re-added but no result within 60 s")
            time.sleep(0.2)


# ------------------------------------------------------------------------------------------ sampling -----
def roles_of(root: int, health: dict) -> dict[int, str]:
    roles = {root: "supervisor", health["workers"]["inference"]: "inference"}
    roles.update({pid: f"ingest-{i}" for i, pid in enumerate(health["workers"]["ingest"]) if pid})
    for pid in descendants(root):
        if pid not in roles:
            cmd = cmdline(pid)
            roles[pid] = "resource_tracker" if "resource_tracker" in cmd else f"other:{pid}"
    return roles


def tmp_entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def take_sample(api: Api, root: int, run_id: str, t0: float, looper: Looper, service_tmp: Path) -> dict:
    # HTTP first, /proc after: the API's own request threads and sockets have closed by then.
    streams = api.get("/streams")
    health = api.get("/healthz")
    mrss = metrics_rss(api.call("GET", "/metrics")[1])
    roles = roles_of(root, health)
    procs: dict[str, dict] = {}
    for pid, role in roles.items():
        st = read_status(pid)
        fds = fd_kinds(pid)
        maps = shm_mapped(pid)
        if st is None or fds is None:
            continue
        procs[role] = {
            "pid": pid, "rss_kb": st.get("VmRSS"), "anon_kb": st.get("RssAnon"), "file_kb": st.get("RssFile"),
            "shmem_kb": st.get("RssShmem"), "hwm_kb": st.get("VmHWM"), "threads": st.get("Threads"),
            "fds": sum(fds.values()), "fd_kinds": fds, "shm_mapped": maps[0] if maps else None,
            "shm_mapped_deleted": maps[1] if maps else None, "shm_other_mapped": maps[2] if maps else None,
            "cpu_s": cpu_seconds(pid),
            "metrics_rss_kb": mrss[role] // 1024 if role in mrss else None,
        }
    segs = shm_entries(f"vidrec_{run_id}_")
    return {
        "t": round(time.time() - t0, 1),
        "loops": len(looper.loops),
        "loadavg": list(os.getloadavg()),
        "procs": procs,
        "shm": {"count": len(segs), "bytes": shm_bytes(segs), "names": segs},
        "tmp": tmp_entries(service_tmp),
        "streams": {s["id"]: {"state": s["state"], "frame_count": s.get("frame_count"),
                              **{k: s["counters"][k] for k in ("decoded", "processed", "reconnects")
                                 if k in s["counters"]},
                              "published": s["counters"].get("published", {})}
                    for s in streams["streams"]},
        "sinks": streams.get("sinks", []),
    }


def sample_synced(api: Api, root: int, run_id: str, t0: float, looper: Looper, service_tmp: Path) -> dict:
    """A sample taken while ``loop`` is running (its ring in place): up to 30 s of retries."""
    deadline = time.monotonic() + 30
    while True:
        with looper.gate:
            status, s = api.call("GET", f"/streams/{LOOP_ID}")
            running = status == 200 and s["state"] not in ("ended", "failed")
            if running or time.monotonic() > deadline:
                sample = take_sample(api, root, run_id, t0, looper, service_tmp)
                sample["loop_running"] = running
                return sample
        time.sleep(0.3)


# ------------------------------------------------------------------------------------------ verdict ------
def mb(kb: float | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t s, kB) points, in kB per minute: a leak is a steady slope, a warm-up a step."""
    if len(points) < 2:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return 60.0 * sum((t - mt) * (v - mv) for t, v in points) / var if var else None


def evaluate(args, samples: list[dict], base: dict, end: dict, stop: dict, looper: Looper) -> tuple[list, dict]:
    checks: list[tuple[str, bool, str]] = []
    after = [s for s in samples if s["t"] >= base["t"]]
    per_proc: dict[str, dict] = {}

    # RSS within ±tolerance of the baseline, every sample, every process.
    for role, b in base["procs"].items():
        series = [(s["t"], s["procs"][role]) for s in after if role in s["procs"] and s["procs"][role]["pid"] == b["pid"]]
        rss = [p["rss_kb"] for _, p in series]
        dev = [100.0 * (v - b["rss_kb"]) / b["rss_kb"] for v in rss]
        worst = max(dev, key=abs) if dev else 0.0
        e = end["procs"].get(role)
        half = [(t, p["rss_kb"]) for t, p in series if t >= (base["t"] + end["t"]) / 2]
        jumps = [(p2["rss_kb"] - p1["rss_kb"], t2) for (_, p1), (t2, p2) in zip(series, series[1:])]
        jump = max(jumps, default=(0, None))
        per_proc[role] = {"pid": b["pid"], "base_kb": b["rss_kb"], "min_kb": min(rss, default=None),
                          "max_kb": max(rss, default=None), "end_kb": e["rss_kb"] if e else None, "worst_pct": worst,
                          "samples": len(series), "slope_kb_min": slope([(t, p["rss_kb"]) for t, p in series]),
                          "slope_half_kb_min": slope(half), "max_step_kb": jump[0], "max_step_t": jump[1]}
        ok = bool(series) and all(abs(d) <= 100.0 * args.rss_tolerance for d in dev) and len(series) == len(after)
        checks.append((f"RSS {role}", ok, f"{mb(b['rss_kb'])} MB at {base['t']:.0f} s, {mb(min(rss, default=None))}–"
                       f"{mb(max(rss, default=None))} MB after, worst {worst:+.1f} % (limit ±{100 * args.rss_tolerance:.0f} %)"
                       + ("" if len(series) == len(after) else f"; in {len(series)} of {len(after)} samples (pid changed or gone)")
                       + (f"; largest step {jump[0] / 1024:+.1f} MB in the interval ending at {jump[1]:.0f} s, trend over "
                          f"the last half {per_proc[role]['slope_half_kb_min'] / 1024:+.2f} MB/min"
                          if not ok and jump[1] is not None and per_proc[role]["slope_half_kb_min"] is not None else "")))

    # Descriptors: end vs baseline.
    for role, b in base["procs"].items():
        e = end["procs"].get(role)
        if e is None or e["pid"] != b["pid"]:
            checks.append((f"fds {role}", False, "process gone or restarted"))
            continue
        diff = {k: e["fd_kinds"][k] - b["fd_kinds"][k] for k in b["fd_kinds"]}
        non_socket = {k: v for k, v in diff.items() if k != "socket" and v}
        ok = not non_socket and abs(diff["socket"]) <= args.fd_slack
        peak = max(s["procs"][role]["fds"] for s in after if role in s["procs"])
        checks.append((f"fds {role}", ok, f"{b['fds']} → {e['fds']} (max {peak}); sockets {diff['socket']:+d} "
                       f"(slack ±{args.fd_slack}), others {non_socket or 'unchanged'}"))
        per_proc[role].update(fds_base=b["fds"], fds_end=e["fds"], fds_max=peak, threads_base=b["threads"],
                              threads_end=e["threads"], threads_max=max(s["procs"][role]["threads"] for s in after
                                                                         if role in s["procs"]),
                              shm_mapped_base=b["shm_mapped"], shm_mapped_end=e["shm_mapped"],
                              anon_base_kb=b["anon_kb"], anon_end_kb=e["anon_kb"],
                              metrics_end_kb=e.get("metrics_rss_kb"))

    # Mappings of the run's segments (a removed stream's ring still mapped would show here, even unlinked).
    for role, b in base["procs"].items():
        e = end["procs"].get(role)
        if e is None or e["pid"] != b["pid"]:
            continue
        ok = e["shm_mapped"] == b["shm_mapped"] and e["shm_mapped_deleted"] <= b["shm_mapped_deleted"]
        peak = max(s["procs"][role]["shm_mapped"] for s in after if role in s["procs"])
        checks.append((f"segments mapped {role}", ok, f"{b['shm_mapped']} → {e['shm_mapped']} (max {peak}), "
                       f"unlinked but mapped {b['shm_mapped_deleted']} → {e['shm_mapped_deleted']}"))
    new_procs = [r for r in end["procs"] if r not in base["procs"]]
    checks.append(("no new process", not new_procs, f"new since the baseline: {new_procs or 'none'}"))

    # Shared memory of the run.
    expected = 2 * len(end["streams"])
    extra = [s["t"] for s in samples if s["shm"]["count"] > expected]
    checks.append(("shm segments", base["shm"]["count"] == end["shm"]["count"] == expected and not extra,
                   f"{base['shm']['count']} at {base['t']:.0f} s, {end['shm']['count']} at the end "
                   f"(expected {expected}: 2 per stream), max {max(s['shm']['count'] for s in samples)} over all samples"
                   + (f"; more than expected at t = {extra[:5]}" if extra else "")))
    checks.append(("shm after SIGTERM", not stop["run_segments_left"],
                   f"{len(stop['run_segments_left'])} left {stop['run_segments_left'][:4]}"))
    checks.append(("exit code", stop["exit_code"] == 0, f"{stop['exit_code']} after {stop['stop_s']:.1f} s"))
    checks.append(("processes after SIGTERM", not stop["pids_left"], f"left: {stop['pids_left'] or 'none'}"))
    checks.append(("TMPDIR after SIGTERM", not stop["tmp_left"], f"left: {stop['tmp_left'][:5] or 'nothing'}"))

    # It kept working.
    for sid in CAMERAS:
        stuck = [s2["t"] for s1, s2 in zip(after, after[1:])
                 if s2["streams"][sid]["processed"] <= s1["streams"][sid]["processed"]]
        checks.append((f"{sid} processing", not stuck,
                       f"processed {base['streams'][sid]['processed']} at {base['t']:.0f} s → "
                       f"{end['streams'][sid]['processed']} at {end['t']:.0f} s"
                       + (f"; no progress in the interval ending at t = {stuck[:5]}" if stuck else "")))
    loops_after = sum(1 for lp in looper.loops if lp["t_end"] >= base["t"])
    checks.append(("file loops", loops_after >= 1 and not looper.errors,
                   f"{len(looper.loops)} passes ended ({loops_after} after {base['t']:.0f} s); "
                   f"errors: {looper.errors or 'none'}"))
    restarted = [r for r in base["procs"] if r in end["procs"] and end["procs"][r]["pid"] != base["procs"][r]["pid"]]
    checks.append(("no worker restart", not restarted, f"restarted: {restarted or 'none'}"))
    if stop.get("kafka_end_offset") is not None:
        checks.append(("Kafka records == published", stop["kafka_end_offset"] == stop.get("final_published_kafka"),
                       f"topic end offset {stop['kafka_end_offset']}, final counters {stop.get('final_published_kafka')}"))
    return checks, per_proc


# ------------------------------------------------------------------------------------------ main ---------
def code_version() -> str:
    """The commit the service ran from, and whether its code had uncommitted changes (others may be editing)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "workers", "stream", "models", "config"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else " (clean)")


def kafka_end_offset(bootstrap: str, topic: str) -> int | None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tp = TopicPartition(topic, 0)
        return consumer.end_offsets([tp])[tp]
    finally:
        consumer.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="soak length from t = 0 (all streams have results)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--baseline-minute", type=float, default=2.0, help="the sample everything is compared with")
    parser.add_argument("--rss-tolerance", type=float, default=0.10, help="allowed RSS deviation from the baseline")
    parser.add_argument("--fd-slack", type=int, default=2,
                        help="allowed change in socket descriptors per process, end vs baseline: the Kafka client "
                             "opens/drops broker connections on its own (bootstrap vs node connection, idle "
                             "reconnects) and redis-py's pool may hold one more connection after a concurrent use; "
                             "every other kind (pipes, /dev/shm, files, pidfds) must be unchanged")
    parser.add_argument("--file", type=Path, default=REPO / "samples" / "bikes.mp4", help="the looping file")
    parser.add_argument("--rtsp-base", default=os.environ.get("RTSP_BASE"))
    parser.add_argument("--kafka", default=os.environ.get("KAFKA_BOOTSTRAP"))
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--index-dir", type=Path, default=REPO / "out" / "sample_index")
    parser.add_argument("-o", dest="override", action="append", default=[], help="more vidrec -o overrides")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "soak.json", help="all samples, JSON")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--stop-timeout", type=float, default=120.0)
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="run nothing: re-check and print the summary of an earlier --out file (with this run's "
                             "--baseline-minute, --rss-tolerance, --fd-slack)")
    parser.add_argument("--probe-recognizer", choices=("arena-on", "arena-off"),
                        help="run nothing else: feed the service's recognizer (default config, this process) 600 "
                             "batches of a random 1-24 crops, as the inference worker's batches of up to 4 frames "
                             "of up to 6 crops give it, and print every step up of this process's RSS; arena-off "
                             "turns ONNX Runtime's CPU memory arena off for comparison")
    args = parser.parse_args()
    if args.report:
        return report(args)
    if args.probe_recognizer:
        return probe_recognizer(args)
    missing = [n for n, v in (("RTSP_BASE", args.rtsp_base), ("KAFKA_BOOTSTRAP", args.kafka),
                              ("REDIS_URL", args.redis), ("VIDREC_MODEL_DIR", os.environ.get("VIDREC_MODEL_DIR")))
               if not v]
    if missing:
        parser.error(f"{', '.join(missing)} not set: set -a; eval \"$(scripts/services up)\"; set +a; "
                     "export VIDREC_MODEL_DIR=...")
    for mount in CAMERAS.values():
        problem = subprocess.run(["/usr/bin/python3", str(REPO / "scripts" / "rtsp_server.py"), "--describe",
                                  f"{args.rtsp_base}/{mount}"], capture_output=True, text=True)
        if problem.returncode != 0:
            print(f"{args.rtsp_base}/{mount}: {problem.stderr.strip()}", file=sys.stderr)
            return 1
    ensure_gallery(args.index_dir)
    from kafka.admin import KafkaAdminClient, NewTopic
    import redis

    tag = uuid.uuid4().hex[:8]
    topic, key_prefix = f"vidrec-soak-{tag}", f"vidrec-soak-{tag}"
    admin = KafkaAdminClient(bootstrap_servers=args.kafka, client_id="vidrec-soak")
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])

    tmp = Path(tempfile.mkdtemp(prefix="vidrec-soak-"))
    service_tmp = tmp / "tmp"
    service_tmp.mkdir()
    loop_spec = {"id": LOOP_ID, "url": str(args.file.resolve()), "kind": "file"}
    config = tmp / "serve.yaml"
    config.write_text("streams:\n" + "".join(f"  - {{id: {sid}, url: \"{args.rtsp_base}/{mount}\"}}\n"
                                             for sid, mount in CAMERAS.items())
                      + f"  - {{id: {LOOP_ID}, url: \"{loop_spec['url']}\", kind: file}}\n")
    port = free_port()
    token = secrets.token_hex(16)
    cmd = [sys.executable, "-m", "workers.cli", "serve", "--config", str(config), "--kafka", args.kafka,
           "--topic", topic, "--redis", args.redis, "--http", f"127.0.0.1:{port}",
           "-o", f"IndexProcess.index_dir={args.index_dir}", "-o", f"Redis.key_prefix={key_prefix}"]
    for override in args.override:
        cmd += ["-o", override]
    env = dict(os.environ, VIDREC_API_TOKEN=token, TMPDIR=str(service_tmp))
    env.pop("VIDREC_DEBUG", None)
    shm_before = shm_entries()
    load_before = os.getloadavg()
    log_path = tmp / "serve.log"
    log_file = open(log_path, "w")
    print(f"vidrec serve on port {port}, topic {topic}, log {log_path}", file=sys.stderr)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    api = Api(f"http://127.0.0.1:{port}", token)
    t0_ref = [time.time()]
    looper = Looper(api, loop_spec, t0_ref)
    samples: list[dict] = []
    stop: dict[str, Any] = {}
    result: dict[str, Any] = {}
    try:
        started = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vidrec serve exited {proc.returncode} while starting; see {log_path}")
            try:
                status, health = api.call("GET", "/healthz")
                streams = api.get("/streams")["streams"] if status == 200 else []
                if len(streams) == 3 and all(s["counters"]["processed"] > 0 for s in streams):
                    break
            except OSError:
                pass
            if time.monotonic() - started > args.startup_timeout:
                raise RuntimeError(f"streams without results after {args.startup_timeout} s; see {log_path}")
            time.sleep(0.5)
        startup_s = time.monotonic() - started
        run_id = health["run_id"]
        t0 = time.time()
        t0_ref[0] = t0
        m0 = machine_ticks()
        looper.start()
        print(f"run {run_id}: all streams have results after {startup_s:.0f} s; t = 0", file=sys.stderr)
        n = int(round(args.minutes * 60 / args.interval))
        for k in range(n + 1):
            delay = t0 + k * args.interval - time.time()
            if delay > 0:
                time.sleep(delay)
            if proc.poll() is not None:
                raise RuntimeError(f"vidrec serve exited {proc.returncode} at t = {time.time() - t0:.0f} s")
            s = sample_synced(api, proc.pid, run_id, t0, looper, service_tmp)
            samples.append(s)
            rss = " ".join(f"{r}={mb(p['rss_kb'])}M/{p['fds']}fd/{p['threads']}th" for r, p in s["procs"].items())
            done = " ".join(f"{sid}={v['processed']}" for sid, v in s["streams"].items())
            print(f"t={s['t']:6.1f} loops={s['loops']} shm={s['shm']['count']} tmp={len(s['tmp'])} {rss} | {done} | "
                  f"load {s['loadavg'][0]:.2f}", file=sys.stderr)
        m1 = machine_ticks()
        looper.stop_event.set()
        looper.join(70)

        # SIGTERM: exit 0, nothing left.
        pids = sorted({p["pid"] for p in samples[-1]["procs"].values()} | set(descendants(proc.pid)))
        stop_t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            stop["exit_code"] = proc.wait(timeout=args.stop_timeout)
        except subprocess.TimeoutExpired:
            stop["exit_code"] = None
            proc.kill()
            proc.wait()
        stop["stop_s"] = time.monotonic() - stop_t
        time.sleep(1.0)
        stop["pids_left"] = [p for p in pids if p != proc.pid and alive(p)]
        stop["run_segments_left"] = shm_entries(f"vidrec_{run_id}_")
        # .ses: ONNX Runtime's telemetry SDK (1DS) keeps a 51-byte session file (first-launch time, session
        # uuid) in the temp dir, written once and reused by every later process: not vidrec's, not per run.
        stop["tmp_left"] = [p for p in tmp_entries(service_tmp) if p != ".ses"]
        stop["shm_all_before"] = len(shm_before)
        stop["shm_all_after"] = len(shm_entries())
        stop["machine_busy_pct"] = 100.0 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1])
        log_file.flush()
        text = log_path.read_text(errors="replace")
        final = re.search(r"vidrec: final: (\{.*\})", text)
        if final:
            data = json.loads(final.group(1))
            stop["final_published_kafka"] = sum(s["counters"]["published"].get("kafka", 0) for s in data["streams"])
            stop["final_streams"] = {s["id"]: s["counters"] for s in data["streams"]}
        stop["kafka_end_offset"] = kafka_end_offset(args.kafka, topic)
        rds = redis.Redis.from_url(args.redis)
        stop["redis_history"] = {sid: rds.zcard(f"{key_prefix}:history:{sid}") for sid in (*CAMERAS, LOOP_ID)}
        stop["log_problems"] = [ln.strip()[:300] for ln in text.splitlines()
                                if "final: {" not in ln and re.search(r"Traceback|\berror\b|\bwarning\b", ln, re.I)][:20]

        base = min(samples, key=lambda s: abs(s["t"] - 60 * args.baseline_minute))
        end = samples[-1]
        checks, per_proc = evaluate(args, samples, base, end, stop, looper)
        ok = all(c[1] for c in checks)
        result = {"command": sys.argv, "code": code_version(), "minutes": args.minutes, "interval": args.interval,
                  "run_id": run_id, "topic": topic, "startup_s": startup_s,
                  "load_before": load_before, "load_after": os.getloadavg(), "nproc": os.cpu_count(),
                  "baseline_t": base["t"], "stop": stop, "loops": looper.loops, "looper_errors": looper.errors,
                  "per_process": per_proc, "checks": [{"check": c, "ok": o, "detail": d} for c, o, d in checks],
                  "verdict": "PASS" if ok else "FAIL", "samples": samples}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print_summary(args, result, base, end)
        for key in rds.scan_iter(f"{key_prefix}:*"):
            rds.delete(key)
        return 0 if ok else 1
    finally:
        looper.stop_event.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log_file.close()
        try:
            admin.delete_topics([topic])
        except Exception as exc:  # noqa: BLE001 - cleanup only
            print(f"(topic {topic} not deleted: {exc})", file=sys.stderr)
        admin.close()
        if args.keep_logs or not result:
            print(f"log kept: {log_path}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def probe_recognizer(args: argparse.Namespace) -> int:
    """Is the inference worker's RSS step a leak or ONNX Runtime's arena growing to the batches seen?"""
    import random

    import numpy as np
    import onnxruntime as ort

    sys.path.insert(0, str(REPO))
    if args.probe_recognizer == "arena-off":
        make_options = ort.SessionOptions

        def options_without_arena():
            options = make_options()
            options.enable_cpu_mem_arena = False
            return options

        ort.SessionOptions = options_without_arena
    from config import load_config
    from workers.system import build_recognizer

    def rss_mb() -> float:
        return read_status(os.getpid())["VmRSS"] / 1024

    recognizer = build_recognizer(load_config(None, [f"IndexProcess.index_dir={args.index_dir}"]))
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 255, (int(rng.integers(60, 300)), int(rng.integers(40, 200)), 3), dtype=np.uint8)
             for _ in range(24)]
    random.seed(1)
    level = rss_mb()
    largest = 0
    print(f"{args.probe_recognizer}: recognizer loaded, RSS {level:.1f} MB")
    for i in range(600):
        n = random.randint(1, 24)
        largest = max(largest, n)
        recognizer.embed(crops[:n])
        now = rss_mb()
        if now > level + 5:
            print(f"  batch {i:3d} ({n:2d} crops, largest so far {largest:2d}): {level:.1f} -> {now:.1f} MB")
            level = now
        if i + 1 in (100, 300, 600):
            print(f"  after {i + 1} batches: {now:.1f} MB")
    return 0


def report(args: argparse.Namespace) -> int:
    r = json.loads(args.report.read_text())
    samples = r["samples"]
    args.minutes = r.get("minutes", round(samples[-1]["t"] / 60, 1))
    args.interval = r.get("interval", 10.0)
    base = min(samples, key=lambda x: abs(x["t"] - 60 * args.baseline_minute))
    looper = argparse.Namespace(loops=r["loops"], errors=r["looper_errors"])
    checks, per_proc = evaluate(args, samples, base, samples[-1], r["stop"], looper)  # type: ignore[arg-type]
    r.update(per_process=per_proc, checks=[{"check": c, "ok": o, "detail": d} for c, o, d in checks],
             verdict="PASS" if all(o for _, o, _ in checks) else "FAIL")
    print_summary(args, r, base, samples[-1])
    return 0 if r["verdict"] == "PASS" else 1


def fmt_slope(kb_min: float | None) -> str:
    return "-" if kb_min is None else f"{kb_min / 1024:+.2f}"


def print_summary(args, r: dict, base: dict, end: dict) -> None:
    st = r["stop"]
    print(f"\ncode: {r.get('code', '?')}")
    print(f"run {r['run_id']}: {args.minutes:g} min from t = 0 (startup {r['startup_s']:.0f} s), sample every "
          f"{args.interval:g} s, baseline t = {base['t']:.0f} s, {r['nproc']} CPUs; load average before "
          f"{' '.join(f'{v:.2f}' for v in r['load_before'])}, after {' '.join(f'{v:.2f}' for v in r['load_after'])}; "
          f"machine busy {st['machine_busy_pct']:.0f}% over the soak\n")
    print("| process | RSS at baseline (MB) | min / max after (MB) | end (MB) | worst vs baseline | RssAnon base → end (MB) "
          "| trend after baseline / last half (MB/min) | largest 10 s step (MB, at t) "
          "| /metrics RSS end (MB) | fds base → end (max) | threads base → end (max) | vidrec segments mapped base → end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for role, p in r["per_process"].items():
        step_at = "-" if p["max_step_t"] is None else f"{p['max_step_t']:.0f} s"
        print(f"| {role} | {mb(p['base_kb'])} | {mb(p['min_kb'])} / {mb(p['max_kb'])} | {mb(p['end_kb'])} "
              f"| {p['worst_pct']:+.1f} % | {mb(p.get('anon_base_kb'))} → {mb(p.get('anon_end_kb'))} "
              f"| {fmt_slope(p['slope_kb_min'])} / {fmt_slope(p['slope_half_kb_min'])} "
              f"| {p['max_step_kb'] / 1024:+.1f} ({step_at}) "
              f"| {mb(p.get('metrics_end_kb'))} | {p.get('fds_base')} → {p.get('fds_end')} ({p.get('fds_max')}) "
              f"| {p.get('threads_base')} → {p.get('threads_end')} ({p.get('threads_max')}) "
              f"| {p.get('shm_mapped_base')} → {p.get('shm_mapped_end')} |")
    minutes = [x for x in r["samples"] if abs(x["t"] / 60 - round(x["t"] / 60)) * 60 < args.interval / 2]
    roles = list(r["per_process"])
    print("\nRSS (MB) per minute:\n\n| t (s) | " + " | ".join(roles) + " | fds (sum) | file passes |")
    print("|---" * (len(roles) + 3) + "|")
    for x in minutes:
        print(f"| {x['t']:.0f} | " + " | ".join(mb(x["procs"][q]["rss_kb"]) if q in x["procs"] else "-" for q in roles)
              + f" | {sum(q['fds'] for q in x['procs'].values())} | {x['loops']} |")
    span = end["t"] - base["t"]
    print("\n| stream | processed at t=0 → baseline → end | results/s after baseline | decoded end | published kafka / redis (final) |")
    print("|---|---|---|---|---|")
    first = r["samples"][0]
    for sid in end["streams"]:
        a, b, e = first["streams"][sid], base["streams"][sid], end["streams"][sid]
        fin = st.get("final_streams", {}).get(sid, {}).get("published", {})
        print(f"| {sid} | {a['processed']} → {b['processed']} → {e['processed']} "
              f"| {(e['processed'] - b['processed']) / max(span, 1e-9):.2f} | {e.get('decoded')} "
              f"| {fin.get('kafka', '-')} / {fin.get('redis', '-')} |")
    print(f"\n/dev/shm: this run's segments {base['shm']['count']} at baseline ({base['shm']['bytes'] / 2**20:.1f} MiB), "
          f"{end['shm']['count']} at the end, {len(st['run_segments_left'])} after SIGTERM; all vidrec_* entries "
          f"{st['shm_all_before']} before the run, {st['shm_all_after']} after (other runs on this machine included). "
          f"File passes: {len(r['loops'])}. Exit {st['exit_code']} in {st['stop_s']:.1f} s. Kafka end offset "
          f"{st['kafka_end_offset']}, final published {st.get('final_published_kafka')}; Redis history sizes "
          f"{st['redis_history']}.")
    if st["log_problems"]:
        print(f"log lines with error/warning: {len(st['log_problems'])}, first: {st['log_problems'][0]}")
    print("\n| check | ok | detail |")
    print("|---|---|---|")
    for c in r["checks"]:
        print(f"| {c['check']} | {'yes' if c['ok'] else 'NO'} | {c['detail']} |")
    print(f"\nverdict: {r['verdict']}")


if __name__ == "__main__":
    sys.exit(main())
