"""Run totals (workers/run_totals.py): the workers' counters merged across their restarts, and consistent
with each other at every read. Numbers in, numbers out: no process is started."""
from __future__ import annotations

import pytest

from tests.worker_reports import inference, ingest, plan, stats
from workers.registry import StreamEntry
from workers.run_totals import RunTotals, merge_hist
from workers.metrics import Histogram
from workers import views


def replay(steps: list[tuple]) -> RunTotals:
    """Apply reports to fresh totals: ("ingest", decoded...) is a report of the running ingest instance,
    ("ingest_ended", first_index) ends it, ("inference", report) a report of the running inference worker,
    ("inference_died",) its death."""
    totals = RunTotals()
    for step in steps:
        kind, *args = step
        if kind == "ingest":
            totals.ingest_report("cam", args[0])
        elif kind == "ingest_ended":
            totals.ingest_ended("cam", args[0], live=True)
        elif kind == "inference":
            totals.inference_report(stats({"cam": args[0]}))
        elif kind == "inference_died":
            totals.inference_died()
        else:
            raise AssertionError(kind)
    return totals


@pytest.mark.parametrize(
    "steps, decoded, processed, every_nth, backlog",
    [
        # one instance of each: its newest reports
        ([("ingest", ingest(10)), ("inference", inference(8, backlog=2))], 10, 8, 0, 2),
        # a newer report replaces the older one (reports are totals, not increments)
        ([("ingest", ingest(10)), ("ingest", ingest(15)), ("inference", inference(5)), ("inference", inference(12))],
         15, 12, 0, 0),
        # an ingest process restarted: the dead instance's counts stay, the new one counts from zero
        ([("ingest", ingest(10, every_nth=3)), ("ingest_ended", 0), ("ingest", ingest(4, every_nth=1)),
          ("inference", inference(14))], 14, 14, 4, 0),
        # an inference worker restarted: what it counted stays, its successor's adds up
        ([("ingest", ingest(30)), ("inference", inference(20, backlog=1)), ("inference_died",),
          ("inference", inference(5, backlog=2))], 30, 25, 0, 3),
        # both died, twice each
        ([("ingest", ingest(10)), ("ingest_ended", 0), ("ingest", ingest(10)), ("ingest_ended", 10),
          ("ingest", ingest(5)), ("inference", inference(9)), ("inference_died",), ("inference", inference(9)),
          ("inference_died",), ("inference", inference(7))], 25, 25, 0, 0),
        # a worker that died before its first report adds nothing
        ([("inference_died",), ("ingest_ended", 0), ("ingest", ingest(3)), ("inference", inference(3))], 3, 3, 0, 0),
    ],
)
def test_counts_add_up_across_restarts(steps: list[tuple], decoded: int, processed: int, every_nth: int,
                                       backlog: int) -> None:
    counts = replay(steps).stream("cam")
    assert (counts.decoded, counts.processed) == (decoded, processed)
    assert counts.dropped["every_nth"] == every_nth and counts.dropped["backlog"] == backlog


@pytest.mark.parametrize(
    "ingest_report, inference_report, decoded, written, taken, processed",
    [
        # the CI failure (issue 10, point 6): ingest's last report (248) came after inference's (250 processed)
        (ingest(248), inference(250), 250, 250, 250, 250),
        # ingest ahead of inference: its own numbers
        (ingest(250), inference(240), 250, 250, 250, 240),
        # no ingest report yet at all
        (None, inference(3), 3, 3, 3, 3),
        # inference took frames it has not processed yet: decoded covers what was taken
        (ingest(100, written=100, taken=100), inference(90, taken=104), 104, 104, 104, 90),
        # one ingest snapshot read the source a moment before the ring: written 1 ahead of decoded
        (ingest(50, written=51, taken=51), inference(51), 51, 51, 51, 51),
    ],
)
def test_decoded_at_least_processed_whatever_order_reports_come_in(
        ingest_report, inference_report, decoded: int, written: int, taken: int, processed: int) -> None:
    totals = RunTotals()
    if ingest_report is not None:
        totals.ingest_report("cam", ingest_report)
    totals.inference_report(stats({"cam": inference_report}, published={"cam": inference_report.processed}))
    counts = totals.stream("cam")
    assert (counts.decoded, counts.written, counts.taken, counts.processed) == (decoded, written, taken, processed)
    # The same numbers on both views: decoded >= processed >= published at every read.
    entry = StreamEntry(plan=plan(), ingest=0)
    view = views.stream_view(entry, totals, ["kafka"])["counters"]
    metric = views.stream_metrics(entry, totals)
    assert view["decoded"] == metric.decoded == decoded
    assert view["processed"] == metric.processed == processed
    assert view["decoded"] >= view["processed"] >= view["published"]["kafka"]


