"""The streams topic of a cluster: where `vidrec serve --cluster NAME` keeps the streams every node shares.

One compacted Kafka topic (``Cluster.streams_topic``, default ``NAME.streams``): the key is the stream id, the
value the stream's spec as JSON (``StreamSpec``: the same fields as ``POST /streams`` and the config's
``streams``), and a tombstone (null value) removes the stream. Compaction keeps the newest record per key, so
reading the topic from its start gives the current set. The key also decides the partition (Kafka's murmur2
partitioner, ``partition_of``), and the partition decides the node: the consumer group gives each partition to
one node (workers/cluster_member.py).

Here: encoding and decoding one record (pure: a malformed record is a ``BadSpec`` with a one-line reason, for
the reader to log, count and skip), creating the topic, and writing a spec or a tombstone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from pydantic import ValidationError

from config import VidrecConfig
from config.schema import StreamSpec
from workers.plans import spec_error

__all__ = ["BadSpec", "SpecRecord", "SpecWriter", "decode_record", "encode_spec", "ensure_topic",
           "nodes_topic", "partition_of", "streams_topic"]

# Compaction keeps one record per stream; a tombstone stays a day so that a node catching up sees the removal.
TOPIC_CONFIGS = {"cleanup.policy": "compact", "delete.retention.ms": "86400000", "min.compaction.lag.ms": "0"}


class BadSpec(ValueError):
    """A record on the streams topic that is not a stream spec (one line: which key, what is wrong)."""


@dataclass(frozen=True)
class SpecRecord:
    """One record of the streams topic: ``spec`` None is a tombstone (the stream was removed)."""

    stream_id: str
    spec: StreamSpec | None


def streams_topic(cfg: VidrecConfig) -> str:
    return cfg.Cluster.streams_topic or f"{cfg.Cluster.name}.streams"


def nodes_topic(cfg: VidrecConfig) -> str:
    return cfg.Cluster.nodes_topic or f"{cfg.Cluster.name}.nodes"


def encode_spec(spec: StreamSpec) -> tuple[bytes, bytes]:
    """(key, value) of a spec's record: every field written, so a record means the same whatever the defaults
    of the node that reads it."""
    return spec.id.encode("utf-8"), json.dumps(spec.model_dump(mode="json"), separators=(",", ":"),
                                                sort_keys=True).encode("utf-8")


def decode_record(key: bytes | None, value: bytes | None) -> SpecRecord:
    """A record back to a stream id and its spec (None: a tombstone). Raises ``BadSpec`` for anything else."""
    if key is None:
        raise BadSpec("record without a key (the key must be the stream id)")
    try:
        stream_id = key.decode("utf-8")
    except UnicodeDecodeError:
        raise BadSpec(f"key {key[:64]!r} is not UTF-8") from None
    if value is None:
        return SpecRecord(stream_id, None)
    try:
        body = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadSpec(f"stream {stream_id!r}: value is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadSpec(f"stream {stream_id!r}: value is a JSON {type(body).__name__}, not an object")
    try:
        spec = StreamSpec.model_validate(body)
    except ValidationError as exc:
        raise BadSpec(f"stream {stream_id!r}: {spec_error(exc)}") from None
    if spec.id != stream_id:
        raise BadSpec(f"stream {stream_id!r}: the spec's id is {spec.id!r} (it must equal the key)")
    return SpecRecord(stream_id, spec)


def partition_of(stream_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as the Java client's) gives the key ``stream_id``."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    return (murmur2(stream_id.encode("utf-8")) & 0x7FFFFFFF) % partitions


def client_config(cfg: VidrecConfig, client_id: str) -> dict[str, Any]:
    """Bootstrap and security settings of every cluster client (the results sink's own: Kafka.*)."""
    from stream.sinks.kafka import kafka_security_kwargs

    assert cfg.Kafka.bootstrap, "a cluster needs Kafka.bootstrap"
    return {"bootstrap_servers": cfg.Kafka.bootstrap.split(","), "client_id": client_id,
            **kafka_security_kwargs(cfg.Kafka)}


def ensure_topic(cfg: VidrecConfig, topic: str, partitions: int) -> int:
    """Create ``topic`` compacted with ``partitions`` partitions unless it exists; returns its partition count
    (an existing topic keeps its own: more partitions would move keys between partitions)."""
    admin = KafkaAdminClient(**client_config(cfg, f"vidrec-{cfg.Cluster.node}-admin"))
    try:
        if topic not in admin.list_topics():
            try:
                admin.create_topics({topic: {"num_partitions": partitions, "configs": TOPIC_CONFIGS}},
                                    timeout_ms=10_000, wait_for_metadata=True)
            except TopicAlreadyExistsError:
                pass  # another node created it meanwhile
        described = admin.describe_topics([topic])
        return len(described[0]["partitions"])
    finally:
        admin.close()


class SpecWriter:
    """Writes specs and tombstones to the streams topic, each acknowledged by the broker before it returns."""

    def __init__(self, cfg: VidrecConfig, timeout_s: float = 10.0) -> None:
        self.topic = streams_topic(cfg)
        self._timeout_s = timeout_s
        self._producer = KafkaProducer(**client_config(cfg, f"vidrec-{cfg.Cluster.node}-specs"), acks="all",
                                       max_block_ms=int(timeout_s * 1000))

    def put(self, spec: StreamSpec) -> int:
        """Write ``spec``; returns its partition."""
        key, value = encode_spec(spec)
        return self._send(key, value)

    def remove(self, stream_id: str) -> int:
        """Write the tombstone of ``stream_id``; returns its partition."""
        return self._send(stream_id.encode("utf-8"), None)

    def _send(self, key: bytes, value: bytes | None) -> int:
        try:
            metadata = self._producer.send(self.topic, key=key, value=value).get(timeout=self._timeout_s)
        except KafkaError as exc:
            raise OSError(f"cannot write to the streams topic {self.topic!r}: {exc}") from exc
        return int(metadata.partition)

    def close(self) -> None:
        self._producer.close(timeout=5)
