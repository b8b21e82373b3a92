"""The HTTP API's bodies as pydantic models: what ``/openapi.json`` describes and a client can be generated from.

The service builds its answers as plain dicts (``StreamService``/``GalleryApi`` in ``workers/http_api.py``) and
validates request bodies itself, so that a refusal keeps its one-line message (``id: String should match
pattern ...``); these models describe those dicts field by field (``extra="forbid"``: a field added to an answer
without a model here fails ``tests/test_http_api.py``, which checks real answers against them). ``StreamSpec``
is the config's own model of a stream, the one ``POST /streams`` is validated with.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from config.schema import StreamSpec


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Body):
    error: str = Field(description="One line saying why the request was refused.")


# ---- GET /healthz ------------------------------------------------------------------------------------------
class Workers(_Body):
    inference: int | None = Field(description="The inference process's pid; null while it is not running.")
    ingest: list[int | None] = Field(description="Each ingest process's pid; null while one is not running.")


class GalleryHealth(_Body):
    version: int | None
    entries: int | None
    load_errors: int
    error: str | None


class ModelPrecision(_Body):
    precision: str = Field(description="fp32 or int8 (Global.precision; docs/int8.md).")
    file: str = Field(description="The model file it runs from.")
    reason: str = Field(description="Why this precision: the setting, the CPU, the int8 guard's result.")


class Health(_Body):
    status: str = Field(description="ok while serving; starting, draining or stopped otherwise (then 503).")
    run_id: str
    streams: int
    states: dict[str, int] = Field(description="How many streams are in each state.")
    workers: Workers
    failure: str | None
    gallery: GalleryHealth | None
    models: dict[str, ModelPrecision] | None = Field(
        None, description="Per model (detector; recognizer when a gallery is configured): precision, file and why.")


# ---- GET /streams, /streams/{id} ---------------------------------------------------------------------------
class StreamCounters(_Body):
    decoded: int
    skipped: int
    dropped_source: int
    reconnects: int
    decode_errors: int
    written: int
    taken: int
    dropped_ring: dict[str, int] = Field(description="Frames the ring dropped, by reason.")
    dropped_backlog: int
    dropped_too_old: int
    inference_errors: int
    processed: int
    published: dict[str, int] = Field(description="Results each sink wrote, by sink name.")


class StreamSinkCounts(_Body):
    written: int
    dropped: int
    errors: int


class StreamView(_Body):
    id: str
    url: str = Field(description="The stream's URL with any password shown as ***.")
    kind: str
    every_nth: int
    state: str
    reason: str | None
    since: float
    removing: bool
    ingest_process: int
    last_frame_age_s: float | None
    frame_count: int | None
    counters: StreamCounters
    sinks: dict[str, StreamSinkCounts]
    latency_ms: dict[str, Any] = Field(description="Latency percentiles by stage (docs/metrics.md).")
    warnings: list[str]
    last_latency_ms: dict[str, Any] = Field(description="The newest result's latency by stage.")


class SinkTotals(_Body):
    name: str
    queued: int
    written: int
    dropped: int
    errors: int
    publish_ms: dict[str, Any]
    last_error: str | None
    spool: dict[str, int]
    retrying: bool


class StreamList(_Body):
    streams: list[StreamView]
    sinks: list[SinkTotals]


class StreamRemoval(_Body):
    id: str
    removing: bool
    node: str | None = Field(None, description="Cluster mode: the node that ran the stream when it was removed.")


# ---- GET /cluster, GET /streams?scope=cluster (docs/cluster.md) -----------------------------------------------
class ClusterStream(_Body):
    id: str
    url: str
    kind: str
    every_nth: int
    node: str | None = Field(description="The node that runs it; null: pending (not placed yet).")
    state: str = Field(description="Its state on that node, or pending.")
    since: float | None


class ClusterStreamList(_Body):
    scope: str
    streams: list[ClusterStream]


class NodeStream(_Body):
    id: str
    state: str
    since: float


class ClusterNode(_Body):
    node: str
    http: str | None = Field(description="HOST:PORT of its HTTP API.")
    run_id: str
    reported_at: float = Field(description="When it last reported (its wall clock, Unix seconds).")
    age_s: float = Field(description="Seconds since that report, by this node's clock.")
    partitions: list[int]
    fenced: bool
    gallery_version: int | None
    streams: list[NodeStream]


class ClusterView(_Body):
    cluster: str
    node: str = Field(description="The node that answered.")
    member: dict[str, Any]
    nodes: list[ClusterNode]
    pending: list[str] = Field(description="Streams no live node runs (yet).")
    warnings: list[str] = Field(description="E.g. nodes running different gallery versions.")


# ---- GET /recognitions -------------------------------------------------------------------------------------
class LabelCount(_Body):
    label: str
    count: int
    streams: dict[str, int]


class Recognitions(_Body):
    labels: list[LabelCount]
    total: int


# ---- GET /track-events -------------------------------------------------------------------------------------
class TrackEventBody(_Body):
    """A track event as on the Kafka tracks topic (stream/schema/track_event.v1.json)."""

    event: str = Field(description="started, labelled or ended.")
    stream_id: str
    track_id: int
    frame_index: int
    time: float
    label: str | None
    score: float | None
    det_class: str | None
    box: list[float]
    first_seen: float
    last_seen: float
    dwell_s: float
    attempts: int
    best_box: list[float] | None
    best_frame_index: int | None
    previous_label: str | None
    reason: str | None
    run_id: str | None
    node: str | None = None
    schema_version: int


class TrackEventRow(_Body):
    n: int = Field(description="The event's number in this service run, increasing.")
    event: TrackEventBody
    thumbnail: str | None = Field(description="Path of the track's best crop (GET /thumbnails/...) while kept.")


class TrackEventPage(_Body):
    events: list[TrackEventRow] = Field(description="Oldest first.")
    next: int = Field(description="Pass as after= in the next request.")


# ---- /gallery ----------------------------------------------------------------------------------------------
class GalleryInfo(_Body):
    index_dir: str
    version: int
    entries: int
    labels: dict[str, int]


class GalleryItem(_Body):
    path: str = Field(description="An image under Service.gallery_image_root.")
    label: str


class GalleryAddItems(_Body):
    items: list[GalleryItem]


class GalleryRemoveLabels(_Body):
    labels: list[str]


class GalleryRemovePaths(_Body):
    paths: list[str]


class GalleryAdded(_Body):
    added: int
    version: int
    entries: int


class GalleryRemoved(_Body):
    removed: int
    version: int
    entries: int


# Request bodies by route, for the description (the service validates them itself, see above).
REQUEST_BODIES: dict[tuple[str, str], list[type[BaseModel]]] = {
    ("POST", "/streams"): [StreamSpec],
    ("POST", "/gallery/items"): [GalleryAddItems, GalleryItem],
    ("DELETE", "/gallery/items"): [GalleryRemoveLabels, GalleryRemovePaths],
}
