"""Static membership (``Cluster.static_membership: true``, ``group_instance_id`` = the node id): a rolling restart.

Two static nodes share two cameras, one partition each. One node is killed (SIGKILL) and started again with the
same node id before the group's session timeout runs out: the group gives it its partition back without a
rebalance, so its camera runs there again (a new ``run_id``), never on the other node, and the other node's
camera runs on without a gap in ``seq`` (its partition was never revoked). The session timeout here is long
enough to cover a restart with its model load on a loaded two-core machine; docs/cluster.md says to size it so.
Every wait polls with a deadline: a bound for a slow machine, not a timing claim.
"""
from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from tests.cluster_helpers import (cluster, cluster_name, from_run, ids_by_partition, pids_alive, placement,
                                   process_ids, run_id_of, seq_gaps, start_node)
from tests.serve_helpers import ServeProcess, TopicReader, wait_for

PARTITIONS = 2
SESSION_MS = 60_000  # covers a node's restart (process start, model load, join) with room on a loaded machine
CAMERAS = [("clock", 6), ("vtest", 4)]  # (path, every_nth): about 2.5 results a second each
POLL = 0.25


class GroupStates:
    """The group's states as the broker describes them (``Stable``, ``PreparingRebalance``, ...), sampled in a
    thread until ``close``: a rebalance shows as a state other than ``Stable``.

    A describe that fails (the coordinator busy on a loaded machine, a request timing out) is counted in
    ``errors`` and the sampling goes on: one failed request must neither end the watch nor pass for a state.
    """

    def __init__(self, bootstrap: str, group: str) -> None:
        self.group = group
        self.latest: str | None = None
        self.seen: set[str] = set()
        self.samples = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                described = self._admin.describe_groups([self.group])[self.group]
            except KafkaError as e:
                self.errors.append(repr(e))
                continue
            if described.get("error"):  # e.g. COORDINATOR_LOAD_IN_PROGRESS: no state to record
                self.errors.append(described["error"])
                continue
            with self._lock:
                self.latest = described["group_state"]
                self.seen.add(self.latest)
                self.samples += 1

    def watch_from_now(self) -> None:
        """Forget the states seen so far: what ``close`` returns starts here."""
        with self._lock:
            self.seen = set()
            self.samples = 0

    def summary(self) -> str:
        with self._lock:
            return f"latest {self.latest}, seen {sorted(self.seen)} in {self.samples} sample(s), errors {self.errors[-3:]}"

    def close(self) -> set[str]:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(10)
            self._admin.close()
        return self.seen


def partitions_of(node: ServeProcess, key: str) -> list[int]:
    return next(n["partitions"] for n in cluster(node)["nodes"] if n["node"] == key)


def assignments(node: ServeProcess) -> int:
    """How many times the group gave this node partitions (its log's "partitions [...] assigned" lines)."""
    return len(re.findall(r"partitions \[[0-9, ]+\] assigned", node.log_text()))


@pytest.mark.timeout(300)
def test_a_static_node_restarted_within_the_session_gets_its_cameras_back(tmp_path: Path, rtsp_base: str,
                                                                          kafka_bootstrap: str) -> None:
    name = cluster_name()
    results = f"{name}.results"
    ids = ids_by_partition({0: 1, 1: 1}, PARTITIONS)
    nodes: dict[str, ServeProcess] = {}
    reader = TopicReader(kafka_bootstrap, results)

    def node(key: str, log_name: str) -> ServeProcess:
        return start_node(name, key, tmp_path, partitions=PARTITIONS, results_topic=results, session_ms=SESSION_MS,
                          static=True, log_name=log_name)

    states: GroupStates | None = None
    try:
        nodes["a"] = node("a", "a")
        nodes["b"] = node("b", "b")
        wait_for(lambda: all(n.healthy() for n in nodes.values()), 180, "two healthy nodes", every_s=POLL)
        # (healthy before joined: POST /streams answers 503 until then)
        wait_for(lambda: all(n.api("GET", "/cluster").status == 200 for n in nodes.values()), 60,
                 "nodes in the cluster", every_s=POLL)
        for sid, (path, nth) in zip(ids, CAMERAS):  # written once: the restarted node writes nothing
            added = nodes["a"].api("POST", "/streams", {"id": sid, "url": f"{rtsp_base}/{path}", "every_nth": nth})
            assert added.status in (201, 202), added
        run_of = {key: run_id_of(n) for key, n in nodes.items()}
        placed = wait_for(lambda: (p := placement(nodes["b"], ids)) and set(p.values()) == {"a", "b"} and p, 60,
                          "one camera on each node", every_s=POLL)
        wait_for(lambda: all(from_run(reader, sid, run_of[placed[sid]]) for sid in ids), 60,
                 "results of both cameras from their nodes", every_s=POLL)
        (on_a,) = [sid for sid, v in placed.items() if v == "a"]
        (on_b,) = [sid for sid, v in placed.items() if v == "b"]
        a_partitions = partitions_of(nodes["b"], "a")
        b_assigned = assignments(nodes["b"])

        # SIGKILL node a and start it again with the same node id (so the same group_instance_id).
        a_pids = process_ids(nodes["a"])
        states = GroupStates(kafka_bootstrap, name)
        try:
            wait_for(lambda: states.latest == "Stable", 30, "the group described as stable", every_s=POLL)
        finally:
            print(f"group states before the kill: {states.summary()}")
        states.watch_from_now()
        nodes["a"].kill()
        killed_at = time.time()
        wait_for(lambda: not pids_alive(a_pids), 30, "the killed node's workers gone", every_s=POLL)
        nodes["a"] = node("a", "a2")
        wait_for(nodes["a"].healthy, 180, "node a healthy again", every_s=POLL)
        run_of["a2"] = run_id_of(nodes["a"])
        back = wait_for(lambda: from_run(reader, on_a, run_of["a2"]), 60, f"{on_a} from the restarted node a",
                        every_s=POLL)
        print(f"static restart: {on_a} dark for {back[0].arrived - killed_at:.1f}s (session timeout "
              f"{SESSION_MS / 1000:g}s)")

        # The group gave a its partition back without a rebalance (dynamic members would hold the group in
        # PreparingRebalance until the killed member's session ran out, and only then hand the partition over).
        watched = states.summary()
        assert states.close() == {"Stable"}, watched
        assert states.samples >= 10, f"too few samples of the group's state to speak for the restart: {watched}"
        # the same partitions, and b was never given a's
        assert partitions_of(nodes["b"], "a") == a_partitions
        assert partitions_of(nodes["a"], "b") == [p for p in range(PARTITIONS) if p not in a_partitions]
        assert not from_run(reader, on_a, run_of["b"], killed_at), f"{on_a} ran on node b: a rebalance moved it"
        assert assignments(nodes["b"]) == b_assigned, "node b was given partitions while a restarted"
        # b's camera ran on through the restart, without a gap, and is still publishing.
        resumed_at = time.time()
        wait_for(lambda: len(from_run(reader, on_b, run_of["b"], resumed_at)) >= 3, 30, f"{on_b} still publishing",
                 every_s=POLL)
        assert seq_gaps(from_run(reader, on_b, run_of["b"])) == [], on_b
        assert {m.value["run_id"].split(".")[0] for m in reader.of(on_b) if m.arrived > killed_at} == {run_of["b"]}

        for key in nodes:
            nodes[key].proc.send_signal(signal.SIGTERM)
        for key in nodes:
            assert nodes[key].proc.wait(90) == 0, key
    finally:
        if states is not None:
            states.close()
        reader.close()
        for n in nodes.values():
            n.kill()
