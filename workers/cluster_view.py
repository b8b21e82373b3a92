"""Who is in the cluster and what each node runs: the reports behind ``GET /cluster`` and ``GET /streams?scope=cluster``.

Every node writes a report of itself (``NodeReport``: its HTTP address, run id, the partitions it owns, its
streams with their states, its gallery version) every ``Cluster.report_interval_s`` to a compacted topic
(``Cluster.nodes_topic``, default ``NAME.nodes``; key = node id) and a tombstone when it stops cleanly. Every
node reads that topic whole, so any node can answer for all. Why a topic and not the consumer group's own
member list: the group knows members and partitions, not HTTP addresses, stream states or gallery versions,
and an admin ``DescribeGroups`` per request would ask the broker for each GET.

A node is live while its newest report is younger than ``3 × report_interval_s`` (the age counts from the
record's timestamp, so a node catching up on the topic does not take old reports for fresh ones); a killed node
drops out of ``GET /cluster`` that long after its last report. Pure except ``NodesView``'s clock argument.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from config.schema import StreamSpec

__all__ = ["NodeReport", "NodesView", "cluster_streams", "gallery_check"]


@dataclass(frozen=True)
class NodeReport:
    node: str
    http: str | None  # host:port of its HTTP API
    run_id: str
    reported_at: float  # its wall clock
    partitions: list[int]
    streams: list[dict[str, Any]]  # {"id", "state", "since"}
    gallery_version: int | None = None
    fenced: bool = False

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode("utf-8")

    @classmethod
    def decode(cls, value: bytes) -> "NodeReport":
        """Raises ValueError for a value that is not a report."""
        try:
            body = json.loads(value)
            return cls(**body)
        except (TypeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a node report: {exc}") from None


@dataclass
class NodesView:
    """The newest report of each node, and when it was made (seconds on the reader's wall clock)."""

    live_for_s: float
    reports: dict[str, tuple[NodeReport, float]] = field(default_factory=dict)

    def apply(self, node: str, value: bytes | None, made_at: float) -> None:
        """One record of the nodes topic (None: the node left)."""
        if value is None:
            self.reports.pop(node, None)
            return
        self.reports[node] = (NodeReport.decode(value), made_at)

    def live(self, now: float) -> list[tuple[NodeReport, float]]:
        """(report, age in seconds) of every live node, by node id."""
        return [(report, now - made) for node, (report, made) in sorted(self.reports.items())
                if now - made <= self.live_for_s]


def gallery_check(versions: dict[str, int | None]) -> str | None:
    """A warning when live nodes run different gallery versions (None: no gallery there), else None."""
    distinct = set(versions.values())
    if len(distinct) <= 1:
        return None
    listed = ", ".join(f"{node}: {version if version is not None else 'none'}" for node, version in sorted(versions.items()))
    return f"nodes run different gallery versions ({listed}): the same object may get other labels on other nodes"


def cluster_streams(catalog: dict[str, StreamSpec], live: list[tuple[NodeReport, float]],
                    display_url: Any) -> list[dict[str, Any]]:
    """Every stream of the streams topic with the node that runs it and its state there; a stream no live node
    reports is ``pending`` (not placed yet, or its node died and the group has not moved it yet). A stream two
    nodes report (a handover under way) lists both, the newest report first."""
    runners: dict[str, list[tuple[str, dict[str, Any], float]]] = {}
    for report, age in live:
        for stream in report.streams:
            runners.setdefault(stream["id"], []).append((report.node, stream, age))
    out = []
    for stream_id in sorted(catalog):
        spec = catalog[stream_id]
        found = sorted(runners.get(stream_id, []), key=lambda item: item[2])
        view = {"id": stream_id, "url": display_url(spec.url), "kind": spec.kind, "every_nth": spec.every_nth}
        if not found:
            out.append({**view, "node": None, "state": "pending", "since": None})
        for node, stream, _age in found:
            out.append({**view, "node": node, "state": stream["state"], "since": stream.get("since")})
    return out
