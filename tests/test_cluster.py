"""`vidrec serve --cluster NAME` end to end: real nodes (subprocesses), real RTSP cameras, the real broker.

One scenario, each step building on the last (a node costs its model load, the machine has two cores): two
nodes share three cameras; the node running the most is killed (SIGKILL) and its cameras publish again from the
survivor, the survivor's own camera without a gap in ``seq``; a third node, with a gallery the others lack, joins
and takes cameras over while the rest keep running without a gap, and the gallery difference is reported; that
node is cut off (all its processes frozen) past the session timeout, its cameras move, and once resumed it stops
them itself before it rejoins; a camera is removed through a node that does not run it; malformed specs on the
streams topic are skipped and counted; the survivor is stopped (SIGTERM) and its cameras move at once; the last node stops and nothing of any
node is left running or in /dev/shm.

The streams topic has two partitions, so that with two nodes each owns one, and the camera ids are chosen by
their partition (two in one, one in the other): each node runs at least one camera, whatever the assignor picks.
Every wait polls with a deadline: a bound for a slow machine, not a timing claim.
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer

from tests.cli_helpers import sample_gallery
from tests.cluster_helpers import (SESSION_MS, cluster, cluster_name, ids_by_partition, metrics_text, placement,
                                   runs, seq_gaps, shm_of, start_node)
from tests.serve_helpers import ServeProcess, TopicReader, wait_for

SESSION_S = SESSION_MS / 1000
PARTITIONS = 2
# (path on the test RTSP server, every_nth): about 5 results a second each, to keep two cores free enough.
CAMERAS = [("clock", 3), ("bikes", 5), ("vtest", 2)]
POLL = 0.25  # seconds between HTTP polls


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
    workers = node.api("GET", "/healthz").body["workers"]
    return [node.proc.pid, workers["inference"], *workers["ingest"]]


def from_run(reader: TopicReader, stream_id: str, run_id: str, after: float = 0.0) -> list:
    return [m for m in reader.of(stream_id) if m.value["run_id"].split(".")[0] == run_id and m.arrived > after]


@pytest.mark.timeout(420)
def test_cameras_fail_over_move_and_leave(tmp_path: Path, rtsp_base: str, kafka_bootstrap: str) -> None:
    name = cluster_name()
    results = f"{name}.results"
    ids = ids_by_partition({0: 2, 1: 1}, PARTITIONS)
    config = tmp_path / "cameras.yaml"
    config.write_text("streams:\n" + "".join(
        f"  - {{id: {sid}, url: '{rtsp_base}/{path}', every_nth: {nth}}}\n" for sid, (path, nth) in zip(ids, CAMERAS)))
    nodes: dict[str, ServeProcess] = {}
    reader = TopicReader(kafka_bootstrap, results)
    try:
        nodes["a"] = start_node(name, "a", tmp_path, partitions=PARTITIONS, results_topic=results,
                                extra=["--config", str(config)])
        nodes["b"] = start_node(name, "b", tmp_path, partitions=PARTITIONS, results_topic=results)
        wait_for(lambda: all(n.healthy() for n in nodes.values()), 180, "two healthy nodes", every_s=POLL)
        run_of = {key: n.api("GET", "/healthz").body["run_id"] for key, n in nodes.items()}

        # 1. Every camera publishes, each from exactly one node, and GET /cluster on either node says which.
        wait_for(lambda: all(reader.count(s) >= 3 for s in ids), 90, "results of every camera", every_s=POLL)
        # (right after the second node joins, the first may still own both partitions: wait for the rebalance)
        placed = wait_for(lambda: (p := placement(nodes["b"], ids)) and set(p.values()) == {"a", "b"} and p, 30,
                          "each camera reported by one node, both nodes running cameras", every_s=POLL)  # one partition each: both run cameras
        view = cluster(nodes["a"])
        assert [n["node"] for n in view["nodes"]] == ["a", "b"] and view["pending"] == []
        assert {n["node"]: n["http"] for n in view["nodes"]} == {k: n.base.removeprefix("http://") for k, n in nodes.items()}
        scoped = nodes["a"].api("GET", "/streams?scope=cluster").body["streams"]
        assert {s["id"]: s["node"] for s in scoped} == placed

        # 2. SIGKILL the node running the most cameras: its cameras publish again from the survivor within the
        #    session timeout plus a few seconds; the survivor's own camera goes on without a gap.
        victim = max(("a", "b"), key=lambda k: list(placed.values()).count(k))
        survivor = "b" if victim == "a" else "a"
        moved = [sid for sid, v in placed.items() if v == victim]
        stayed = [sid for sid, v in placed.items() if v == survivor]
        victim_pids = process_ids(nodes[victim])
        nodes[victim].kill()
        killed_at = time.time()
        wait_for(lambda: all(from_run(reader, sid, run_of[survivor], killed_at) for sid in moved), SESSION_S + 25,
                 f"results of {moved} from node {survivor} after node {victim} was killed", every_s=POLL)
        failover_s = max(from_run(reader, sid, run_of[survivor], killed_at)[0].arrived - killed_at for sid in moved)
        print(f"SIGKILL failover: {failover_s:.1f}s (session timeout {SESSION_S:g}s)")
        for sid in stayed:
            assert seq_gaps(from_run(reader, sid, run_of[survivor])) == [], sid
        wait_for(lambda: not pids_alive(victim_pids), 30, "the killed node's workers gone", every_s=POLL)
        wait_for(lambda: [n["node"] for n in cluster(nodes[survivor])["nodes"]] == [survivor], 15,
                 "the killed node off GET /cluster", every_s=POLL)

        # 3. A third node (with a gallery the survivor lacks) joins: it takes a partition's cameras; the others
        #    keep running without a gap; the differing gallery versions are reported.
        gallery = sample_gallery(tmp_path / "index")
        nodes["c"] = start_node(name, "c", tmp_path, partitions=PARTITIONS, results_topic=results, extra=gallery)
        wait_for(nodes["c"].healthy, 180, "node c healthy", every_s=POLL)
        run_of["c"] = nodes["c"].api("GET", "/healthz").body["run_id"]
        joined_at = time.time()
        wait_for(lambda: any(from_run(reader, sid, run_of["c"]) for sid in ids), 60, "results from node c",
                 every_s=POLL)
        after_join = wait_for(lambda: (p := placement(nodes[survivor], ids)) and set(p.values()) == {survivor, "c"} and p,
                              30, "each camera on one node after the join, both nodes running cameras", every_s=POLL)
        on_c = [sid for sid, v in after_join.items() if v == "c"]
        kept = [sid for sid, v in after_join.items() if v == survivor]
        assert on_c and kept, after_join
        wait_for(lambda: all(from_run(reader, sid, run_of[survivor], joined_at + 3) for sid in kept), 30,
                 "the kept cameras still publishing", every_s=POLL)
        for sid in kept:
            assert seq_gaps(from_run(reader, sid, run_of[survivor])) == [], sid
        warnings = wait_for(lambda: cluster(nodes[survivor])["warnings"], 15, "a gallery warning", every_s=POLL)
        assert "different gallery versions" in warnings[0] and f"{survivor}: none" in warnings[0], warnings
        assert "different gallery versions" in nodes["c"].log_text()

        # 3b. Node c is cut off (every process of it frozen) past the session timeout: its cameras move to the
        #     survivor; resumed, c fences itself (stops them) before it rejoins, and the cluster settles with each
        #     camera on one node again.
        frozen = process_ids(nodes["c"])
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        frozen_at = time.time()
        try:
            wait_for(lambda: all(from_run(reader, sid, run_of[survivor], frozen_at) for sid in on_c), SESSION_S + 25,
                     f"{on_c} from node {survivor} while node c is cut off", every_s=POLL)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        resumed_at = time.time()
        # whichever comes first stops its streams: its own fence (the coordinator silent past the session timeout)
        # or kafka-python finding the member expired (the partitions lost)
        wait_for(lambda: re.search(r"no word from the group coordinator|partitions \[[0-9, ]+\] lost: stopping",
                                   nodes["c"].log_text()), 15, "node c stopping its streams itself", every_s=POLL)
        after_cut = wait_for(lambda: (p := placement(nodes[survivor], ids)) and set(p.values()) == {survivor, "c"} and p,
                             60, "each camera on one node after node c is back", every_s=POLL)
        # what c published after it resumed of the cameras the survivor now runs: the cut-off overlap
        late = [m.arrived - resumed_at for sid in on_c if after_cut[sid] == survivor
                for m in from_run(reader, sid, run_of["c"], resumed_at)]
        print(f"cut off: {len(late)} result(s) of moved cameras from node c after it resumed, the last "
              f"{max(late, default=0):.1f}s after")
        on_c = [sid for sid, v in after_cut.items() if v == "c"]

        # 4. Remove a camera through the node that does not run it.
        gone = on_c[0]
        removal = nodes[survivor].api("DELETE", f"/streams/{gone}")
        assert removal.status == 202 and removal.body == {"id": gone, "removing": True, "node": "c"}, removal
        wait_for(lambda: gone not in nodes["c"].streams(), 30, f"{gone} stopped on node c", every_s=POLL)
        stopped_at = time.time()
        for key in (survivor, "c"):  # every node's catalog reads the tombstone
            wait_for(lambda: gone not in {s["id"] for s in nodes[key].api("GET", "/streams?scope=cluster").body["streams"]},
                     15, f"{gone} off GET /streams?scope=cluster on node {key}", every_s=POLL)
        assert nodes[survivor].api("DELETE", f"/streams/{gone}").status == 404
        others = [sid for sid in ids if sid != gone]
        wait_for(lambda: all(len([m for m in reader.of(s) if m.arrived > stopped_at]) >= 3 for s in others), 30,
                 "results of the other cameras after the removal", every_s=POLL)
        assert not [m for m in reader.of(gone) if m.value["capture_time"] > stopped_at + 1]

        # 5. Malformed specs on the streams topic: logged, skipped, counted; both nodes carry on.
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        producer.send(f"{name}.streams", key=b"broken", value=b"{not json")
        producer.send(f"{name}.streams", key=b"odd", value=b'{"id": "odd", "url": "rtsp://h/1", "fps": 5}')
        producer.close(timeout=10)
        for key in (survivor, "c"):
            wait_for(lambda: cluster(nodes[key])["member"]["bad_specs"] == 2, 15, f"2 bad specs counted on {key}",
                     every_s=POLL)
            assert f'vidrec_cluster_bad_specs_total{{node="{key}"}} 2.0' in metrics_text(nodes[key])
            assert "skipped: stream 'broken': value is not JSON" in nodes[key].log_text()
            assert nodes[key].healthy()

        # 6. SIGTERM the survivor: it drains and leaves; its cameras move to c at once.
        leaving = [sid for sid in kept if sid != gone]
        terminated_at = time.time()
        assert nodes[survivor].terminate(90) == 0
        wait_for(lambda: all(from_run(reader, sid, run_of["c"], terminated_at) for sid in leaving), 30,
                 f"results of {leaving} from node c after the SIGTERM", every_s=POLL)
        handover_s = max(from_run(reader, sid, run_of["c"], terminated_at)[0].arrived - terminated_at for sid in leaving)
        print(f"SIGTERM handover: {handover_s:.1f}s")
        # the drained node published none of them after its streams stopped, so no seq was published twice
        for sid in leaving:
            for run, messages in runs(reader.of(sid)).items():
                seqs = [m.value["seq"] for m in messages]
                assert len(seqs) == len(set(seqs)), (sid, run)

        # 7. The last node stops; nothing of any node is left running or in /dev/shm.
        c_pids = process_ids(nodes["c"])
        assert nodes["c"].terminate(90) == 0
        assert not pids_alive(c_pids)
        for key, run_id in run_of.items():
            if key != victim:  # a SIGKILLed supervisor cannot sweep; its workers' leftovers are checked below
                assert shm_of(run_id) == [], key
        print(f"left in /dev/shm by the SIGKILLed node: {shm_of(run_of[victim])}")
    finally:
        reader.close()
        for node in nodes.values():
            node.kill()
