"""The cluster's own metrics, appended to ``/metrics`` in cluster mode (docs/cluster.md lists them). Each carries
the ``node`` label, as every vidrec metric does."""
from __future__ import annotations

from typing import Any, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["render_cluster"]


class ClusterCollector(Collector):
    def __init__(self, node: str, member: Any) -> None:
        self.node = node
        self.member = member  # workers/cluster_member.py ClusterMember

    def collect(self) -> Iterable[Any]:
        state = self.member.state()
        bad = CounterMetricFamily("vidrec_cluster_bad_specs", "Records of the streams topic skipped as malformed "
                                  "(logged with their partition and offset)", labels=["node"])
        bad.add_metric([self.node], state["bad_specs"])
        yield bad
        owned = GaugeMetricFamily("vidrec_cluster_partitions", "Partitions of the streams topic this node owns",
                                  labels=["node"])
        owned.add_metric([self.node], len(state["owned"]))
        yield owned
        fenced = GaugeMetricFamily("vidrec_cluster_fenced", "1 while this node has stopped its streams because the "
                                   "group coordinator has been silent longer than the session timeout",
                                   labels=["node"])
        fenced.add_metric([self.node], 1.0 if state["fenced"] else 0.0)
        yield fenced
        nodes = GaugeMetricFamily("vidrec_cluster_nodes", "Live nodes this node sees (GET /cluster)", labels=["node"])
        nodes.add_metric([self.node], len(self.member.live_nodes()))
        yield nodes


def render_cluster(node: str, member: Any) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(node, member))
    return generate_latest(registry)
