"""Kafka sink: one message per frame, key = ``stream_id`` (UTF-8), value = ``FrameResult.to_json()``.
The same class publishes track events to their own topic (``TrackEvent``: key = its ``stream_id``, value = its
``to_json()``): ``write``/``send`` take anything with those two.

Keying by stream id sends every frame of a stream to the same partition, so a consumer sees each
stream's frames in order. The producer uses ``acks='all'`` with idempotence (kafka-python 3 supports
and defaults to it), so broker-side retries neither lose nor duplicate nor reorder messages.

The constructor connects (``bootstrap_timeout_ms``, so an unreachable broker fails in
``connect_timeout_s`` instead of kafka-python's 30 s) and creates the topic with the broker's default
partition count and replication if it does not exist. ``write`` is asynchronous; delivery failures are
collected and reported by ``close``, which flushes with a deadline. ``abort`` closes at once: records not
yet delivered are dropped (Kafka has no "complete" marker; consumers simply see the stream stop).

Security (TLS, SASL) comes from the config's ``Kafka`` section through ``kafka_security_kwargs``, which turns
it into kafka-python settings and reads the SASL password from the environment variable the section names.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Mapping

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
        require_broker: bool = True,
    ) -> None:
        """``extra``: further kafka-python producer settings (security, compression, ...); the ones an
        admin client also understands (security, SSL, SASL) are used for the topic check too.
        ``require_broker=False`` (a restarted service worker, whose topic exists): an unreachable broker is
        not an error; the sink starts disconnected and ``reopen`` connects later."""
        self.bootstrap = bootstrap
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self._cond = threading.Condition()
        self._sent = 0
        self._pending = 0
        self._failed = 0
        self._first_error: BaseException | None = None
        self._closed = False
        # Never echo a secret in an error message, whatever kafka-python puts in its exceptions.
        self._secrets = [str(v) for k, v in (extra or {}).items() if k in ("sasl_plain_password", "ssl_password") and v]
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
        self._config = config
        self.connected = True  # False after a reopen that could not reach the broker
        try:
            self._producer = KafkaProducer(**config)
        except (KafkaError, OSError, ValueError) as exc:
            if not require_broker:
                self.connected = False
                return
            raise SinkError(f"cannot reach Kafka at {bootstrap}: {self._describe(exc)}") from exc
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
            raise SinkError(f"cannot reach Kafka at {self.bootstrap}: {self._describe(exc)}") from exc
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
            raise SinkError(f"cannot use topic {self.topic!r} on Kafka at {self.bootstrap}: {self._describe(exc)}") from exc
        finally:
            admin.close()

    def _describe(self, exc: BaseException | None) -> str:
        text = _describe(exc)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _on_success(self, _metadata: Any) -> None:
        with self._cond:
            self._pending -= 1
            self._cond.notify_all()

    def _on_error(self, exc: BaseException) -> None:
        with self._cond:
            self._pending -= 1
            self._failed += 1
            if self._first_error is None:
                self._first_error = exc
            self._cond.notify_all()

    def write(self, result: FrameResult) -> None:
        self.send(result)

    def send(self, result: FrameResult) -> Any:
        """Hand one result to the producer; returns its future (``is_done``, ``succeeded()``, ``exception``),
        which completes when the broker acknowledged it or the producer gave up (``delivery_timeout_ms``)."""
        if self._closed:
            raise SinkError(f"Kafka sink for topic {self.topic!r} at {self.bootstrap} is closed")
        if not self.connected:
            raise SinkError(f"not connected to Kafka at {self.bootstrap} (reconnecting)")
        try:
            future = self._producer.send(
                self.topic, key=result.stream_id.encode("utf-8"), value=result.to_json().encode("utf-8")
            )
        except KafkaError as exc:
            raise SinkError(f"cannot send to topic {self.topic!r} on Kafka at {self.bootstrap}: {self._describe(exc)}") from exc
        with self._cond:
            self._sent += 1
            self._pending += 1
        future.add_callback(self._on_success)
        future.add_errback(self._on_error)
        return future

    def reopen(self) -> None:
        """Drop the producer (what it had not delivered fails) and connect a new one; SinkError while the
        broker cannot be reached. For a publisher that keeps results until acknowledged and sends them again:
        kafka-python's producer was seen here never to reconnect after the broker restarted (an empty metadata
        answer during the broker's shutdown left it with no node to ask)."""
        if self.connected:
            _close_now(self._producer)
            self.connected = False
        with self._cond:
            self._pending = 0
            self._failed = 0
            self._first_error = None
        try:
            producer = KafkaProducer(**self._config)
        except (KafkaError, OSError, ValueError) as exc:
            raise SinkError(f"cannot reach Kafka at {self.bootstrap}: {self._describe(exc)}") from exc
        with self._cond:
            self._producer = producer
            self.connected = True

    def describe_error(self, exc: BaseException | None) -> str:
        """A delivery error as one line, with no secret in it."""
        return self._describe(exc)

    def close(self) -> None:
        """Deliver everything written (or fail) within ``flush_timeout_s``; SinkError names broker and topic."""
        if self._closed:
            return
        self._closed = True
        if not self.connected:
            return  # the last reopen failed: no producer, nothing pending in it
        where = f"Kafka at {self.bootstrap}, topic {self.topic!r}"
        deadline = time.monotonic() + self.flush_timeout_s
        # Our own deadline rather than producer.flush(timeout), which applies the timeout to each batch in
        # turn. Batches go out by themselves after linger_ms; the callbacks count them down.
        with self._cond:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            pending, failed, first = self._pending, self._failed, self._first_error
        if pending:
            _close_now(self._producer)
            raise SinkError(
                f"{where}: {pending} of {self._sent} results not delivered within {self.flush_timeout_s:g} s"
                + (f" ({failed} failed: {self._describe(first)})" if failed else "")
            )
        try:
            self._producer.close(timeout=5)  # nothing pending: returns once the sender thread has stopped
        except KafkaError:
            _close_now(self._producer)
        if failed:
            raise SinkError(f"{where}: {failed} of {self._sent} results failed: {self._describe(first)}") from first

    def abort(self) -> None:
        """Stop at once; records not yet delivered are dropped."""
        if self._closed:
            return
        self._closed = True
        if self.connected:
            _close_now(self._producer)


