"""Where results go: the configured sinks, opened in one place for ``vidrec video`` and the service.

``open_sinks`` opens every sink the config and the command line name (JSONL, Kafka, Redis) up front, so an
unreachable broker fails before any work is done. ``open_service_sinks`` is the service's: the same sinks,
each behind a thread so that inference never waits for one: Kafka, the record of every result, through the
at-least-once spool (``SpooledSink``: memory, then disk; a restarted worker adopts what its dead predecessors
spooled), the others (Redis: the latest state) through the bounded queue that drops the oldest (``AsyncSink``).

Track events (with ``Tracker.enabled``) have sinks of their own, the same classes on other keys
(``open_track_sinks``): the ``--tracks-out`` JSONL file of ``vidrec video``, Kafka's tracks topic and Redis's
current tracks per stream. The service's (``open_event_sinks``) write from threads too: Kafka through a spool of
its own, memory then disk like the results' (a broker outage loses no event within ``Kafka.spool_max_bytes``),
named ``kafka.tracks``, Redis as ``redis.tracks``; both counted like the results' sinks, drops included.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from config import ConfigError, VidrecConfig
from stream.messages import FrameResult
from stream.sinks import ResultSink
from stream.sinks.async_sink import AsyncSink
from stream.sinks.jsonl import JsonlSink
from stream.sinks.kafka import KafkaSink, kafka_security_kwargs
from stream.sinks.redis import RedisSink, RedisTrackSink, redis_auth_kwargs
from stream.sinks.spool import Spool, leftover_spool_dirs, spool_dir, spool_dirs_of_run
from stream.sinks.spooled import SpooledSink
from stream.sinks.threaded import ThreadedSink
from stream.track_events import TrackEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SinkTargets:
    """The command line's sinks: a JSONL file, and a Kafka broker/topic or Redis URL instead of the config's."""

    json_path: Path | None = None
    kafka_bootstrap: str | None = None
    kafka_topic: str | None = None
    redis_url: str | None = None
    tracks_path: Path | None = None  # `vidrec video --tracks-out`: the run's track events as JSONL


def open_sinks(cfg: VidrecConfig, targets: SinkTargets = SinkTargets(), *,
               servers_may_be_down: bool = False) -> list[ResultSink]:
    """Open every configured sink up front, so an unreachable broker fails before any work is done
    (``servers_may_be_down``: a restarted service worker, which must start whatever the broker's state).

    Kafka TLS/SASL and the Redis password come from the ``Kafka`` / ``Redis`` sections (passwords from the
    environment variables they name), also for a broker or URL given on the command line.
    """
    sinks: list[ResultSink] = []
    try:
        if targets.json_path is not None:
            sinks.append(JsonlSink(targets.json_path))
        bootstrap = targets.kafka_bootstrap or cfg.Kafka.bootstrap
        if bootstrap:
            security = kafka_security_kwargs(cfg.Kafka.model_copy(update={"bootstrap": bootstrap}))
            sinks.append(KafkaSink(bootstrap, targets.kafka_topic or cfg.Kafka.topic, connect_timeout_s=cfg.Kafka.connect_timeout_s,
                                   extra=security, require_broker=not servers_may_be_down))
        redis_url = targets.redis_url or cfg.Redis.url
        if redis_url:
            auth = redis_auth_kwargs(cfg.Redis.model_copy(update={"url": redis_url}))
            sinks.append(RedisSink(redis_url, history_len=cfg.Redis.history_len, ttl_s=cfg.Redis.ttl_s, key_prefix=cfg.Redis.key_prefix,
                                   require_server=not servers_may_be_down, **auth))
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    return sinks


def result_run_id(run_id: str, incarnation: int) -> str:
    """The ``run_id`` the results (and the Kafka spool folder) of one inference worker carry: the run's id, and
    ``<run>.<n>`` for its n-th restart, so that a consumer's (run_id, stream_id, seq) never repeats."""
    return run_id if incarnation == 0 else f"{run_id}.{incarnation}"


def spool_base(kafka: Any) -> Path:
    """The folder under which Kafka spool folders go: ``Kafka.spool_dir``, or the system's temp dir."""
    return Path(kafka.spool_dir) if kafka.spool_dir else Path(tempfile.gettempdir())


def open_service_sinks(cfg: VidrecConfig, *, run_id: str, incarnation: int, queue_size: int, close_timeout_s: float,
                       on_first_written: Callable[[FrameResult], None] | None = None) -> list[ThreadedSink]:
    """The service's sinks, each writing from a thread of its own. ``on_first_written`` is called for every
    result the first sink (Kafka when configured) accepted; for Kafka, when the broker acknowledged it."""
    # A restarted worker must come up even while a broker is down (its spool waits for it).
    sinks = open_sinks(cfg, servers_may_be_down=incarnation > 0)

    def wrap(i: int, sink: Any) -> ThreadedSink:
        on_written = on_first_written if i == 0 else None
        if isinstance(sink, KafkaSink):
            sink.flush_timeout_s = close_timeout_s
            return _spooled(sink, cfg, run_id=run_id, incarnation=incarnation, on_written=on_written)
        return AsyncSink(sink, name=_sink_name(sink), max_queue=queue_size, on_written=on_written)

    return _threaded(sinks, wrap)


def _threaded(sinks: list[Any], wrap: Callable[[int, Any], ThreadedSink]) -> list[ThreadedSink]:
    """``wrap(i, sink)`` for every sink; when one fails, every sink, wrapped or not, is aborted."""
    wrapped: list[ThreadedSink] = []
    try:
        for i, sink in enumerate(sinks):
            wrapped.append(wrap(i, sink))
    except BaseException:
        for sink in wrapped:
            sink.abort()
        for sink in sinks[len(wrapped):]:
            sink.abort()
        raise
    return wrapped


def _spooled(sink: KafkaSink, cfg: VidrecConfig, *, run_id: str, incarnation: int, name: str = "kafka",
             decode: Callable[[str], Any] = FrameResult.from_json,
             on_written: Callable[[FrameResult], None] | None = None) -> SpooledSink:
    """Kafka publishes at least once through a memory+disk spool (disk when ``Kafka.spool_max_bytes`` > 0), one
    per Kafka sink (``name``: the results' ``kafka``, the track events' ``kafka.tracks``)."""
    k = cfg.Kafka
    directory, adopt = None, []
    if k.spool_max_bytes > 0:
        directory = spool_dir(spool_base(k), result_run_id(run_id, incarnation), name)
        # What a killed earlier run left in this node's own spool_dir goes first (only there: the shared temp
        # dir may hold other services' spools, for other topics), then what this run's dead workers left.
        earlier = leftover_spool_dirs(k.spool_dir, name, exclude_run=run_id) if k.spool_dir else []
        adopt = earlier + [d for d in spool_dirs_of_run(spool_base(k), run_id, name) if d != directory]
    segment = max(64 * 1024, min(4 * 1024 * 1024, k.spool_max_bytes // 4))
    spool = Spool(k.spool_memory_results, directory, disk_max_bytes=k.spool_max_bytes, segment_bytes=segment,
                  adopt=adopt, decode=decode)
    if spool.adopted:
        log.warning("%s spool: %d message(s) a killed earlier run or inference worker left on disk go out first",
                    name, spool.adopted)
    return SpooledSink(sink, name=name, spool=spool, batch_max=min(500, k.spool_memory_results // 2),
                       on_written=on_written)


def _sink_name(sink: Any) -> str:
    name = type(sink).__name__.removesuffix("Sink").lower()
    return name or type(sink).__name__


def open_track_sinks(cfg: VidrecConfig, targets: SinkTargets = SinkTargets(), *,
                     servers_may_be_down: bool = False) -> list[Any]:
    """The track event sinks (none without ``Tracker.enabled``), opened up front like ``open_sinks``: the
    ``tracks_path`` JSONL file, Kafka's tracks topic (``Kafka.tracks_topic``, default ``<topic>.tracks``, the topic
    being the command line's when it names one) and Redis's current tracks per stream (``P:tracks:S``)."""
    if not cfg.Tracker.enabled:
        if targets.tracks_path is not None:
            raise ConfigError(f"--tracks-out {targets.tracks_path}: no track events with Tracker.enabled=false")
        return []
    sinks: list[Any] = []
    try:
        if targets.tracks_path is not None:
            sinks.append(JsonlSink(targets.tracks_path))
        bootstrap = targets.kafka_bootstrap or cfg.Kafka.bootstrap
        if bootstrap:
            k = cfg.Kafka.model_copy(update={"bootstrap": bootstrap, "topic": targets.kafka_topic or cfg.Kafka.topic})
            sinks.append(KafkaSink(bootstrap, k.tracks_topic_name, connect_timeout_s=k.connect_timeout_s,
                                   extra=kafka_security_kwargs(k), require_broker=not servers_may_be_down))
        redis_url = targets.redis_url or cfg.Redis.url
        if redis_url:
            r = cfg.Redis.model_copy(update={"url": redis_url})
            sinks.append(RedisTrackSink(redis_url, history_len=r.history_len, ttl_s=r.ttl_s, key_prefix=r.key_prefix,
                                        require_server=not servers_may_be_down, **redis_auth_kwargs(r)))
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    return sinks


def open_event_sinks(cfg: VidrecConfig, *, run_id: str, incarnation: int, queue_size: int,
                     close_timeout_s: float) -> list[ThreadedSink]:
    """The service's track event sinks, each writing from a thread of its own: Kafka at least once through a spool
    of its own (as the results', with the same bounds), named ``kafka.tracks``; Redis through the bounded queue,
    ``redis.tracks``."""
    sinks = open_track_sinks(cfg, servers_may_be_down=incarnation > 0)

    def wrap(_: int, sink: Any) -> ThreadedSink:
        if isinstance(sink, KafkaSink):
            sink.flush_timeout_s = close_timeout_s
            return _spooled(sink, cfg, run_id=run_id, incarnation=incarnation, name="kafka.tracks",
                            decode=TrackEvent.from_json)
        return AsyncSink(sink, name="redis.tracks", max_queue=queue_size)

    return _threaded(sinks, wrap)


def event_sink_names(cfg: VidrecConfig) -> list[str]:
    """The names ``open_event_sinks`` gives its sinks (for counters shown before the first report)."""
    if not cfg.Tracker.enabled:
        return []
    return [name for name, on in (("kafka.tracks", cfg.Kafka.bootstrap), ("redis.tracks", cfg.Redis.url)) if on]
