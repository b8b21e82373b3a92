"""Prometheus metrics of `vidrec serve` (names and meanings: docs/metrics.md).

The workers never talk to Prometheus. The inference process keeps cumulative histograms (``Histogram`` below,
plain data, so they travel in its stats messages) and the ingest processes keep counters; both report every
``Service.stats_interval_s``. The supervisor's ``ServiceCollector`` turns the newest reports into metric
families at scrape time: one registry, in one process, whatever the number of workers; a restarted worker's
earlier counts are kept by the supervisor (workers/run_totals.py), so counters never go backwards.

Every series carries a ``node`` label (``Cluster.node``): one Prometheus scrapes many nodes, and a stream that moves
between them is told apart by it. It is added in one place, ``ServiceCollector.collect``, so no family can miss it.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from stream.states import STREAM_STATES
from stream.track_events import TRACK_EVENTS
from workers.counters import DROP_REASONS

# Bucket bounds (upper, inclusive), chosen around what this service does: a frame's way through takes
# 0.1–0.7 s on CPU; a batch waits up to max_batch_wait_ms (0 by default: not at all) to fill.
LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
WAIT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
INFERENCE_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
MODELS = ("detector", "recognizer", "search")


@dataclass
class Histogram:
    """A cumulative histogram as plain data (picklable): ``counts[i]`` observations ≤ ``bounds[i]`` and above
    the bound before; the last count is above every bound (+Inf)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(self.bounds):
            raise ValueError(f"histogram bounds must ascend: {self.bounds}")
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def copy(self) -> "Histogram":
        return Histogram(self.bounds, list(self.counts), self.total)

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: ``(le, cumulative count)`` with ``+Inf`` last."""
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append((_le(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


def _le(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() and bound >= 1 else repr(float(bound))


# ---------------------------------------------------------------------------------------- /proc ------------
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_usage(pid: int) -> tuple[float, int] | None:
    """(user + system CPU seconds, resident bytes) of a live process, from /proc; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        with open(f"/proc/{pid}/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    # Fields after the ``(comm)``, which may itself hold spaces or parentheses: utime and stime are 14 and 15.
    fields = stat[stat.rfind(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    return cpu, resident_pages * _PAGE


# ---------------------------------------------------------------------------------------- the collector ----
@dataclass(frozen=True)
class StreamMetrics:
    """One stream's numbers at scrape time (built by the supervisor from the workers' newest reports)."""

    stream: str
    state: str
    last_frame_age_s: float | None
    decoded: int
    processed: int
    dropped: dict[str, int]  # DROP_REASONS (workers/counters.py) -> count
    reconnects: int
    decode_errors: int
    detected: int
    recognized: int
    e2e: Histogram | None
    crops: int = 0  # through the recognizer
    tracks: dict[str, int] = field(default_factory=dict)  # TRACK_EVENTS -> count
    tracks_active: int = 0


@dataclass(frozen=True)
class SinkMetrics:
    name: str
    published: int
    errors: int
    dropped: int
    spool: dict[str, int]  # tier -> results waiting


@dataclass(frozen=True)
class ServiceMetrics:
    version: str
    run_id: str
    streams: list[StreamMetrics]
    sinks: list[SinkMetrics]
    batches: int
    batch_size: Histogram | None
    batch_wait: Histogram | None
    inference: dict[str, Histogram]  # model -> seconds per batch
    gallery_entries: int
    gallery_version: int | None
    gallery_load_errors: int
    processes: dict[str, int | None]  # name -> pid (None: not running now)
    restarts: dict[str, int]
    node: str = ""  # Cluster.node: the ``node`` label of every series


class ServiceCollector(Collector):
    """Builds every family from ``snapshot()`` at each scrape."""

    def __init__(self, snapshot: Callable[[], ServiceMetrics]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        m = self._snapshot()
        info = GaugeMetricFamily("vidrec_info", "vidrec build and run", labels=["version", "run_id"])
        info.add_metric([m.version, m.run_id], 1)
        families = (*_stream_families(m.streams), *_inference_families(m), *_sink_families(m.sinks),
                    *_process_families(m), info)
        for family in families:
            yield with_label(family, "node", m.node)


def with_label(family: Any, name: str, value: str) -> Any:
    """``family`` with ``name=value`` first on every sample (a family's samples are plain named tuples)."""
    family.samples = [s._replace(labels={name: value, **s.labels}) for s in family.samples]
    return family


def _histogram(family: HistogramMetricFamily, labels: Sequence[str], hist: Histogram) -> None:
    family.add_metric(list(labels), hist.cumulative(), sum_value=hist.total)


def _stream_families(streams: list[StreamMetrics]) -> Iterable[Any]:
    count = GaugeMetricFamily("vidrec_streams", "Streams configured now")
    count.add_metric([], len(streams))
    yield count
    state = GaugeMetricFamily("vidrec_stream_state", "1 for the stream's current state", labels=["stream", "state"])
    age = GaugeMetricFamily("vidrec_stream_last_frame_age_seconds", "Seconds since the stream's last decoded frame", labels=["stream"])
    decoded = CounterMetricFamily("vidrec_frames_decoded", "Frames decoded from the source", labels=["stream"])
    processed = CounterMetricFamily("vidrec_frames_processed", "Frames run through the models and handed to the sinks", labels=["stream"])
    dropped = CounterMetricFamily("vidrec_frames_dropped", "Frames not processed, by reason", labels=["stream", "reason"])
    reconnects = CounterMetricFamily("vidrec_stream_reconnects", "Reconnections of a live source", labels=["stream"])
    errors = CounterMetricFamily("vidrec_decode_errors", "Packets or frames the decoder refused", labels=["stream"])
    detected = CounterMetricFamily("vidrec_objects_detected", "Boxes in published results", labels=["stream"])
    recognized = CounterMetricFamily("vidrec_objects_recognized", "Boxes the gallery named", labels=["stream"])
    e2e = HistogramMetricFamily("vidrec_e2e_latency_seconds", "Capture to the result accepted by the first sink", labels=["stream"])
    crops = CounterMetricFamily("vidrec_recognizer_crops", "Crops that went through the recognizer", labels=["stream"])
    tracks = CounterMetricFamily("vidrec_tracks", "Track events, by kind", labels=["stream", "event"])
    active = GaugeMetricFamily("vidrec_tracks_active", "Tracks started and not ended yet", labels=["stream"])
    for s in streams:
        for name in STREAM_STATES:
            state.add_metric([s.stream, name], 1.0 if s.state == name else 0.0)
        if s.last_frame_age_s is not None:
            age.add_metric([s.stream], s.last_frame_age_s)
        decoded.add_metric([s.stream], s.decoded)
        processed.add_metric([s.stream], s.processed)
        for reason in DROP_REASONS:
            dropped.add_metric([s.stream, reason], s.dropped.get(reason, 0))
        reconnects.add_metric([s.stream], s.reconnects)
        errors.add_metric([s.stream], s.decode_errors)
        detected.add_metric([s.stream], s.detected)
        recognized.add_metric([s.stream], s.recognized)
        _histogram(e2e, [s.stream], s.e2e if s.e2e is not None else Histogram(LATENCY_BUCKETS_S))
        crops.add_metric([s.stream], s.crops)
        for event in TRACK_EVENTS:
            tracks.add_metric([s.stream, event], s.tracks.get(event, 0))
        active.add_metric([s.stream], s.tracks_active)
    yield from (state, age, decoded, processed, dropped, reconnects, errors, detected, recognized, e2e, crops, tracks,
                active)


def _inference_families(m: ServiceMetrics) -> Iterable[Any]:
    batches = CounterMetricFamily("vidrec_batches", "Inference batches run")
    batches.add_metric([], m.batches)
    size = HistogramMetricFamily("vidrec_batch_size", "Frames per inference batch")
    _histogram(size, [], m.batch_size or Histogram(BATCH_SIZE_BUCKETS))
    wait = HistogramMetricFamily("vidrec_batch_wait_seconds", "The batch's oldest frame: arrival at inference to batch start")
    _histogram(wait, [], m.batch_wait or Histogram(WAIT_BUCKETS_S))
    seconds = HistogramMetricFamily("vidrec_inference_seconds", "Seconds per batch, by model", labels=["model"])
    for model in MODELS:
        _histogram(seconds, [model], m.inference.get(model) or Histogram(INFERENCE_BUCKETS_S))
    entries = GaugeMetricFamily("vidrec_gallery_entries", "Embeddings in the gallery in use")
    entries.add_metric([], m.gallery_entries)
    version = GaugeMetricFamily("vidrec_gallery_version", "Gallery version in use (-1: none)")
    version.add_metric([], -1 if m.gallery_version is None else m.gallery_version)
    load_errors = CounterMetricFamily("vidrec_gallery_load_errors", "New gallery versions that could not be loaded (the one in use stayed)")
    load_errors.add_metric([], m.gallery_load_errors)
    yield from (batches, size, wait, seconds, entries, version, load_errors)


def _sink_families(sinks: list[SinkMetrics]) -> Iterable[Any]:
    published = CounterMetricFamily("vidrec_sink_published", "Results the sink accepted", labels=["sink"])
    errors = CounterMetricFamily("vidrec_sink_errors", "Writes the sink refused", labels=["sink"])
    dropped = CounterMetricFamily("vidrec_sink_dropped", "Results lost: out of a full spool or left at close", labels=["sink"])
    spool = GaugeMetricFamily("vidrec_sink_spool_results", "Results waiting to be published", labels=["sink", "tier"])
    for s in sinks:
        published.add_metric([s.name], s.published)
        errors.add_metric([s.name], s.errors)
        dropped.add_metric([s.name], s.dropped)
        for tier, n in s.spool.items():
            spool.add_metric([s.name, tier], n)
    yield from (published, errors, dropped, spool)


def _process_families(m: ServiceMetrics) -> Iterable[Any]:
    cpu = CounterMetricFamily("vidrec_process_cpu_seconds", "User and system CPU seconds", labels=["process"])
    rss = GaugeMetricFamily("vidrec_process_resident_memory_bytes", "Resident set size", labels=["process"])
    restarts = CounterMetricFamily("vidrec_worker_restarts", "Times the supervisor started a worker again", labels=["process"])
    for name, pid in m.processes.items():
        usage = process_usage(pid) if pid is not None else None
        # A restarted worker starts from 0 again, as process_cpu_seconds_total does (rate() handles resets).
        if usage is not None:
            cpu.add_metric([name], usage[0])
            rss.add_metric([name], usage[1])
        if name != "supervisor":
            restarts.add_metric([name], m.restarts.get(name, 0))
    yield from (cpu, rss, restarts)


def render(collector: Collector) -> bytes:
    """The text exposition of one collector (a fresh registry per scrape: nothing global)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
