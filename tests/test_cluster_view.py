"""The cluster's decisions and views, pure: which streams to start and stop here (plan_changes), which nodes are
live (NodesView), the gallery check, and GET /streams?scope=cluster's rows (cluster_streams)."""
from __future__ import annotations

import pytest

from config.schema import StreamSpec
from stream.live import redact
from workers.cluster_member import plan_changes
from workers.cluster_view import NodeReport, NodesView, cluster_streams, gallery_check


def spec(sid: str, nth: int = 1) -> StreamSpec:
    return StreamSpec(id=sid, url=f"rtsp://user:pw@cam/{sid}", every_nth=nth)


@pytest.mark.parametrize(
    "wanted, here, start, stop",
    [
        # nothing here yet: start what is wanted
        ({"a": spec("a"), "b": spec("b")}, {}, ["a", "b"], []),
        # what runs is wanted: nothing to do
        ({"a": spec("a")}, {"a": spec("a")}, [], []),
        # a partition revoked: its stream stops
        ({}, {"a": spec("a")}, [], ["a"]),
        # the spec changed on the topic: stop it; it starts with the new spec once it is gone
        ({"a": spec("a", 5)}, {"a": spec("a")}, [], ["a"]),
        # being removed (None): neither stopped again nor started twice
        ({"a": spec("a")}, {"a": None}, [], []),
        # both at once
        ({"b": spec("b")}, {"a": spec("a")}, ["b"], ["a"]),
    ],
)
def test_plan_changes(wanted: dict, here: dict, start: list[str], stop: list[str]) -> None:
    changes = plan_changes(wanted, here)
    assert [s.id for s in changes.start] == start and changes.stop == stop


def report(node: str, streams: list[str], version: int | None = None) -> NodeReport:
    return NodeReport(node=node, http=f"127.0.0.1:{8000 + len(node)}", run_id=f"run-{node}", reported_at=0.0,
                      partitions=[0], streams=[{"id": s, "state": "live", "since": 1.0} for s in streams],
                      gallery_version=version)


def test_nodes_live_while_their_reports_are_fresh() -> None:
    view = NodesView(live_for_s=3.0)
    view.apply("a", report("a", ["x"]).encode(), made_at=100.0)
    view.apply("b", report("b", []).encode(), made_at=98.0)
    assert [r.node for r, _age in view.live(now=100.5)] == ["a", "b"]
    # b's last report is now 3.5 s old: b is gone (killed), a stays
    assert [(r.node, age) for r, age in view.live(now=101.5)] == [("a", 1.5)]
    # a tombstone (a node that stopped cleanly) removes it at once
    view.apply("a", None, made_at=101.6)
    assert view.live(now=101.7) == []


def test_a_report_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError, match="not a node report"):
        NodesView(live_for_s=3).apply("a", b'{"node": "a"}', made_at=0.0)


@pytest.mark.parametrize(
    "versions, warned",
    [
        # one version everywhere
        ({"a": 3, "b": 3}, None),
        # no gallery anywhere
        ({"a": None, "b": None}, None),
        # one node alone
        ({"a": 7}, None),
        # two versions: both named
        ({"a": 3, "b": 4}, "a: 3, b: 4"),
        # a gallery on one node only
        ({"a": 3, "b": None}, "a: 3, b: none"),
    ],
)
def test_gallery_check(versions: dict, warned: str | None) -> None:
    warning = gallery_check(versions)
    if warned is None:
        assert warning is None
    else:
        assert warning is not None and warned in warning and "different gallery versions" in warning


def test_cluster_streams_name_the_node_or_pending() -> None:
    catalog = {"x": spec("x"), "y": spec("y"), "z": spec("z")}
    # x on a; y on both a and b (a handover: the newest report first); z nowhere yet
    live = [(report("a", ["x", "y"]), 1.5), (report("b", ["y"]), 0.2)]
    rows = cluster_streams(catalog, live, redact)
    assert [(r["id"], r["node"], r["state"]) for r in rows] == [
        ("x", "a", "live"), ("y", "b", "live"), ("y", "a", "live"), ("z", None, "pending")]
    assert rows[0]["url"] == "rtsp://user:***@cam/x"  # no password shown
