"""Every message between the processes of `vidrec serve`, and the settings each worker starts with.

    supervisor → ingest      AddStream, RemoveStream, StopIngest                    (its control queue)
    supervisor → inference   StreamAdded, SetStreamState, Watch, Drain              (its control queue)
    ingest → supervisor      StreamStateChanged, IngestStats, StreamRemoved, IngestExited   (its report pipe)
    inference → supervisor   InferenceReady, InferenceFatal, InferenceStats, StreamFinished, InferenceExited,
                             Snapshot (workers/snapshots.py), TrackEvents (workers/track_feed.py)
                                                                                    (its report pipe)

All are frozen dataclasses (pickled through multiprocessing). Counters use the names of workers/counters.py:
``dropped`` tables are keyed by ``Drop`` values.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from config import VidrecConfig
from config.schema import LiveSection
from stream.states import StreamState
from stream.transport import StreamCounters
from workers.metrics import Histogram
from workers.plans import StreamPlan


# ------------------------------------------------------------------------------------------- settings -----
@dataclass(frozen=True, slots=True)
class IngestSettings:
    run_id: str
    slots: int
    max_frame_bytes: int
    stats_interval_s: float
    drain_timeout_s: float
    live: LiveSection  # its ``options()`` (LiveOptions itself holds an unpicklable mapping)

    @classmethod
    def from_config(cls, cfg: VidrecConfig, run_id: str) -> "IngestSettings":
        svc = cfg.Service
        return cls(run_id=run_id, slots=svc.slots_per_stream, max_frame_bytes=svc.max_frame_bytes,
                   stats_interval_s=svc.stats_interval_s, drain_timeout_s=svc.drain_timeout_s,
                   live=svc.live)


@dataclass(frozen=True, slots=True)
class InferenceSettings:
    run_id: str
    max_batch: int
    max_wait_s: float
    per_stream_max: int | None
    live_backlog: int
    live_max_age_s: float
    sink_queue_size: int
    sink_close_timeout_s: float
    stats_interval_s: float
    overlay_fps: float = 5.0
    incarnation: int = 0  # how many times the supervisor started this worker before (results' run_id)
    overlay_max_width: int = 960
    overlay_jpeg_quality: int = 75

    @classmethod
    def from_config(cls, cfg: VidrecConfig, run_id: str, incarnation: int = 0) -> "InferenceSettings":
        svc = cfg.Service
        return cls(
            run_id=run_id, max_batch=svc.max_batch or cfg.Global.batch_size, max_wait_s=svc.max_batch_wait_ms / 1000.0,
            per_stream_max=svc.per_stream_max, live_backlog=svc.live_backlog,
            live_max_age_s=svc.live_max_age_ms / 1000.0, sink_queue_size=svc.sink_queue_size,
            sink_close_timeout_s=svc.sink_close_timeout_s, stats_interval_s=svc.stats_interval_s,
            overlay_fps=svc.overlay_fps, incarnation=incarnation, overlay_max_width=svc.overlay_max_width,
            overlay_jpeg_quality=svc.overlay_jpeg_quality,
        )


# ------------------------------------------------------------------------------- supervisor → ingest -----
@dataclass(frozen=True, slots=True)
class AddStream:
    """Start a stream. ``first_index`` numbers a live stream's frames on from where an earlier instance of the
    same stream id (a restarted ingest process, a stream removed and added again) stopped, so that its
    frame_index keeps growing; files always start at 0 (their index is the frame's place in the file)."""

    plan: StreamPlan
    first_index: int = 0


@dataclass(frozen=True, slots=True)
class RemoveStream:
    stream_id: str


@dataclass(frozen=True, slots=True)
class StopIngest:
    abort: bool = False


# ------------------------------------------------------------------------------- ingest → supervisor -----
@dataclass(frozen=True, slots=True)
class StreamStateChanged:
    stream_id: str
    state: StreamState
    reason: str | None
    at: float  # wall clock


@dataclass(frozen=True, slots=True)
class StreamIngest:
    """One stream as its ingest thread sees it. ``decoded``: frames the source decoded (live: including those
    it dropped before the thread took them); ``dropped``: ``every_nth`` and ``source`` (workers/counters.py);
    ``transport``: the ring's counters (written, taken by inference, dropped by the ring's reasons)."""

    state: StreamState
    reason: str | None
    decoded: int
    dropped: Mapping[str, int]
    reconnects: int
    decode_errors: int
    last_frame_age_s: float | None
    frame_count: int | None
    transport: StreamCounters | None

    @classmethod
    def empty(cls) -> "StreamIngest":
        return cls(StreamState.ENDED, None, 0, {}, 0, 0, None, None, None)


@dataclass(frozen=True, slots=True)
class IngestStats:
    process: int
    pid: int
    streams: dict[str, StreamIngest] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StreamRemoved:
    stream_id: str
    final: StreamIngest


@dataclass(frozen=True, slots=True)
class IngestExited:
    process: int
    streams: dict[str, StreamIngest]


# ---------------------------------------------------------------------------- supervisor → inference -----
@dataclass(frozen=True, slots=True)
class StreamAdded:
    plan: StreamPlan


@dataclass(frozen=True, slots=True)
class SetStreamState:
    """The stream's state as ingest reported it: results carry it (``stream_state``)."""

    stream_id: str
    state: StreamState


@dataclass(frozen=True, slots=True)
class Drain:
    pass


@dataclass(frozen=True, slots=True)
class Watch:
    """Someone looks at this stream's overlay: send ``Snapshot``s of its processed frames until ``until``
    (wall-clock), at most ``fps`` a second."""

    stream_id: str
    until: float


# ---------------------------------------------------------------------------- inference → supervisor -----
@dataclass(frozen=True, slots=True)
class InferenceReady:
    pid: int
    gallery_version: int | None


@dataclass(frozen=True, slots=True)
class InferenceFatal:
    message: str


@dataclass(frozen=True, slots=True)
class StreamInference:
    """One stream's counters in the inference process. ``taken``: frames claimed from the ring;
    ``processed``: run through the models and handed to the sinks; the rest were dropped (``dropped``:
    ``backlog``, ``too_old``, ``inference_error``; workers/counters.py). ``latency_ms``: p50/p99 of ``total`` (and
    ``e2e`` = camera + total for clock-stamped streams) over recent results; ``last``: the last result's
    latency_ms."""

    taken: int
    processed: int
    dropped: Mapping[str, int]
    last_index: int  # the highest frame index taken, -1 before the first
    latency_ms: dict[str, float]
    last: dict[str, float]
    ended: bool
    final_transport: StreamCounters | None
    detected: int = 0  # boxes in published results
    recognized: int = 0  # boxes the gallery named
    e2e_seconds: Histogram | None = None  # capture -> accepted by the first sink
    crops: int = 0  # crops that went through the recognizer (with tracking off too: compare the two)
    tracks: Mapping[str, int] = field(default_factory=dict)  # track events by kind: started, labelled, ended
    tracks_active: int = 0  # tracks started and not ended in this worker (a restarted one starts with none)


@dataclass(frozen=True, slots=True)
class InferenceStats:
    streams: dict[str, StreamInference]
    sinks: list[dict[str, Any]]  # sinks are read before the streams: a stream's published <= its processed
    sink_streams: dict[str, dict[str, dict[str, int]]]  # sink name -> stream -> written/dropped/errors
    batches: int
    frames: int
    gallery_version: int | None
    gallery_entries: int = 0
    batch_size: Histogram | None = None
    batch_wait_seconds: Histogram | None = None
    inference_seconds: dict[str, Histogram] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> stream -> named boxes (top ones)
    gallery_load_errors: int = 0  # new gallery versions that could not be loaded (the one in use stayed)
    gallery_error: str | None = None  # why the newest one was refused; None once one loads


@dataclass(frozen=True, slots=True)
class StreamFinished:
    stream_id: str
    counters: StreamInference


@dataclass(frozen=True, slots=True)
class InferenceExited:
    stats: InferenceStats
    sinks_clean: bool
