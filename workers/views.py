"""What the service shows of its streams and counters: the bodies of ``GET /streams``, ``/streams/{id}``,
``/healthz`` and ``/recognitions``, the ``/metrics`` snapshot and the final counters, all built from one source
(``RunTotals``, workers/run_totals.py) and one counter schema (workers/counters.py). Pure functions: the
supervisor calls them under its lock."""
from __future__ import annotations

from typing import Any, Sequence

from workers import metrics as m
from workers.counters import StreamCounts, view_counters
from workers.messages import InferenceStats
from workers.registry import StreamEntry
from workers.run_totals import RunTotals

_NO_SINK_COUNTS = {"written": 0, "dropped": 0, "errors": 0}


def stream_sinks(stats: InferenceStats | None, stream_id: str, sink_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per sink: the stream's results written, dropped and refused."""
    sinks = {name: dict(_NO_SINK_COUNTS) for name in sink_names}
    if stats is not None:
        for name, per_stream in stats.sink_streams.items():
            sinks[name] = dict(per_stream.get(stream_id, _NO_SINK_COUNTS))
    return sinks


def stream_view(entry: StreamEntry, totals: RunTotals, sink_names: Sequence[str]) -> dict[str, Any]:
    """One stream as ``GET /streams/{id}`` shows it."""
    plan = entry.plan
    ing = totals.ingest_now(plan.id)
    inf = totals.stream_inference(plan.id)
    sinks = stream_sinks(totals.service(), plan.id, sink_names)
    counts = totals.stream(plan.id)
    # Results lost on the way out are the stream's business too (a full spool while a broker was down).
    warnings = [f"{name}: {s['dropped']} result(s) dropped" for name, s in sinks.items() if s["dropped"]]
    warnings += [f"{name}: {s['errors']} failed write(s)" for name, s in sinks.items() if s["errors"]]
    return {
        "id": plan.id,
        "url": plan.display_url,
        "kind": plan.kind.value,
        "every_nth": plan.every_nth,
        "state": entry.state.value,
        "reason": entry.reason,
        "since": round(entry.since, 3),
        "removing": entry.removing,
        "ingest_process": entry.ingest,
        "last_frame_age_s": None if ing is None or ing.last_frame_age_s is None else round(ing.last_frame_age_s, 3),
        "frame_count": ing.frame_count if ing else None,
        "counters": view_counters(counts, {name: s["written"] for name, s in sinks.items()}),
        "sinks": sinks,
        "latency_ms": dict(inf.latency_ms) if inf else {},
        "warnings": warnings,
        "last_latency_ms": dict(inf.last) if inf else {},
    }


def stream_metrics(entry: StreamEntry, totals: RunTotals) -> m.StreamMetrics:
    """One stream's numbers for ``/metrics`` (the same counts as its view)."""
    ing = totals.ingest_now(entry.id)
    inf = totals.stream_inference(entry.id)
    counts: StreamCounts = totals.stream(entry.id)
    return m.StreamMetrics(
        stream=entry.id, state=entry.state.value,
        last_frame_age_s=None if ing is None else ing.last_frame_age_s,
        decoded=counts.decoded, processed=counts.processed,
        dropped={reason: counts.dropped.get(reason, 0) for reason in m.DROP_REASONS},
        reconnects=counts.reconnects, decode_errors=counts.decode_errors,
        detected=counts.detected, recognized=counts.recognized,
        e2e=inf.e2e_seconds if inf else None,
        crops=inf.crops if inf else 0, tracks=dict(inf.tracks) if inf else {},
        tracks_active=inf.tracks_active if inf else 0,
    )


def sink_metrics(stats: InferenceStats | None, sink_names: Sequence[str]) -> list[m.SinkMetrics]:
    """Every configured sink, with zeros before the inference worker's first report."""
    sinks = [m.SinkMetrics(s["name"], s["written"], s["errors"], s["dropped"], s.get("spool") or {"memory": s["queued"]})
             for s in (stats.sinks if stats is not None else [])]
    known = {s.name for s in sinks}
    return sinks + [m.SinkMetrics(name, 0, 0, 0, {"memory": 0}) for name in sink_names if name not in known]


def gallery_health(stats: InferenceStats | None) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {"version": stats.gallery_version, "entries": stats.gallery_entries,
            "load_errors": stats.gallery_load_errors, "error": stats.gallery_error}


def recognitions(stats: InferenceStats | None) -> dict[str, Any]:
    """Named objects per gallery label in the published results (top labels; docs/metrics.md)."""
    labels = dict(stats.labels) if stats is not None else {}
    rows = [{"label": label, "count": sum(streams.values()), "streams": dict(sorted(streams.items()))}
            for label, streams in labels.items()]
    rows.sort(key=lambda row: (-row["count"], row["label"]))
    return {"labels": rows, "total": sum(row["count"] for row in rows)}


def final_counters(run_id: str, streams: list[dict[str, Any]], stats: InferenceStats | None) -> dict[str, Any]:
    """The ``final: {...}`` line the supervisor logs at exit."""
    return {
        "run_id": run_id,
        "streams": streams,
        "sinks": stats.sinks if stats is not None else [],
        "batches": stats.batches if stats is not None else 0,
        "frames": stats.frames if stats is not None else 0,
        "gallery_version": stats.gallery_version if stats is not None else None,
    }
