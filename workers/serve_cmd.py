"""`vidrec serve`: the live service, from the command line's arguments to a running ``Supervisor``.

    vidrec serve [--config F] [-o K=V ...] [--stream ID=URL ...] [--kafka HOST:PORT --topic T] [--redis URL]
                 [--http HOST:PORT] [--cluster NAME]

Streams come from the config's ``streams`` list and from ``--stream`` (more can be added through the HTTP
API); sinks and the HTTP address from the config or the flags (the same sink flags as `vidrec video`). The API
token is read here, once, from the environment variable ``Service.api_token_env`` names.

With ``--cluster NAME`` (and ``--kafka``) the node shares the streams with every node of that name
(docs/cluster.md): the streams given here are written to the cluster's streams topic, and the node runs the ones
the consumer group gives it.
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from config import ConfigError, VidrecConfig, load_config
from config.schema import StreamSpec
from workers.node_id import node_id

if TYPE_CHECKING:  # the workers (PyAV, models, clients) load only when the command runs
    from workers.plans import StreamPlan

log = logging.getLogger("vidrec")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stream", dest="streams", action="append", default=[], metavar="ID=URL",
                        help="a camera (rtsp://...) or file to process, e.g. --stream door=rtsp://10.0.0.5/1 (repeatable)")
    parser.add_argument("--kafka", metavar="HOST:PORT", help="publish results to this Kafka bootstrap server")
    parser.add_argument("--topic", help="Kafka topic (default: Kafka.topic)")
    parser.add_argument("--redis", metavar="URL", help="cache results in Redis, e.g. redis://127.0.0.1:6379/0")
    parser.add_argument("--http", metavar="HOST:PORT",
                        help="serve the HTTP API here (/streams, /gallery, /metrics, /overlay, /healthz); default: Service.http_port")
    parser.add_argument("--cluster", metavar="NAME",
                        help="share the streams with every node started with this NAME, through Kafka (needs --kafka; docs/cluster.md)")


@dataclass(frozen=True)
class ServePlan:
    cfg: VidrecConfig
    streams: list["StreamPlan"]
    http: tuple[str, int] | None
    api_token: str | None
    # Per model (detector, recognizer): the precision it runs in, its file and why (GET /healthz).
    models: dict[str, dict[str, str]] | None = None
    # The validated specs of ``streams`` (in cluster mode they are written to the streams topic, not run here).
    specs: list[StreamSpec] | None = None


def parse_http(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) → (host, port)."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--http {value}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def parse_stream(value: str) -> StreamSpec:
    from workers.plans import spec_error

    stream_id, sep, url = value.partition("=")
    if not sep or not stream_id or not url:
        raise ConfigError(f"--stream {value}: expected ID=URL, e.g. --stream door=rtsp://10.0.0.5/stream1")
    try:
        return StreamSpec(id=stream_id, url=url)
    except ValidationError as exc:
        raise ConfigError(f"--stream {value}: {spec_error(exc)}") from None


def plan_service(args: argparse.Namespace) -> ServePlan:
    from workers.plans import plan_from_spec

    cfg = load_config(args.config, args.overrides)
    if args.topic and not (args.kafka or cfg.Kafka.bootstrap):
        raise ConfigError("--topic given without --kafka (or Kafka.bootstrap)")
    if args.kafka:
        cfg.Kafka.bootstrap = args.kafka
    if args.topic:
        try:
            cfg.Kafka.topic = args.topic
        except ValidationError as exc:
            raise ConfigError(f"--topic {args.topic}: {exc.errors()[0]['msg']}") from None
    if args.redis:
        cfg.Redis.url = args.redis
    if getattr(args, "cluster", None):
        try:
            cfg.Cluster.name = args.cluster
        except ValidationError as exc:
            raise ConfigError(f"--cluster {args.cluster}: {exc.errors()[0]['msg']}") from None
    if cfg.Cluster.name and not cfg.Kafka.bootstrap:
        raise ConfigError(f"cluster {cfg.Cluster.name!r} needs Kafka: give --kafka HOST:PORT (or Kafka.bootstrap)")
    specs = list(cfg.streams) + [parse_stream(value) for value in args.streams]
    plans: list["StreamPlan"] = []
    seen: set[str] = set()
    for spec in specs:
        if spec.id in seen:
            raise ConfigError(f"stream id {spec.id!r} is given twice (config streams and --stream)")
        seen.add(spec.id)
        try:
            plans.append(plan_from_spec(spec))
        except ValueError as exc:
            message = str(exc)
            if not message.startswith(f"stream {spec.id!r}"):  # a bad URL: say which stream has it
                message = f"stream {spec.id!r}: {message}"
            raise ConfigError(message) from None
    if len(plans) > cfg.Service.max_streams:
        raise ConfigError(f"{len(plans)} streams given but Service.max_streams is {cfg.Service.max_streams}")
    http = parse_http(args.http) if args.http else (
        (cfg.Service.http_host, cfg.Service.http_port) if cfg.Service.http_port is not None else None)
    token = os.environ.get(cfg.Service.api_token_env) or None
    if cfg.Service.http_read_auth and token is None:
        raise ConfigError(f"Service.http_read_auth is on but ${cfg.Service.api_token_env} holds no token: "
                          "set it, or turn http_read_auth off")
    if not plans and http is None and not cfg.Cluster.name:
        raise ConfigError("nothing to serve: give --stream ID=URL, a config with streams, or --http to add them later")
    if not (cfg.Kafka.bootstrap or cfg.Redis.url):
        log.warning("no sink configured (--kafka / --redis): results are computed and counted, not published")
    # Resolved once, here: the inference process (results' ``node``), the metrics and the cluster all read it.
    cfg.Cluster.node = node_id(cfg.Cluster.node, http[1] if http else None)
    return ServePlan(cfg=cfg, streams=plans, http=http, api_token=token, models=model_precisions(cfg), specs=specs)


def model_precisions(cfg: VidrecConfig) -> dict[str, dict[str, str]] | None:
    """Which file and precision each model will run (workers/precision.py), logged once at start. The inference
    process decides again from the same files when it loads them, so both agree unless the cache changes
    in between (a `vidrec models quantize` run at that very moment)."""
    from models.errors import ModelError
    from workers.system import model_choices

    try:
        choices = model_choices(cfg)
    except ModelError:
        return None  # a missing or wrong model: the inference process reports it when it starts, as before
    for choice in choices:
        log.info("%s runs in %s: %s (%s)", choice.role, choice.precision, choice.path, choice.reason)
    return {choice.role: choice.view() for choice in choices}


def run_serve(args: argparse.Namespace, *, log_level: int = logging.INFO) -> int:
    plan = plan_service(args)  # usage errors first, before the workers, models and clients are imported
    from workers.supervisor import Supervisor

    supervisor = Supervisor(plan.cfg, plan.streams, http=plan.http, api_token=plan.api_token, log_level=log_level,
                            models=plan.models, specs=plan.specs)
    return supervisor.run()
