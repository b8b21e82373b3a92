"""The run's counters: what the workers report, merged across their restarts, so no counter ever goes back.

Workers count from zero in every process; they report their own totals every ``stats_interval_s``. Per stream
id, for the service's lifetime, ``RunTotals`` keeps what ended ingest instances counted (a restarted
process, a stream removed and added again) and what dead inference workers counted, and adds the current
ones' newest reports. It also says where a live stream's frame indices go on (``first_index``).

Each process reports on its own clock, so the newest ingest report may be older than the newest inference
report: inference may already have taken frames ingest has not reported decoding yet. Every frame taken was
written and decoded, so a stream's counts are made consistent where they meet (``consistent``):
decoded >= written >= taken >= processed, at every read.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from workers.counters import StreamCounts
from workers.messages import InferenceStats, StreamIngest, StreamInference
from workers.metrics import Histogram


# ------------------------------------------------------------------------------------- pure merging -----
def merge_hist(a: Histogram | None, b: Histogram | None) -> Histogram | None:
    """Two cumulative histograms as one (the newer one alone when their buckets differ)."""
    if a is None or b is None or a.bounds != b.bounds:
        return b if b is not None else a
    return Histogram(a.bounds, [x + y for x, y in zip(a.counts, b.counts)], a.total + b.total)


def merge_drops(a: dict[str, int] | Any, b: dict[str, int] | Any) -> dict[str, int]:
    return {reason: a.get(reason, 0) + b.get(reason, 0) for reason in {**a, **b}}


def merge_stream(past: StreamInference | None, now: StreamInference | None) -> StreamInference | None:
    """A stream's inference counters: an earlier worker's (``past``) plus the current one's; the latency
    windows and the last result's latency are the current one's."""
    if past is None or now is None:
        return now if now is not None else past
    return replace(
        now, taken=past.taken + now.taken, processed=past.processed + now.processed,
        dropped=merge_drops(past.dropped, now.dropped), detected=past.detected + now.detected,
        recognized=past.recognized + now.recognized, last_index=max(past.last_index, now.last_index),
        e2e_seconds=merge_hist(past.e2e_seconds, now.e2e_seconds), crops=past.crops + now.crops,
        tracks=merge_drops(past.tracks, now.tracks),  # tracks_active: the current worker's (a dead one's ended)
    )


def merge_nested(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out = {key: dict(inner) for key, inner in a.items()}
    for key, inner in b.items():
        target = out.setdefault(key, {})
        for name, n in inner.items():
            target[name] = target.get(name, 0) + n
    return out


def merge_sinks(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sink counters by sink name: written, dropped and errors summed; queues and the rest are the newer's."""
    merged = {s["name"]: dict(s, queued=0) for s in a}
    for s in b:
        old = merged.get(s["name"])
        merged[s["name"]] = dict(s) if old is None else dict(
            s, **{k: old[k] + s[k] for k in ("written", "dropped", "errors")},
            last_error=s.get("last_error") or old.get("last_error"))
    return list(merged.values())


def merge_stats(past: InferenceStats | None, now: InferenceStats | None) -> InferenceStats | None:
    """Run totals: an earlier worker's counters (``past``; its streams are merged by ``merge_stream``) plus the
    current worker's; gauges (gallery, queue depths, latency windows) are the current worker's."""
    if past is None or now is None:
        return now if now is not None else past
    return replace(
        now,
        sinks=merge_sinks(past.sinks, now.sinks),
        sink_streams={name: merge_nested(past.sink_streams.get(name, {}), now.sink_streams.get(name, {}))
                      for name in set(past.sink_streams) | set(now.sink_streams)},
        batches=past.batches + now.batches,
        frames=past.frames + now.frames,
        batch_size=merge_hist(past.batch_size, now.batch_size),
        batch_wait_seconds=merge_hist(past.batch_wait_seconds, now.batch_wait_seconds),
        inference_seconds={model: merge_hist(past.inference_seconds.get(model), now.inference_seconds.get(model))
                           for model in set(past.inference_seconds) | set(now.inference_seconds)},
        labels=merge_nested(past.labels, now.labels),
        gallery_load_errors=past.gallery_load_errors + now.gallery_load_errors,
    )


def ingest_counts(snap: StreamIngest) -> StreamCounts:
    """An ingest instance's report in the counter schema (the ring's drops with ingest's own)."""
    dropped = dict(snap.dropped)
    written = taken = 0
    if snap.transport is not None:
        written, taken = snap.transport.written, snap.transport.taken
        dropped = merge_drops(dropped, dict(snap.transport.dropped))
    return StreamCounts(decoded=snap.decoded, written=written, taken=taken, reconnects=snap.reconnects,
                        decode_errors=snap.decode_errors, dropped=dropped)


