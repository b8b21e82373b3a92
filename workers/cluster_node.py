"""This node's side of a cluster (``vidrec serve --cluster NAME``), for the supervisor: join, write, read, leave.

The supervisor owns the streams and the processes; this object owns what only a clustered node has: the cluster's
topics, the ``SpecWriter`` of the streams topic (``POST``/``DELETE /streams`` and ``--stream`` write there,
workers/cluster_specs.py) and the ``ClusterMember`` thread (workers/cluster_member.py), which calls the supervisor
back through its ``ClusterHost`` methods to start and stop the streams of the partitions it holds. The answers of
``GET /cluster`` and ``GET /streams?scope=cluster`` are built here from the member's catalog and the nodes' reports
(workers/cluster_view.py), and so are the cluster's extra metrics (workers/cluster_metrics.py).

Never called with the supervisor's lock held: the member calls the supervisor under its own lock.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from config import VidrecConfig
from config.schema import StreamSpec
from stream.live import redact
from workers.cluster_member import ClusterHost, ClusterMember
from workers.cluster_specs import SpecWriter, ensure_topic, nodes_topic, streams_topic
from workers.cluster_view import cluster_streams, gallery_check
from workers.service_errors import Conflict, NotFound, ServiceError, Unavailable

log = logging.getLogger(__name__)


class ClusterNode:
    def __init__(self, cfg: VidrecConfig, host: ClusterHost, *, run_id: str) -> None:
        self.cfg = cfg
        self.name = cfg.Cluster.name
        self.node = cfg.Cluster.node
        self._host = host
        self.run_id = run_id
        self.member: ClusterMember | None = None  # set once joined
        self._writer: SpecWriter | None = None

    def join(self, specs: list[StreamSpec], *, http: str | None) -> None:
        """Create the cluster's topics if needed, write ``specs`` (the streams given at start), join the group;
        ServiceError in one line when Kafka cannot be used."""
        topic = streams_topic(self.cfg)
        try:
            partitions = ensure_topic(self.cfg, topic, self.cfg.Cluster.partitions)
            ensure_topic(self.cfg, nodes_topic(self.cfg), 1)
            self._writer = SpecWriter(self.cfg)
            for spec in specs:
                self._writer.put(spec)
            member = ClusterMember(self.cfg, self._host, partitions=partitions, http=http, run_id=self.run_id)
            member.start()
        except Exception as exc:  # noqa: BLE001 - Kafka's errors, said in one line
            if self._writer is not None:
                self._writer.close()
            raise ServiceError(f"cluster {self.name!r}: cannot join through Kafka at "
                               f"{self.cfg.Kafka.bootstrap}: {exc}") from None
        self.member = member
        log.info("cluster %s: node %s joined (run %s); %d stream(s) written to %s",
                 self.name, self.node, self.run_id, len(specs), topic)

    @property
    def failure(self) -> str | None:
        """Why the member's control thread failed (the node then runs nothing more and must stop), else None."""
        return None if self.member is None else self.member.failure

    def leave(self, wait: Callable[[Callable[[], bool], float], Any], aborted: Callable[[], bool]) -> None:
        """Leave the group, each stream here draining through the revocation, while ``wait(condition, deadline)``
        (the supervisor's, which pumps the workers' reports meanwhile) waits; then close the writer."""
        member = self.member
        if member is not None:
            threading.Thread(target=member.leave, name="cluster-leave", daemon=True).start()
            wait(lambda: member.left or aborted(), time.monotonic() + member.stop_wait_s + 35)
        if self._writer is not None:
            self._writer.close()

    # -- the HTTP API's cluster requests ---------------------------------------------------------------------
    def add(self, spec: StreamSpec) -> dict[str, Any]:
        """Write the spec to the streams topic; wait up to Cluster.place_wait_s for the node that runs it."""
        member = self._joined()
        if member.knows(spec.id):
            raise Conflict(f"stream {spec.id!r} is already in cluster {self.name!r}")
        try:
            self._writer.put(spec)  # type: ignore[union-attr] - set by join, before the member
        except OSError as exc:
            raise Unavailable(str(exc)) from None
        deadline = time.monotonic() + self.cfg.Cluster.place_wait_s
        while True:
            placed = [v for v in cluster_streams({spec.id: spec}, member.live_nodes(), redact) if v["node"]]
            if placed or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        return placed[0] if placed else cluster_streams({spec.id: spec}, [], redact)[0]

    def remove(self, stream_id: str) -> dict[str, Any]:
        member = self._joined()
        catalog = member.catalog()
        if stream_id not in catalog:
            raise NotFound(f"no stream {stream_id!r} in cluster {self.name!r}")
        runs = [v["node"] for v in cluster_streams({stream_id: catalog[stream_id]}, member.live_nodes(), redact)]
        try:
            self._writer.remove(stream_id)  # type: ignore[union-attr] - set by join, before the member
        except OSError as exc:
            raise Unavailable(str(exc)) from None
        return {"id": stream_id, "removing": True, "node": runs[0]}

    def view(self) -> dict[str, Any]:
        """``GET /cluster``: every live node with its streams, the pending streams, the gallery check."""
        member = self._joined()
        live = member.live_nodes()
        warning = gallery_check({report.node: report.gallery_version for report, _age in live})
        streams = cluster_streams(member.catalog(), live, redact)
        return {
            "cluster": self.name,
            "node": self.node,
            "member": member.state(),
            "nodes": [{"node": r.node, "http": r.http, "run_id": r.run_id, "reported_at": round(r.reported_at, 3),
                       "age_s": round(max(age, 0.0), 3), "partitions": r.partitions, "fenced": r.fenced,
                       "gallery_version": r.gallery_version, "streams": r.streams} for r, age in live],
            "pending": [v["id"] for v in streams if v["node"] is None],
            "warnings": [warning] if warning else [],
        }

    def streams(self) -> list[dict[str, Any]]:
        """``GET /streams?scope=cluster``: every stream of the cluster, where it runs and its state there."""
        member = self._joined()
        return cluster_streams(member.catalog(), member.live_nodes(), redact)

    def metrics_text(self) -> str:
        if self.member is None:
            return ""
        from workers.cluster_metrics import render_cluster

        return render_cluster(self.node or "", self.member)

    def _joined(self) -> ClusterMember:
        if self.member is None:
            raise Unavailable(f"node {self.node} is not in cluster {self.name!r} yet: try again in a moment")
        return self.member
