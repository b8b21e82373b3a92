"""Handover times of `vidrec serve --cluster`: how long a camera is dark when its node is killed (SIGKILL) or
stopped (SIGTERM), and whether two nodes ever published it at once (the overlap).

Run (services up; see docs/benchmarks.md):

    set -a; source /path/to/services.env; set +a      # KAFKA_BOOTSTRAP, RTSP_BASE, VIDREC_MODEL_DIR
    .venv/bin/python bench/handover.py --runs 5 [--session-ms 6000] [--out out/handover.json]

Two real nodes (subprocesses, one ingest process each) share two cameras through a streams topic with two
partitions, so each node owns one partition and runs one camera (the ids are chosen by partition). A round is one
SIGKILL run and one SIGTERM run (the two kinds alternate, so a load change on the machine touches both): the node
running camera ``cam-a`` is killed or stopped, the time until the other node's first result of ``cam-a`` arrives is
measured on a Kafka consumer of the results topic, then a fresh node is started in its place and the next run
waits until each node runs one camera again.

Per run:
- ``dark_s``: from the signal to the first result of the camera from the new owner (arrival at the consumer);
- ``gap_s``: from the last result from the old owner to the first from the new one (arrival; the camera's dark
  time as a consumer sees it: negative would mean both published at once);
- ``overlap_s``: max(0, last old arrival - first new arrival), and ``overlap_results``: results from the old owner
  that arrived after the new owner's first. Both 0 when at most one node published at any moment.

Summary: per kind, median / min / max of each, and the session timeout for comparison; JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.cluster_helpers import cluster_name, ids_by_partition, placement, start_node  # noqa: E402
from tests.polling import wait_for  # noqa: E402
from tests.serve_helpers import ServeProcess, TopicReader  # noqa: E402


def run_id(node: ServeProcess) -> str:
    return node.api("GET", "/healthz").body["run_id"]


def from_run(reader: TopicReader, sid: str, run: str) -> list:
    return [m for m in reader.of(sid) if m.value["run_id"].split(".")[0] == run]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each kind (SIGKILL, SIGTERM)")
    parser.add_argument("--session-ms", type=int, default=6000, help="Cluster.session_timeout_ms of the nodes")
    parser.add_argument("--out", type=Path, help="write every run as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("VIDREC_PRECISION", "fp32")
    rtsp = os.environ["RTSP_BASE"]
    name = cluster_name()
    results = f"{name}.results"
    partitions = 2
    target, other = ids_by_partition({0: 1, 1: 1}, partitions, prefix="cam-")
    tmp = Path(tempfile.mkdtemp(prefix="handover-"))
    config = tmp / "cameras.yaml"
    config.write_text("streams:\n"
                      f"  - {{id: {target}, url: '{rtsp}/clock', every_nth: 3}}\n"
                      f"  - {{id: {other}, url: '{rtsp}/bikes', every_nth: 5}}\n")
    session = ["-o", f"Cluster.session_timeout_ms={args.session_ms}",
               "-o", f"Cluster.heartbeat_interval_ms={max(100, args.session_ms // 6)}"]
    started = 0

    def new_node(extra: list[str] = []) -> ServeProcess:  # noqa: B006 - read only
        nonlocal started
        started += 1
        return start_node(name, f"n{started}", tmp, partitions=partitions, results_topic=results,
                          extra=[*session, *extra])

    reader = TopicReader(os.environ["KAFKA_BOOTSTRAP"], results)
    nodes: dict[str, ServeProcess] = {}
    runs: list[dict] = []
    try:
        for extra in (["--config", str(config)], []):
            node = new_node(extra)
            nodes[f"n{started}"] = node
        wait_for(lambda: all(n.healthy() for n in nodes.values()), 240, "healthy nodes", every_s=0.5)
        for i in range(2 * args.runs):
            kind = "SIGKILL" if i % 2 == 0 else "SIGTERM"
            def spread() -> dict[str, str] | None:
                where = placement(next(iter(nodes.values())), [target, other])
                return where if where and len(set(where.values())) == 2 else None

            where = wait_for(spread, 90, "one camera on each node", every_s=0.25)
            owner_key = where[target]
            owner = nodes.pop(owner_key)
            survivor_key, survivor = next(iter(nodes.items()))
            old_run, new_run = run_id(owner), run_id(survivor)
            wait_for(lambda: len(from_run(reader, target, old_run)) >= 3, 60, "results of the target", every_s=0.1)
            signalled = time.time()
            owner.proc.send_signal(signal.SIGKILL if kind == "SIGKILL" else signal.SIGTERM)
            # (the survivor may have run the camera before, in an earlier run: only what came after the signal)
            wait_for(lambda: [m for m in from_run(reader, target, new_run) if m.arrived > signalled],
                     args.session_ms / 1000 + 60, f"{target} from {survivor_key}", every_s=0.05)
            owner.proc.wait(120)
            time.sleep(1.0)  # results the old owner had in flight still arrive: let them, to count the overlap
            old = from_run(reader, target, old_run)
            new = [m for m in from_run(reader, target, new_run) if m.arrived > signalled]
            first_new = new[0].arrived
            last_old = old[-1].arrived
            row = {"kind": kind, "dark_s": first_new - signalled, "gap_s": first_new - last_old,
                   "overlap_s": max(0.0, last_old - first_new),
                   "overlap_results": sum(m.arrived > first_new for m in old),
                   "old": owner_key, "new": survivor_key, "exit_code": owner.proc.returncode}
            runs.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            replacement = new_node()
            nodes[f"n{started}"] = replacement
            wait_for(replacement.healthy, 240, "the replacement node healthy", every_s=0.5)
    finally:
        reader.close()
        for node in nodes.values():
            node.terminate(60) if node.alive() else node.kill()
    summary = {}
    for kind in ("SIGKILL", "SIGTERM"):
        rows = [r for r in runs if r["kind"] == kind]
        summary[kind] = {key: {"median": statistics.median(r[key] for r in rows), "min": min(r[key] for r in rows),
                               "max": max(r[key] for r in rows)}
                         for key in ("dark_s", "gap_s", "overlap_s", "overlap_results")}
    print(f"\nsession timeout {args.session_ms / 1000:g} s, {args.runs} runs each\n")
    print("| kind | dark_s median (min–max) | gap_s median (min–max) | overlap_s max | results in overlap, max |")
    print("|---|---|---|---|---|")
    for kind, s in summary.items():
        print(f"| {kind} | {s['dark_s']['median']:.1f} ({s['dark_s']['min']:.1f}–{s['dark_s']['max']:.1f}) "
              f"| {s['gap_s']['median']:.1f} ({s['gap_s']['min']:.1f}–{s['gap_s']['max']:.1f}) "
              f"| {s['overlap_s']['max']:.2f} | {s['overlap_results']['max']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"session_ms": args.session_ms, "runs": runs, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
