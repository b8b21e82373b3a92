"""Kafka sink: one message per frame, key = ``stream_id`` (UTF-8), value = ``FrameResult.to_json()``.

Keying by stream id sends every frame of a stream to the same partition, so a consumer sees each
stream's frames in order. The producer uses ``acks='all'`` with idempotence (kafka-python 3 supports
and defaults to it), so broker-side retries neither lose nor duplicate nor reorder messages.

The constructor connects (``bootstrap_timeout_ms``, so an unreachable broker fails in
``connect_timeout_s`` instead of kafka-python's 30 s) and creates the topic with the broker's default
partition count and replication if it does not exist. ``write`` is asynchronous; delivery failures are
collected and reported by ``close``, which flushes with a deadline. ``abort`` closes at once: records not
yet delivered are dropped (Kafka has no "complete" marker; consumers simply see the stream stop).
"""
from __future__ import annotations

import threading
from typing import Any

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError

from stream.errors import SinkError
from stream.messages import FrameResult


class KafkaSink:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        connect_timeout_s: float = 5.0,
        extra: dict[str, Any] | None = None,
        flush_timeout_s: float = 30.0,
    ) -> None:
        """``extra``: further kafka-python producer settings (security, compression, ...); the ones an
        admin client also understands (security, SSL, SASL) are used for the topic check too."""
        self.bootstrap = bootstrap
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self._lock = threading.Lock()
        self._sent = 0
        self._failed = 0
        self._first_error: BaseException | None = None
        self._closed = False
        servers = [s.strip() for s in bootstrap.split(",") if s.strip()]
        connect_ms = max(1, int(connect_timeout_s * 1000))
        config: dict[str, Any] = {
            "bootstrap_servers": servers,
            "bootstrap_timeout_ms": connect_ms,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "max_block_ms": max(connect_ms, 10_000),
            "client_id": "vidrec-sink",
        }
        config.update(extra or {})
        try:
            self._producer = KafkaProducer(**config)
        except (KafkaError, OSError, ValueError) as exc:
            raise SinkError(f"cannot reach Kafka at {bootstrap}: {_describe(exc)}") from exc
        try:
            self._ensure_topic(config, connect_ms)
        except BaseException:
            self._producer.close(timeout=0)
            raise

    def _ensure_topic(self, config: dict[str, Any], connect_ms: int) -> None:
        admin_config = {k: v for k, v in config.items() if k in KafkaAdminClient.DEFAULT_CONFIG}
        admin_config["client_id"] = "vidrec-sink-admin"
        try:
            admin = KafkaAdminClient(**admin_config)
        except (KafkaError, OSError, ValueError) as exc:
            raise SinkError(f"cannot reach Kafka at {self.bootstrap}: {_describe(exc)}") from exc
        try:
            if self.topic not in admin.list_topics():
                try:
                    admin.create_topics([self.topic], timeout_ms=max(connect_ms, 10_000), wait_for_metadata=True)
                except TopicAlreadyExistsError:
                    pass  # created meanwhile by someone else
            # The producer needs the partitions before the first send; this also proves the topic is usable.
            if not self._producer.partitions_for(self.topic):
                raise SinkError(f"Kafka at {self.bootstrap}: topic {self.topic!r} has no partitions")
        except KafkaError as exc:
            raise SinkError(f"cannot use topic {self.topic!r} on Kafka at {self.bootstrap}: {_describe(exc)}") from exc
        finally:
            admin.close()

    def _on_error(self, exc: BaseException) -> None:
        with self._lock:
            self._failed += 1
            if self._first_error is None:
                self._first_error = exc

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise SinkError(f"Kafka sink for topic {self.topic!r} at {self.bootstrap} is closed")
        try:
            future = self._producer.send(
                self.topic, key=result.stream_id.encode("utf-8"), value=result.to_json().encode("utf-8")
            )
        except KafkaError as exc:
            raise SinkError(f"cannot send to topic {self.topic!r} on Kafka at {self.bootstrap}: {_describe(exc)}") from exc
        self._sent += 1
        future.add_errback(self._on_error)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        where = f"Kafka at {self.bootstrap}, topic {self.topic!r}"
        try:
            self._producer.flush(timeout=self.flush_timeout_s)
        except KafkaError as exc:
            self._producer.close(timeout=0)
            raise SinkError(
                f"{where}: results not delivered within {self.flush_timeout_s:g} s: {_describe(exc)}"
            ) from exc
        self._producer.close(timeout=self.flush_timeout_s)
        with self._lock:
            failed, first = self._failed, self._first_error
        if failed:
            raise SinkError(f"{where}: {failed} of {self._sent} results failed: {_describe(first)}") from first

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._producer.close(timeout=0)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).strip()
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name