@pytest.mark.parametrize(
    "steps, first_index",
    [
        # a new stream starts at 0
        ([], 0),
        # after an instance that started at 0 and decoded 40
        ([("ingest", ingest(40)), ("ingest_ended", 0)], 40),
        # after one that started at 100 (itself a restart) and decoded 5
        ([("ingest", ingest(5)), ("ingest_ended", 100)], 105),
        # inference took frame 57 after the dead process's last report said 40: past what was taken
        ([("ingest", ingest(40)), ("inference", inference(50, last_index=57)), ("ingest_ended", 0)], 58),
        # an inference restart keeps the highest index taken
        ([("inference", inference(9, last_index=80)), ("inference_died",), ("inference", inference(1, last_index=3))], 81),
    ],
)
def test_first_index_goes_on_past_every_frame_seen(steps: list[tuple], first_index: int) -> None:
    assert replay(steps).first_index("cam") == first_index


def test_service_counters_and_labels_add_up_across_inference_restarts() -> None:
    totals = RunTotals()
    totals.inference_report(stats({"cam": inference(10)}, published={"cam": 9}, batches=4,
                                  labels={"bike": {"cam": 3}}))
    totals.inference_died()
    totals.inference_report(stats({"cam": inference(6)}, published={"cam": 6}, batches=2,
                                  labels={"bike": {"cam": 1}, "car": {"cam": 2}}))
    service = totals.service()
    assert (service.batches, service.frames) == (6, 16)
    assert service.sinks[0]["written"] == 15 and service.sink_streams["kafka"]["cam"]["written"] == 15
    assert service.labels == {"bike": {"cam": 4}, "car": {"cam": 2}}
    assert views.recognitions(service) == {
        "labels": [{"label": "bike", "count": 4, "streams": {"cam": 4}}, {"label": "car", "count": 2, "streams": {"cam": 2}}],
        "total": 6,
    }


@pytest.mark.parametrize(
    "a, b, merged",
    [
        # same buckets: counts and sums add
        (Histogram((1.0, 2.0), [1, 2, 3], 9.0), Histogram((1.0, 2.0), [0, 1, 1], 4.0), ([1, 3, 4], 13.0)),
        # nothing before: the current one
        (None, Histogram((1.0,), [2, 0], 1.0), ([2, 0], 1.0)),
        # different buckets (a new version's): the newer one alone
        (Histogram((1.0,), [5, 5], 20.0), Histogram((2.0,), [1, 0], 1.0), ([1, 0], 1.0)),
    ],
)
def test_histograms_merge_bucket_by_bucket(a, b, merged) -> None:
    result = merge_hist(a, b)
    assert (result.counts, result.total) == merged


def test_the_stream_view_keeps_the_api_s_keys_and_names_each_drop_once() -> None:
    totals = RunTotals()
    totals.ingest_report("cam", ingest(20, written=15, taken=15, every_nth=3, source=2, overwritten=1))
    totals.inference_report(stats({"cam": inference(11, backlog=2, too_old=1, errors=1)}, published={"cam": 10}))
    entry = StreamEntry(plan=plan(), ingest=1)
    view = views.stream_view(entry, totals, ["kafka", "redis"])
    assert list(view) == ["id", "url", "kind", "every_nth", "state", "reason", "since", "removing", "ingest_process",
                          "last_frame_age_s", "frame_count", "counters", "sinks", "latency_ms", "warnings",
                          "last_latency_ms"]
    assert (view["kind"], view["state"], view["ingest_process"]) == ("live", "starting", 1)
    assert view["counters"] == {
        "decoded": 20, "skipped": 3, "dropped_source": 2, "reconnects": 0, "decode_errors": 0, "written": 15,
        "taken": 15, "dropped_ring": {"closed": 0, "overwritten": 1, "ring_in_use": 0}, "dropped_backlog": 2,
        "dropped_too_old": 1, "inference_errors": 1, "processed": 11, "published": {"kafka": 10, "redis": 0},
    }
    # /metrics: the same numbers, under the drop reasons' own names
    assert views.stream_metrics(entry, totals).dropped == {
        "every_nth": 3, "source": 2, "overwritten": 1, "ring_in_use": 0, "closed": 0, "backlog": 2, "too_old": 1,
        "inference_error": 1,
    }


def test_before_any_report_a_stream_shows_zeros_and_no_ring() -> None:
    view = views.stream_view(StreamEntry(plan=plan(), ingest=0), RunTotals(), ["kafka"])
    assert view["counters"]["dropped_ring"] == {} and view["counters"]["decoded"] == 0
    assert view["frame_count"] is None and view["last_frame_age_s"] is None and view["latency_ms"] == {}