def kafka_security_kwargs(section: Any, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """kafka-python producer/admin settings for a ``KafkaSection``'s security keys (for ``KafkaSink(extra=)``).

    The SASL password is read from ``environ[section.sasl_password_env]`` (default ``os.environ``); an unset
    or empty variable, or a TLS file that is not there, is a one-line SinkError naming the key and the
    variable or file, never the password. PLAINTEXT gives ``{}`` (kafka-python's defaults).
    """
    env = os.environ if environ is None else environ
    protocol = section.security_protocol
    if protocol == "PLAINTEXT":
        return {}
    where = f" for Kafka at {section.bootstrap}" if getattr(section, "bootstrap", None) else ""
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol.startswith("SASL_"):
        variable = section.sasl_password_env
        password = env.get(variable) if variable else None
        if not password:
            state = "is empty" if password == "" else "is not set"
            raise SinkError(
                f"Kafka.sasl_password_env: environment variable {variable} {state} "
                f"(it holds the SASL password of user {section.sasl_username!r}{where})"
            )
        kwargs.update(
            sasl_mechanism=section.sasl_mechanism,
            sasl_plain_username=section.sasl_username,
            sasl_plain_password=password,
        )
    if protocol.endswith("SSL"):
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(section, key)
            if path is None:
                continue
            if not os.path.isfile(path):
                raise SinkError(f"Kafka.{key}: file {path} not found{where}")
            kwargs[key] = path
    return kwargs


def _close_now(producer: KafkaProducer) -> None:
    """Close without waiting for undelivered records.

    kafka-python 3.0.12's ``close(timeout=0)`` first calls ``flush(0)``, which raises KafkaTimeoutError
    while records are pending and leaves the sender thread running; force the sender closed (it fails the
    pending batches) and close again.
    """
    try:
        producer.close(timeout=0)
        return
    except KafkaError:
        pass
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(5)
    try:
        producer.close(timeout=0)
    except KafkaError:
        pass


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).strip()
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name
