"""Typed configuration: PP-ShiTu's ``inference_general.yaml`` sections, plus vidrec's own.

PP-ShiTu's keys keep their names (``rec_nms_thresold`` is spelled as PaddleClas spells it) and
meanings; every model refuses unknown keys, so a typo fails at start instead of being ignored.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from stream.live_options import LiveOptions


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=False)


class GlobalSection(Section):
    """PP-ShiTu ``Global``."""

    infer_imgs: str | None = Field(None, description="Default input for `vidrec video` when none is given.")
    det_inference_model_dir: str = Field("picodet_s_coco", description="Detector model folder, or a name resolved from VIDREC_MODEL_DIR / the cache.")
    rec_inference_model_dir: str = Field("efficientnet_lite0", description="Recognizer model folder, or a name resolved likewise.")
    rec_nms_thresold: float = Field(0.05, ge=0.0, le=1.0, description="IoU above which a lower-scored recognised box is suppressed.")
    batch_size: int = Field(1, ge=1, le=256, description="Frames per inference batch (PP-ShiTu asserts 1; vidrec batches).")
    image_shape: list[int] = Field([3, 640, 640], min_length=3, max_length=3, description="Kept for compatibility; the detector's input size is read from its model.")
    threshold: float = Field(0.2, ge=0.0, le=1.0, description="Detector score threshold.")
    max_det_results: int = Field(5, ge=0, le=1000, description="Keep at most this many detector boxes per frame (before the whole-frame box).")
    label_list: list[str] = Field(["foreground"], description="Mainbody label list (PP-ShiTu).")
    backend: Literal["onnx", "paddle"] = Field("onnx", description="vidrec: inference runtime, ONNX Runtime or Paddle Inference.")
    precision: Literal["auto", "fp32", "int8"] = Field("auto", description="vidrec: auto runs a model's int8 copy (vidrec models quantize) on a CPU with VNNI when its guard passed, else fp32; fp32 or int8 force one.")
    use_gpu: bool = False
    enable_mkldnn: bool = True
    cpu_num_threads: int = Field(2, ge=1, le=256)
    use_fp16: bool = False
    ir_optim: bool = True
    use_tensorrt: bool = False
    gpu_mem: int = Field(8000, ge=1)
    enable_benchmark: bool = False
    enable_profile: bool = False


class IndexProcessSection(Section):
    """PP-ShiTu ``IndexProcess``: the gallery."""

    index_method: Literal["Flat", "IVF", "HNSW32"] = "Flat"
    image_root: str = "."
    index_dir: str | None = None
    data_file: str | None = None
    index_operation: Literal["new", "append", "remove"] = "new"
    delimiter: str = Field("\t", min_length=1)
    dist_type: Literal["IP", "L2"] = Field("IP", description="hamming (binary features) is not supported.")
    embedding_size: int = Field(1840, ge=1)
    batch_size: int = Field(32, ge=1, le=4096, description="Images per recognizer call while building a gallery.")
    return_k: int = Field(5, ge=1, le=1000)
    # Scores are similarities in [-1, 1] for both dist types (see models/gallery.py), so a
    # threshold outside that range could never (or always) match.
    score_thres: float = Field(0.40, ge=-1.0, le=1.0)
    # vidrec's own (docs/ppshitu-compat.md): an answer is kept only when its score also beats the best entry
    # of another label by this much (0: PP-ShiTu's rule, the score alone).
    margin_thres: float = Field(0.16, ge=0.0, le=2.0)
    # vidrec's own: views of each gallery image averaged into its one embedding (models/gallery_views.py).
    gallery_augment: Literal["none", "grid9"] = "grid9"


class TransformOps(Section):
    """``DetPreProcess`` / ``RecPreProcess``: a PaddleClas-style list of {OpName: {args}}."""

    transform_ops: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("transform_ops")
    @classmethod
    def _one_op_per_item(cls, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for op in ops:
            if len(op) != 1:
                raise ValueError(f"each transform op must be one {{OpName: args}} mapping, got {op!r}")
        return ops


class DetectorSection(Section):
    """vidrec: which files of ``Global.det_inference_model_dir`` to load and how to merge classes."""

    model_file: str | None = Field(None, description="File in the model folder; default by backend: picodet_s_320_coco.onnx / model.onnx for onnx, model.json / model.pdmodel for paddle.")
    labels_file: str | None = Field(None, description="Class names, one per line; default: infer_cfg.yml's label_list, else coco.names.")
    mainbody: bool = Field(True, description="Class-agnostic NMS as PP-ShiTu's mainbody detector; the COCO class is kept per box.")
    nms_iou: float = Field(0.6, ge=0.0, le=1.0)
    run_ahead: bool = Field(True, description="Detect the next batch on a thread of its own while the current one is tracked, embedded and searched (workers/detect_ahead.py).")


class RecognizerSection(Section):
    """vidrec: which file of ``Global.rec_inference_model_dir`` to load."""

    model_file: str | None = Field(None, description="File in the model folder; default by backend: inference.onnx for onnx, inference.json / inference.pdmodel for paddle.")


class TrackerSection(Section):
    """vidrec: recognition per track instead of per box per frame (docs/tracking.md)."""

    enabled: bool = Field(True, description="Track objects and recognise each track a few times; false: every box of every frame is recognised (PP-ShiTu's per-image behaviour).")
    lost_track_s: float = Field(1.0, gt=0.0, le=60.0, description="A track with no detection for this long ends (stream time, so dropped live frames count as time).")
    track_activation_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Detector score a box needs to start a track.")
    high_conf_det_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Boxes below it can only extend a track (ByteTrack's second association).")
    minimum_iou_threshold: float = Field(0.1, ge=0.0, le=1.0, description="Least IoU between a track's predicted box and a detection for them to match.")
    embed_every: int = Field(10, ge=1, le=100000, description="Recognise a track's crop again after this many of its frames (and the whole-frame box after this many frames of the stream).")
    embed_growth: float = Field(1.2, gt=1.0, le=100.0, description="Recognise a track's crop again when its box area has grown by this factor since the last time.")
    min_votes: int = Field(2, ge=1, le=1000, description="Attempts an answer needs of its own before it names (or unnames) a track.")
    min_share: float = Field(0.0, ge=0.0, le=1.0, description="Share of a track's attempts that must each pass the acceptance rule for its leading label to name it (0: off).")
    unique_labels: bool = Field(False, description="The gallery names individuals (people, vehicles), not kinds: a label names at most one live track of a stream, the one whose answer is strongest.")


class VideoSection(Section):
    """vidrec: offline input handling."""

    every_nth: int = Field(1, ge=1, le=10000, description="Process every Nth decoded frame.")
    stream_id: str | None = Field(None, min_length=1, description="Defaults to the input file's stem.")


class KafkaSection(Section):
    """The Kafka sink; security settings go to kafka-python as they are (docs/security.md).

    Secrets are never in the config: ``sasl_password_env`` names the environment variable that holds the
    SASL password, read when the sink starts.
    """

    bootstrap: str | None = Field(None, description="host:port[,host:port]; None disables the Kafka sink.")
    topic: str = Field("vidrec.results", min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    tracks_topic: str | None = Field(None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$",
                                     description="Topic of the track events (with Tracker.enabled); null: <topic>.tracks.")
    connect_timeout_s: float = Field(5.0, gt=0, le=120)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field("PLAINTEXT", description="kafka-python security_protocol.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(None, description="Required with SASL_PLAINTEXT / SASL_SSL.")
    sasl_username: str | None = Field(None, min_length=1, description="SASL user; required with SASL_*.")
    sasl_password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable holding the SASL password; required with SASL_*.")
    ssl_cafile: str | None = Field(None, min_length=1, description="CA bundle (PEM) to verify the brokers; null: the system's. SSL / SASL_SSL only.")
    ssl_certfile: str | None = Field(None, min_length=1, description="Client certificate (PEM) for mutual TLS. SSL / SASL_SSL only.")
    ssl_keyfile: str | None = Field(None, min_length=1, description="Client key (PEM, unencrypted) for ssl_certfile.")
    # The live service's spool (stream/sinks/spool.py): results wait here until the broker acknowledged them.
    spool_memory_results: int = Field(10_000, ge=2, le=10_000_000, description="`vidrec serve`: results waiting for Kafka kept in memory; more go to disk.")
    spool_dir: str | None = Field(None, min_length=1, description="`vidrec serve`: this node's own folder for the spool's segment files; what a killed earlier run left there is published first, with its own run_id and seq (docs/robustness.md). null: the system's temp dir, and nothing outlives the run.")
    spool_max_bytes: int = Field(512 * 1024 * 1024, ge=0, description="`vidrec serve`: most bytes of spooled results on disk (0: memory only); beyond it the oldest are dropped and counted.")

    @model_validator(mode="after")
    def _tracks_topic_fits(self) -> "KafkaSection":
        if self.tracks_topic is None and len(self.tracks_topic_name) > 249:
            raise ValueError(f"tracks_topic: the default {self.topic}.tracks is over Kafka's 249 characters; set tracks_topic")
        return self

    @property
    def tracks_topic_name(self) -> str:
        """The topic track events go to: ``tracks_topic``, or ``<topic>.tracks``."""
        return self.tracks_topic or f"{self.topic}.tracks"

    @field_validator("spool_max_bytes")
    @classmethod
    def _spool_disk_size(cls, value: int) -> int:
        if 0 < value < 256 * 1024:
            raise ValueError(f"must be 0 (memory only) or at least 262144 (256 KiB), got {value}")
        return value

    @model_validator(mode="after")
    def _security(self) -> "KafkaSection":
        sasl = self.security_protocol.startswith("SASL_")
        ssl = self.security_protocol.endswith("SSL")
        sasl_keys = {"sasl_mechanism": self.sasl_mechanism, "sasl_username": self.sasl_username, "sasl_password_env": self.sasl_password_env}
        if sasl:
            missing = [key for key, value in sasl_keys.items() if value is None]
            if missing:
                raise ValueError(f"security_protocol {self.security_protocol} needs {', '.join(missing)}")
        else:
            given = [key for key, value in sasl_keys.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} set but security_protocol is {self.security_protocol} (SASL needs SASL_PLAINTEXT or SASL_SSL)")
        if not ssl:
            given = [key for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(self, key) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} set but security_protocol is {self.security_protocol} (TLS needs SSL or SASL_SSL)")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile set without ssl_certfile")
        return self


class RedisSection(Section):
    """The Redis sink. A password comes from the environment variable ``password_env`` (or the URL, for a
    quick try); a user name may be in the URL (``redis://user@host:6379/0``); ``rediss://`` uses TLS."""

    url: str | None = Field(None, description="redis://[user@]host:port/db, rediss://... for TLS, or unix:///path; None disables the Redis sink.")
    history_len: int = Field(1000, ge=1, le=1_000_000)
    ttl_s: int | None = Field(3600, ge=1)
    key_prefix: str = Field("vidrec", min_length=1)
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Environment variable holding the Redis password (AUTH); null: none, or the URL's.")
    ssl_ca_certs: str | None = Field(None, min_length=1, description="CA bundle (PEM) to verify a rediss:// server; null: the system's.")

    @model_validator(mode="after")
    def _auth(self) -> "RedisSection":
        from urllib.parse import urlsplit

        if self.url is None:
            return self
        try:
            parts = urlsplit(self.url)
            has_password = parts.password is not None
        except ValueError:
            return self  # the sink reports a malformed URL, naming it
        if self.password_env is not None and has_password:
            raise ValueError("url has a password and password_env is set; keep the password in the environment only")
        if self.ssl_ca_certs is not None and parts.scheme != "rediss":
            raise ValueError(f"ssl_ca_certs needs a rediss:// url (TLS), got {parts.scheme}://")
        return self


_LIVE = LiveOptions()  # the defaults (and, in ``options()``, the checks) are stream/live_options.py's


class LiveSection(Section):
    """vidrec: how live sources (RTSP cameras) connect, time out and reconnect: ``LiveOptions``
    (stream/live_options.py) holds the defaults and the checks; here, the range a config may set."""

    open_timeout_s: float = Field(_LIVE.open_timeout_s, gt=0, le=300, description="Connect + probe timeout per attempt.")
    read_timeout_s: float = Field(_LIVE.read_timeout_s, gt=0, le=300, description="A read with no data for this long ends the connection (a silent server).")
    stall_after_s: float = Field(_LIVE.stall_after_s, gt=0, le=300, description="No frame for this long: the stream is 'stalled' (watchdog).")
    first_frame_timeout_s: float = Field(_LIVE.first_frame_timeout_s, gt=0, le=300, description="Per connection: no decodable frame this long after connecting gives it up.")
    backoff_initial_s: float = Field(_LIVE.backoff_initial_s, gt=0, le=300, description="First reconnect delay; doubles per failed attempt.")
    backoff_max_s: float = Field(_LIVE.backoff_max_s, gt=0, le=3600, description="Longest reconnect delay.")

    @model_validator(mode="after")
    def _valid_options(self) -> "LiveSection":
        self.options()  # LiveOptions' own checks (the backoff's order): one line naming the keys
        return self

    def options(self) -> LiveOptions:
        """These settings as the live source's options (the rest: LiveOptions' defaults)."""
        try:
            return LiveOptions(**self.model_dump())
        except ValueError as exc:
            raise ValueError(str(exc).removeprefix("LiveOptions.")) from None


class ServiceSection(Section):
    """vidrec: the live service (`vidrec serve`): processes, batching, queues and the HTTP API."""

    ingest_processes: int = Field(2, ge=1, le=64, description="Decode processes; each stream goes to the one with the fewest streams.")
    max_streams: int = Field(16, ge=1, le=1024, description="Most streams at once (sizes the frame queue); adding more is refused.")
    slots_per_stream: int = Field(4, ge=2, le=64, description="Shared-memory frame slots per stream.")
    max_frame_bytes: int = Field(1920 * 1080 * 3, ge=1, description="Initial slot size (BGR bytes); larger frames grow the slots.")
    # The batch pick (workers/batcher.py): whatever waits when inference is free, cameras before files,
    # streams least recently served first. On a CPU a fuller batch costs as much per frame, so nothing waits
    # for one to fill (max_batch_wait_ms 0), and a camera behind catches up by dropping, not by taking more
    # of a batch (per_stream_max 1) (docs/benchmarks.md, issue 13). max_batch None: Global.batch_size.
    max_batch: int | None = Field(4, ge=1, le=256, description="Most frames in one inference batch, across streams; null: Global.batch_size.")
    max_batch_wait_ms: float = Field(0.0, ge=0, le=10_000, description="0: a batch is what waits when inference is free; more: a batch that cannot be full waits until its oldest frame waited this long (accelerators).")
    per_stream_max: int | None = Field(1, ge=1, le=256, description="Most frames of one stream in one batch; null: up to max_batch.")
    live_backlog: int = Field(2, ge=1, le=64, description="Newest frames a live stream keeps waiting for inference; older ones are dropped and counted.")
    live_max_age_ms: float = Field(1000.0, gt=0, le=600_000, description="A live frame older than this (since capture) when its batch starts is dropped and counted.")
    sink_queue_size: int = Field(1000, ge=1, le=10_000_000, description="Results waiting per sink; when full the oldest is dropped and counted.")
    sink_close_timeout_s: float = Field(15.0, gt=0, le=3600, description="At shutdown, how long each sink may take to deliver what waits.")
    drain_timeout_s: float = Field(30.0, gt=0, le=3600, description="At shutdown, how long in-flight frames may take to reach inference.")
    startup_timeout_s: float = Field(300.0, gt=0, le=3600, description="How long the inference worker may take to load its models.")
    stats_interval_s: float = Field(0.5, gt=0, le=60, description="How often workers report states and counters.")
    http_host: str = Field("127.0.0.1", min_length=1, description="HTTP API address (--http HOST:PORT).")
    http_port: int | None = Field(None, ge=0, le=65535, description="HTTP API port; null: no HTTP API.")
    api_token_env: str = Field("VIDREC_API_TOKEN", min_length=1, description="Environment variable holding the bearer token for POST/DELETE.")
    http_read_auth: bool = Field(False, description="GET routes (metrics, overlay, stream views, recognitions) need the token too; /healthz stays open.")
    overlay_fps: float = Field(5.0, gt=0, le=60, description="Most overlay snapshots per second per stream someone is watching (JPEG, encoded only while watched).")
    overlay_max_width: int = Field(960, ge=64, le=7680, description="Overlay snapshots wider than this are scaled down (boxes stay in frame pixels).")
    overlay_jpeg_quality: int = Field(75, ge=10, le=100)
    gallery_image_root: str | None = Field(None, description="Folder the gallery API may read images from (no path outside it); null: IndexProcess.image_root.")
    live: LiveSection = Field(default_factory=LiveSection)


class ClusterSection(Section):
    """vidrec: `vidrec serve --cluster NAME`: nodes with the same name share the streams through a Kafka consumer
    group (docs/cluster.md). ``node`` names this node in results, metrics and ``GET /cluster``, clustered or not."""

    name: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$",
                             description="Cluster name: the consumer group, and the streams topic's prefix; null: one node on its own (streams from the config, --stream and the HTTP API).")
    node: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
                             description="This node's id; null: <host name>:<HTTP port>, or <host name>:<process id> without an HTTP API.")
    streams_topic: str | None = Field(None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$",
                                      description="The compacted topic holding the streams (key: stream id, value: spec JSON, tombstone: removed); null: NAME.streams.")
    nodes_topic: str | None = Field(None, min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$",
                                    description="The compacted topic where each node reports itself for GET /cluster; null: NAME.nodes.")
    partitions: int = Field(24, ge=1, le=10_000, description="Partitions of the streams topic when it is created: the most nodes that can share the streams (more than you expect).")
    # Not Kafka's 45 s: a camera whose node died is dark for about this long (docs/cluster.md). Brokers refuse
    # less than group.min.session.timeout.ms (6 s by default).
    session_timeout_ms: int = Field(10_000, ge=1000, le=1_800_000, description="Consumer-group session timeout: a node silent this long loses its streams to the others, and fences itself (stops them).")
    heartbeat_interval_ms: int = Field(2000, ge=100, le=600_000, description="Consumer-group heartbeat; under a third of session_timeout_ms.")
    static_membership: bool = Field(False, description="Join with group.instance.id = node: a node restarted within the session timeout gets its streams back without a rebalance.")
    report_interval_s: float = Field(2.0, gt=0, le=60, description="How often a node reports itself (its streams and their states) for GET /cluster.")
    place_wait_s: float = Field(5.0, ge=0, le=60, description="How long POST /streams waits to name the node that runs a new stream (else it answers pending).")

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> "ClusterSection":
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(f"Cluster.heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below "
                             f"Cluster.session_timeout_ms ({self.session_timeout_ms})")
        return self


STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class StreamSpec(Section):
    """vidrec: one input of `vidrec serve`: a camera URL (rtsp://...) or a file, image or folder path."""

    id: str = Field(pattern=STREAM_ID_PATTERN, description="Stream id: results' stream_id and Kafka key (letters, digits, . _ : -).")
    url: str = Field(min_length=1, description="rtsp://, http(s)://... for a camera; a path (or file://) for a file, image or folder.")
    every_nth: int = Field(1, ge=1, le=10_000, description="Process every Nth decoded frame.")
    kind: Literal["auto", "live", "file"] = Field("auto", description="auto: live for network URLs, file for paths. live drops old frames, file loses none.")
    clock_stamp: bool = Field(False, description="Frames carry a wall-clock stamp in their pixels (the test server's /clock): results get latency_ms.camera.")


class VidrecConfig(Section):
    Global: GlobalSection = Field(default_factory=GlobalSection)
    DetPreProcess: TransformOps | None = Field(None, description="Accepted for inference_general.yaml compatibility; the detector's preprocessing comes with its model.")
    DetPostProcess: dict[str, Any] | None = None
    RecPreProcess: TransformOps = Field(default_factory=TransformOps)
    RecPostProcess: dict[str, Any] | None = None
    IndexProcess: IndexProcessSection = Field(default_factory=IndexProcessSection)
    Detector: DetectorSection = Field(default_factory=DetectorSection)
    Recognizer: RecognizerSection = Field(default_factory=RecognizerSection)
    Video: VideoSection = Field(default_factory=VideoSection)
    Tracker: TrackerSection = Field(default_factory=TrackerSection)
    Kafka: KafkaSection = Field(default_factory=KafkaSection)
    Redis: RedisSection = Field(default_factory=RedisSection)
    Service: ServiceSection = Field(default_factory=ServiceSection)
    Cluster: ClusterSection = Field(default_factory=ClusterSection)
    streams: list[StreamSpec] = Field(default_factory=list, description="Inputs of `vidrec serve` (more with --stream and the HTTP API).")

    @field_validator("streams")
    @classmethod
    def _unique_ids(cls, streams: list[StreamSpec]) -> list[StreamSpec]:
        seen: set[str] = set()
        for spec in streams:
            if spec.id in seen:
                raise ValueError(f"duplicate stream id {spec.id!r}")
            seen.add(spec.id)
        return streams
