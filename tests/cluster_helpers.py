"""Real `vidrec serve --cluster NAME` nodes for the cluster tests and bench/handover.py: start one, read its
``GET /cluster``, pick stream ids by the partition they fall in, and read a stream's results for handovers."""
from __future__ import annotations

import os
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterable

from tests.serve_helpers import Message, ServeProcess, TopicReader, free_port
from workers.cluster_specs import partition_of

# A short session so that the tests see a dead node's streams move in seconds (the broker's minimum,
# group.min.session.timeout.ms, is 6000 by default).
SESSION_MS = 6000


def cluster_name() -> str:
    return f"vc{uuid.uuid4().hex[:8]}"


def start_node(name: str, node: str, tmp: Path, *, partitions: int, results_topic: str, extra: Iterable[str] = (),
               streams: Iterable[str] = (), session_ms: int = SESSION_MS, static: bool = False,
               log_name: str | None = None) -> ServeProcess:
    """One node: one ingest process, a short session (``session_ms``), results on ``results_topic``; with
    ``static``, static membership (``group_instance_id`` = ``node``). Its log is ``tmp/<log_name or node>.log``."""
    args = ["--kafka", os.environ["KAFKA_BOOTSTRAP"], "--topic", results_topic, "--cluster", name,
            "-o", f"Cluster.node={node}", "-o", f"Cluster.partitions={partitions}",
            "-o", f"Cluster.session_timeout_ms={session_ms}", "-o", "Cluster.heartbeat_interval_ms=1000",
            "-o", "Cluster.report_interval_s=1", "-o", "Service.ingest_processes=1",
            "-o", "Service.live.backoff_max_s=2", *extra]
    if static:
        args += ["-o", "Cluster.static_membership=true"]
    for stream in streams:
        args += ["--stream", stream]
    return ServeProcess(args, log_path=tmp / f"{log_name or node}.log", http_port=free_port())


def pids_alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    return alive


def process_ids(node: ServeProcess) -> list[int]:
    """The node's supervisor, inference and ingest processes."""
    workers = node.api("GET", "/healthz").body["workers"]
    return [node.proc.pid, workers["inference"], *workers["ingest"]]


def run_id_of(node: ServeProcess) -> str:
    return node.api("GET", "/healthz").body["run_id"]


def from_run(reader: TopicReader, stream_id: str, run_id: str, after: float = 0.0) -> list[Message]:
    """``stream_id``'s results published by the node process ``run_id``, arrived after ``after`` (wall clock)."""
    return [m for m in reader.of(stream_id) if m.value["run_id"].split(".")[0] == run_id and m.arrived > after]


def ids_by_partition(wanted: dict[int, int], partitions: int, prefix: str = "cam") -> list[str]:
    """Stream ids, ``wanted[p]`` of them falling in partition ``p`` of the streams topic."""
    out: list[str] = []
    counts = dict.fromkeys(wanted, 0)
    i = 0
    while any(counts[p] < n for p, n in wanted.items()):
        sid = f"{prefix}{i}"
        p = partition_of(sid, partitions)
        if p in counts and counts[p] < wanted[p]:
            counts[p] += 1
            out.append(sid)
        i += 1
    return out


def cluster(node: ServeProcess) -> dict[str, Any]:
    answer = node.api("GET", "/cluster")
    assert answer.status == 200, answer
    return answer.body


def runners(node: ServeProcess) -> dict[str, list[str]]:
    """Stream id -> the nodes that report running it, as ``node``'s ``GET /cluster`` shows."""
    out: dict[str, list[str]] = {}
    for entry in cluster(node)["nodes"]:
        for stream in entry["streams"]:
            if stream["state"] != "stopping":
                out.setdefault(stream["id"], []).append(entry["node"])
    return out


def runs(messages: list[Message]) -> dict[str, list[Message]]:
    """A stream's results by run id, in arrival order."""
    out: dict[str, list[Message]] = {}
    for m in messages:
        out.setdefault(m.value["run_id"], []).append(m)
    return out


def seq_gaps(messages: list[Message]) -> list[tuple[int, int]]:
    """(before, after) for each jump in ``seq`` within one run (a repeat is not a gap)."""
    seqs = sorted({m.value["seq"] for m in messages})
    return [(a, b) for a, b in zip(seqs, seqs[1:]) if b != a + 1]


def publisher_blocks(messages: list[Message]) -> list[str]:
    """The runs that published a stream, in capture-time order, repeats of the same run merged: a stream
    published by one node at a time gives each run one block; two nodes publishing it at once alternate."""
    blocks: list[str] = []
    for m in sorted(messages, key=lambda m: m.value["capture_time"]):
        run = m.value["run_id"].split(".")[0]
        if not blocks or blocks[-1] != run:
            blocks.append(run)
    return blocks


def crashes(log_text: str) -> list[str]:
    """The first frame of each traceback in a node's log, except kafka-python's network layer's, which logs a
    dropped connection (a broker stopped) with its traceback and carries on: those are not crashes."""
    lines = log_text.splitlines()
    firsts = [lines[i + 1] if i + 1 < len(lines) else "" for i, line in enumerate(lines)
              if line.startswith("Traceback (most recent call last):")]
    return [first for first in firsts if "/kafka/net/" not in first]


def shm_of(run_id: str) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"vidrec_{run_id}_")]


def metrics_text(node: ServeProcess) -> str:
    with urllib.request.urlopen(node.base + "/metrics", timeout=10) as response:
        return response.read().decode()


def placement(node: ServeProcess, ids: list[str]) -> dict[str, str] | None:
    """Stream id -> its node when each of ``ids`` (and nothing else) is reported by exactly one node; else None."""
    if node.api("GET", "/cluster").status != 200:  # 503 while the node joins
        return None
    found = runners(node)
    if sorted(found) != sorted(ids) or any(len(v) != 1 for v in found.values()):
        return None
    return {sid: v[0] for sid, v in found.items()}
