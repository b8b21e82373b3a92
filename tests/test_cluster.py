"""`vidrec serve --cluster NAME` end to end, the issue's shape: three nodes share six RTSP cameras; real nodes
(subprocesses), real RTSP cameras, the real broker.

One scenario, each step building on the last (a node costs its model load, the machine has two cores):

1. three nodes start; all six cameras publish, each from exactly one node, and ``GET /cluster`` says which;
2. the node running the most cameras is killed (SIGKILL): its cameras publish again from the others within the
   session timeout plus a few seconds, the untouched cameras without a gap in ``seq``;
3. a fourth node, with a gallery the others lack, joins and takes cameras over while the rest run on without a
   gap; the gallery difference is reported;
4. that node is cut off (all its processes frozen) past the session timeout: its cameras move, and once resumed
   it stops them itself before it rejoins;
5. a camera is removed through a node that does not run it;
6. malformed specs on the streams topic are skipped and counted, every node carrying on;
7. one node is stopped (SIGTERM): its cameras move at once and no ``seq`` is published twice; the last two stop
   too, and nothing of any node is left running or in /dev/shm.

The streams topic has six partitions and the camera ids are chosen one per partition (``ids_by_partition``):
the cooperative-sticky assignor balances partitions, not keys, so with one key per partition three nodes run
two cameras each and two nodes three each: every node the group gives partitions runs cameras. Every wait polls
with a deadline: a bound for a slow machine, not a timing claim.
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
from tests.cluster_helpers import (SESSION_MS, cluster, cluster_name, crashes, from_run, ids_by_partition,
                                   metrics_text, pids_alive, placement, process_ids, run_id_of, runs, seq_gaps,
                                   shm_of, start_node)
from tests.serve_helpers import ServeProcess, TopicReader, wait_for

SESSION_S = SESSION_MS / 1000
PARTITIONS = 6
# (path on the test RTSP server, every_nth): about 2 results a second each, to leave two cores room for four
# nodes. The server shares one encode of a path among its sessions, so two cameras on a path cost one encode.
CAMERAS = [("clock", 8), ("bikes", 12), ("vtest", 5), ("clock", 8), ("bikes", 12), ("vtest", 5)]
POLL = 0.25  # seconds between HTTP polls


def published_by_one(reader: TopicReader, placed: dict[str, str], run_of: dict[str, str], since: float) -> None:
    """Each camera's results of frames captured after ``since`` come only from the node ``placed`` names: the
    old owner of a moved camera stopped before its new owner started (cooperative handover), so a frame captured
    once the placement is seen settled is published by its owner alone."""
    wait_for(lambda: all(len([m for m in reader.of(s) if m.value["capture_time"] > since]) >= 2 for s in placed), 30,
             "two results of every camera after the placement settled", every_s=POLL)
    for sid, node in placed.items():
        publishers = {m.value["run_id"].split(".")[0] for m in reader.of(sid) if m.value["capture_time"] > since}
        assert publishers == {run_of[node]}, (sid, node, publishers)


@pytest.mark.timeout(480)
def test_three_nodes_six_cameras_fail_over_grow_and_leave(tmp_path: Path, rtsp_base: str, kafka_bootstrap: str) -> None:
    name = cluster_name()
    results = f"{name}.results"
    ids = ids_by_partition(dict.fromkeys(range(PARTITIONS), 1), PARTITIONS)
    config = tmp_path / "cameras.yaml"
    config.write_text("streams:\n" + "".join(
        f"  - {{id: {sid}, url: '{rtsp_base}/{path}', every_nth: {nth}}}\n" for sid, (path, nth) in zip(ids, CAMERAS)))
    nodes: dict[str, ServeProcess] = {}
    reader = TopicReader(kafka_bootstrap, results)
    try:
        for key in ("a", "b", "c"):
            nodes[key] = start_node(name, key, tmp_path, partitions=PARTITIONS, results_topic=results,
                                    extra=["--config", str(config)] if key == "a" else [])
        wait_for(lambda: all(n.healthy() for n in nodes.values()), 180, "three healthy nodes", every_s=POLL)
        run_of = {key: run_id_of(n) for key, n in nodes.items()}

        # 1. All six cameras publish, each from exactly one node, and GET /cluster on any node says which.
        wait_for(lambda: all(reader.count(s) >= 3 for s in ids), 90, "results of every camera", every_s=POLL)
        # (the first node to join took every partition; wait for the rebalances that spread them)
        placed = wait_for(lambda: (p := placement(nodes["c"], ids)) and set(p.values()) == {"a", "b", "c"} and p,
                          60, "each camera reported by one node, all three nodes running cameras", every_s=POLL)
        published_by_one(reader, placed, run_of, time.time())
        view = cluster(nodes["a"])
        assert [n["node"] for n in view["nodes"]] == ["a", "b", "c"] and view["pending"] == []
        assert {n["node"]: n["http"] for n in view["nodes"]} == {k: n.base.removeprefix("http://") for k, n in nodes.items()}
        scoped = nodes["b"].api("GET", "/streams?scope=cluster").body["streams"]
        assert {s["id"]: s["node"] for s in scoped} == placed
        assert 'vidrec_cluster_nodes{node="a"} 3.0' in metrics_text(nodes["a"])

        # 2. SIGKILL the node running the most cameras: its cameras publish again from the others within the
        #    session timeout plus a few seconds; the untouched cameras go on without a gap.
        victim = max(sorted(nodes), key=lambda k: list(placed.values()).count(k))
        survivors = [k for k in nodes if k != victim]
        moved = [sid for sid, v in placed.items() if v == victim]
        stayed = [sid for sid, v in placed.items() if v != victim]
        victim_pids = process_ids(nodes[victim])
        nodes[victim].kill()
        killed_at = time.time()

        def from_survivors(sid: str, after: float) -> list:
            return [m for k in survivors for m in from_run(reader, sid, run_of[k], after)]

        wait_for(lambda: all(from_survivors(sid, killed_at) for sid in moved), SESSION_S + 25,
                 f"results of {moved} from {survivors} after node {victim} was killed", every_s=POLL)
        failover_s = max(min(m.arrived for m in from_survivors(sid, killed_at)) - killed_at for sid in moved)
        print(f"SIGKILL failover: {failover_s:.1f}s (session timeout {SESSION_S:g}s)")
        for sid in stayed:
            assert seq_gaps(from_run(reader, sid, run_of[placed[sid]])) == [], sid
        wait_for(lambda: not pids_alive(victim_pids), 30, "the killed node's workers gone", every_s=POLL)
        wait_for(lambda: [n["node"] for n in cluster(nodes[survivors[0]])["nodes"]] == survivors, 15,
                 "the killed node off GET /cluster", every_s=POLL)
        before_join = wait_for(lambda: (p := placement(nodes[survivors[0]], ids)) and set(p.values()) == set(survivors)
                               and p, 30, "every camera on one of the survivors", every_s=POLL)

        # 3. A fourth node (with a gallery the others lack) joins: it takes cameras over; the others keep running
        #    without a gap; the differing gallery versions are reported.
        gallery = sample_gallery(tmp_path / "index")
        nodes["d"] = start_node(name, "d", tmp_path, partitions=PARTITIONS, results_topic=results, extra=gallery)
        wait_for(nodes["d"].healthy, 180, "node d healthy", every_s=POLL)
        run_of["d"] = run_id_of(nodes["d"])
        live = [*survivors, "d"]
        joined_at = time.time()
        wait_for(lambda: any(from_run(reader, sid, run_of["d"]) for sid in ids), 60, "results from node d",
                 every_s=POLL)
        after_join = wait_for(lambda: (p := placement(nodes[survivors[0]], ids)) and set(p.values()) == set(live) and p,
                              30, "each camera on one node after the join, all three running cameras", every_s=POLL)
        published_by_one(reader, after_join, run_of, time.time())
        kept = [sid for sid, v in after_join.items() if v == before_join[sid]]
        assert kept, (before_join, after_join)
        wait_for(lambda: all(from_run(reader, sid, run_of[after_join[sid]], joined_at + 3) for sid in kept), 30,
                 "the kept cameras still publishing", every_s=POLL)
        for sid in kept:
            assert seq_gaps(from_run(reader, sid, run_of[after_join[sid]])) == [], sid
        warnings = wait_for(lambda: cluster(nodes[survivors[0]])["warnings"], 15, "a gallery warning", every_s=POLL)
        assert "different gallery versions" in warnings[0] and f"{survivors[0]}: none" in warnings[0], warnings
        assert "different gallery versions" in nodes["d"].log_text()

        # 4. Node d is cut off (every process of it frozen) past the session timeout: its cameras move to the
        #    others; resumed, d stops them itself before it rejoins, and the cluster settles with each camera on
        #    one node again.
        on_d = [sid for sid, v in after_join.items() if v == "d"]
        frozen = process_ids(nodes["d"])
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        frozen_at = time.time()
        try:
            wait_for(lambda: all(from_survivors(sid, frozen_at) for sid in on_d), SESSION_S + 25,
                     f"{on_d} from {survivors} while node d is cut off", every_s=POLL)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        resumed_at = time.time()
        # whichever comes first stops its streams: its own fence (the coordinator silent past the session timeout)
        # or kafka-python finding the member expired (the partitions lost)
        wait_for(lambda: re.search(r"no word from the group coordinator|partitions \[[0-9, ]+\] lost: stopping",
                                   nodes["d"].log_text()), 15, "node d stopping its streams itself", every_s=POLL)
        after_cut = wait_for(lambda: (p := placement(nodes[survivors[0]], ids)) and set(p.values()) == set(live) and p,
                             60, "each camera on one node after node d is back", every_s=POLL)
        # what d published after it resumed of the cameras others now run: the cut-off overlap
        late = [m.arrived - resumed_at for sid in on_d if after_cut[sid] != "d"
                for m in from_run(reader, sid, run_of["d"], resumed_at)]
        print(f"cut off: {len(late)} result(s) of moved cameras from node d after it resumed, the last "
              f"{max(late, default=0):.1f}s after")

        # 5. Remove a camera through a node that does not run it.
        gone = sorted(after_cut)[0]
        owner = after_cut[gone]
        via = next(k for k in live if k != owner)
        removal = nodes[via].api("DELETE", f"/streams/{gone}")
        assert removal.status == 202 and removal.body == {"id": gone, "removing": True, "node": owner}, removal
        wait_for(lambda: gone not in nodes[owner].streams(), 30, f"{gone} stopped on node {owner}", every_s=POLL)
        stopped_at = time.time()
        for key in live:  # every node's catalog reads the tombstone
            wait_for(lambda: gone not in {s["id"] for s in nodes[key].api("GET", "/streams?scope=cluster").body["streams"]},
                     15, f"{gone} off GET /streams?scope=cluster on node {key}", every_s=POLL)
        assert nodes[via].api("DELETE", f"/streams/{gone}").status == 404
        others = [sid for sid in ids if sid != gone]
        wait_for(lambda: all(len([m for m in reader.of(s) if m.arrived > stopped_at]) >= 3 for s in others), 30,
                 "results of the other cameras after the removal", every_s=POLL)
        assert not [m for m in reader.of(gone) if m.value["capture_time"] > stopped_at + 1]

        # 6. Malformed specs on the streams topic: logged, skipped, counted; every node carries on.
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        producer.send(f"{name}.streams", key=b"broken", value=b"{not json")
        producer.send(f"{name}.streams", key=b"odd", value=b'{"id": "odd", "url": "rtsp://h/1", "fps": 5}')
        producer.close(timeout=10)
        for key in live:
            wait_for(lambda: cluster(nodes[key])["member"]["bad_specs"] == 2, 15, f"2 bad specs counted on {key}",
                     every_s=POLL)
            assert f'vidrec_cluster_bad_specs_total{{node="{key}"}} 2.0' in metrics_text(nodes[key])
            assert "skipped: stream 'broken': value is not JSON" in nodes[key].log_text()
            assert nodes[key].healthy()

        # 7. SIGTERM the node running the most cameras: it drains and leaves; its cameras move to the others at
        #    once, and the drained node published none of them after its streams stopped (no seq twice).
        settled = wait_for(lambda: placement(nodes[live[0]], others), 30, "the cameras placed", every_s=POLL)
        leaver = max(live, key=lambda k: list(settled.values()).count(k))
        leaving = [sid for sid, v in settled.items() if v == leaver]
        rest = [k for k in live if k != leaver]
        terminated_at = time.time()
        assert nodes[leaver].terminate(90) == 0
        wait_for(lambda: all(any(from_run(reader, sid, run_of[k], terminated_at) for k in rest) for sid in leaving), 30,
                 f"results of {leaving} from {rest} after the SIGTERM", every_s=POLL)
        handover_s = max(min(m.arrived for k in rest for m in from_run(reader, sid, run_of[k], terminated_at))
                         - terminated_at for sid in leaving)
        print(f"SIGTERM handover: {handover_s:.1f}s")
        for sid in leaving:
            for run, messages in runs(reader.of(sid)).items():
                seqs = [m.value["seq"] for m in messages]
                assert len(seqs) == len(set(seqs)), (sid, run)

        # The last nodes stop; nothing of any node is left running or in /dev/shm.
        last_pids = [pid for k in rest for pid in process_ids(nodes[k])]
        for key in rest:  # both at once: the first one's cameras may move to the second while it stops
            nodes[key].proc.send_signal(signal.SIGTERM)
        for key in rest:
            assert nodes[key].proc.wait(90) == 0, key
        assert not pids_alive(last_pids)
        for key, run_id in run_of.items():
            if key != victim:  # a SIGKILLed supervisor cannot sweep; its workers' leftovers are printed below
                assert shm_of(run_id) == [], key
        print(f"left in /dev/shm by the SIGKILLed node: {shm_of(run_of[victim])}")
        for key, node in nodes.items():
            assert crashes(node.log_text()) == [], key
    finally:
        reader.close()
        for node in nodes.values():
            node.kill()