def inference_counts(inf: StreamInference) -> StreamCounts:
    return StreamCounts(processed=inf.processed, detected=inf.detected, recognized=inf.recognized,
                        dropped=dict(inf.dropped))


def consistent(ingest: StreamCounts, inference: StreamInference | None) -> StreamCounts:
    """One stream's counts, ingest's and inference's together, with decoded >= written >= taken >= processed.

    Every frame inference took was written into the ring and decoded before; ingest's newest report can lag
    behind (it reports on its own clock; a killed process never sends its last frames' counts; a snapshot
    reads the source's count a moment before the ring's). So each count is at least the one after it."""
    total = ingest + (inference_counts(inference) if inference is not None else StreamCounts())
    taken = max(total.taken, inference.taken if inference is not None else 0, total.processed)
    written = max(total.written, taken)
    return replace(total, taken=taken, written=written, decoded=max(total.decoded, written))


# ------------------------------------------------------------------------------------- run totals -------
class RunTotals:
    """Per stream id and per run, the counters of every worker instance so far (not thread-safe: the
    supervisor holds its lock)."""

    def __init__(self) -> None:
        self._ingest_past: dict[str, StreamCounts] = {}  # ended ingest instances
        self._ingest_now: dict[str, StreamIngest] = {}  # the running instance's newest report
        self._next_index: dict[str, int] = {}  # a live stream's next frame index, from ended instances
        self._inference_past: InferenceStats | None = None  # dead inference workers (streams left out)
        self._inference_now: InferenceStats | None = None
        self._stream_past: dict[str, StreamInference] = {}  # dead inference workers, per stream
        self._stream_now: dict[str, StreamInference] = {}

    # -- reports --------------------------------------------------------------------------------------------
    def ingest_report(self, stream_id: str, snap: StreamIngest) -> None:
        """The running ingest instance of ``stream_id`` counted this (its totals so far)."""
        self._ingest_now[stream_id] = snap

    def ingest_ended(self, stream_id: str, first_index: int, *, live: bool, final: StreamIngest | None = None) -> None:
        """The ingest instance of ``stream_id`` that started at ``first_index`` ended (its ``final`` report, or
        the newest one): its counts join the stream's lifetime totals."""
        snap = final if final is not None else self._ingest_now.get(stream_id)
        self._ingest_now.pop(stream_id, None)
        if snap is None:
            return
        self._ingest_past[stream_id] = self._ingest_past.get(stream_id, StreamCounts()) + ingest_counts(snap)
        if live:
            self._next_index[stream_id] = max(self._next_index.get(stream_id, 0), first_index + snap.decoded)

    def inference_report(self, stats: InferenceStats) -> None:
        self._inference_now = stats
        self._stream_now.update(stats.streams)

    def stream_finished(self, stream_id: str, counters: StreamInference) -> None:
        self._stream_now[stream_id] = counters

    def inference_died(self) -> None:
        """The inference worker is gone: its counts join the run's totals; the next one counts from zero."""
        if self._inference_now is not None:
            self._inference_past = merge_stats(self._inference_past, replace(self._inference_now, streams={}))
        for sid, counters in self._stream_now.items():
            # Its tracks died with it (no ``ended`` events will come): none of them is active any more.
            self._stream_past[sid] = merge_stream(self._stream_past.get(sid), replace(counters, tracks_active=0))
        self._inference_now = None
        self._stream_now = {}

    # -- reads ----------------------------------------------------------------------------------------------
    def service(self) -> InferenceStats | None:
        """The inference counters of this run: the current worker's plus those of the ones before it."""
        return merge_stats(self._inference_past, self._inference_now)

    def stream_inference(self, stream_id: str) -> StreamInference | None:
        return merge_stream(self._stream_past.get(stream_id), self._stream_now.get(stream_id))

    def ingest_now(self, stream_id: str) -> StreamIngest | None:
        return self._ingest_now.get(stream_id)

    def stream(self, stream_id: str) -> StreamCounts:
        """The stream's lifetime counts (ingest's and inference's, consistent with each other)."""
        ingest = self._ingest_past.get(stream_id, StreamCounts())
        now = self._ingest_now.get(stream_id)
        if now is not None:
            ingest = ingest + ingest_counts(now)
        return consistent(ingest, self.stream_inference(stream_id))

    def first_index(self, stream_id: str) -> int:
        """Where a live stream's frame indices go on: past every frame an earlier instance decoded or that
        inference took (the latter covers frames decoded after the last counters a dead process sent)."""
        merged = self.stream_inference(stream_id)
        last_taken = merged.last_index if merged is not None else -1
        return max(self._next_index.get(stream_id, 0), last_taken + 1)
