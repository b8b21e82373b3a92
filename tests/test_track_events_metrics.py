"""Track and crop counters (numbers in, numbers out): merged across inference restarts by the run totals, and
exposed on /metrics under the documented names."""
from __future__ import annotations

from dataclasses import replace

import pytest

from tests.prometheus_helpers import metric_samples
from tests.worker_reports import inference, plan, stats
from workers import metrics as m
from workers import views
from workers.registry import StreamEntry
from workers.run_totals import RunTotals


def _tracks(processed: int, started: int, labelled: int, ended: int, crops: int):  # noqa: ANN202
    return replace(inference(processed), crops=crops, tracks={"started": started, "labelled": labelled, "ended": ended},
                   tracks_active=started - ended)


# (reports: a tracks report, or "died"; expected started, labelled, ended, active, crops)
CASES = [
    # one worker: its newest report
    ([_tracks(10, 5, 2, 3, 40)], (5, 2, 3, 2, 40)),
    # a newer report replaces the older one (reports are totals)
    ([_tracks(10, 5, 2, 3, 40), _tracks(20, 8, 4, 7, 60)], (8, 4, 7, 1, 60)),
    # a dead worker's counts stay; the tracks it held are not active any more (they never get their ended event)
    ([_tracks(10, 5, 2, 3, 40), "died"], (5, 2, 3, 0, 40)),
    # its successor's counts add up; active is the successor's own
    ([_tracks(10, 5, 2, 3, 40), "died", _tracks(4, 3, 1, 1, 9)], (8, 3, 4, 2, 49)),
]


@pytest.mark.parametrize(("reports", "expected"), CASES)
def test_tracks_and_crops_on_the_metrics_across_inference_restarts(reports: list, expected: tuple) -> None:
    totals = RunTotals()
    for report in reports:
        if report == "died":
            totals.inference_died()
        else:
            totals.inference_report(stats({"cam": report}))
    entry = StreamEntry(plan=plan("cam"), ingest=0)
    stream = views.stream_metrics(entry, totals)
    service = m.ServiceMetrics(version="0", run_id="r", streams=[stream], sinks=[], batches=0, batch_size=None,
                               batch_wait=None, inference={}, gallery_entries=0, gallery_version=None,
                               gallery_load_errors=0, processes={}, restarts={}, node="n1")
    samples = metric_samples(m.render(m.ServiceCollector(lambda: service)).decode())
    got = tuple(samples[("vidrec_tracks_total", (("event", kind), ("stream", "cam")))]
                for kind in ("started", "labelled", "ended"))
    got += (samples[("vidrec_tracks_active", (("stream", "cam"),))],
            samples[("vidrec_recognizer_crops_total", (("stream", "cam"),))])
    assert got == expected
