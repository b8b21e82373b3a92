"""Redis sink: the newest result per stream, a time-indexed history, and a live notice per frame.

Key layout (``P`` = ``key_prefix``, default ``vidrec``; ``S`` = the result's ``stream_id``; every value is
the exact ``FrameResult.to_json()`` text that the other sinks write):

``P:streams``          SET of every stream id written.
``P:latest:S``         STRING: the last result written for stream S.
``P:history:S``        ZSET: member = result JSON, score = ``capture_time`` (Unix seconds), trimmed to the
                       newest ``history_len`` by score. Read a time window with
                       ``ZRANGE P:history:S <t0> <t1> BYSCORE``, the newest n with ``ZRANGE ... -n -1``.
channel ``P:frames:S`` PUBLISH of ``{"stream_id", "frame_index", "capture_time"}`` (JSON) per result; fetch
                       the full result from ``P:latest:S`` (or the history) if needed.

A sorted set rather than a Redis Stream: it is indexed by the frame's own capture time (a Stream's ids
must grow strictly, which capture times from several workers or a restarted source do not promise, and
server-assigned ids carry the arrival time instead), and trimming to an exact count is one command.
Identical results collapse into one member, which is harmless.

``P:tracks:S``         HASH of stream S's current tracks (``RedisTrackSink``, with tracking on): field = track id,
                       value = that track's newest ``TrackEvent.to_json()``; the field is deleted when the
                       track ends. ``HGETALL P:tracks:S`` is what is in view now.

With ``ttl_s`` set, every write (re)sets that expiry on the latest key, the history and the streams set, so
a stream's keys disappear ``ttl_s`` after its last frame (``P:streams`` lives as long as any stream writes,
so it may list a stream whose keys have expired); ``ttl_s=None`` keeps them. Each result is one pipeline
round trip (no MULTI: a reader may briefly see the latest key ahead of the history).

Authentication: ``password`` (the config's ``Redis.password_env`` names the environment variable that holds
it, read by ``redis_auth_kwargs``), a user name in the URL (``redis://user@host``) for an ACL user, and TLS
with ``rediss://`` (``ssl_ca_certs``: the CA bundle to verify the server). Messages name the address without
credentials and never the password.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from stream.errors import SinkError
from stream.messages import FrameResult
from stream.track_events import TrackEvent


class RedisSink:
    def __init__(
        self,
        url: str,
        *,
        history_len: int = 1000,
        ttl_s: int | None = 3600,
        key_prefix: str = "vidrec",
        connect_timeout_s: float = 2.0,
        password: str | None = None,
        ssl_ca_certs: str | None = None,
        require_server: bool = True,
    ) -> None:
        """``password``: AUTH password (the URL may carry a user name, not also a password);
        ``ssl_ca_certs``: CA bundle for a ``rediss://`` URL. ``require_server=False`` (a restarted service
        worker): no check that the server answers now; writes fail (and are counted) until it does."""
        if history_len < 1:
            raise ValueError(f"RedisSink history_len must be >= 1, got {history_len}")
        if ttl_s is not None and ttl_s < 1:
            raise ValueError(f"RedisSink ttl_s must be >= 1 or None, got {ttl_s}")
        self.address = redis_address(url)
        self.history_len = history_len
        self.ttl_s = ttl_s
        self.key_prefix = key_prefix
        self._closed = False
        tls_options: dict[str, Any] = {}
        try:
            parts = urlsplit(url)
            url_password = parts.password
            scheme = parts.scheme
        except ValueError as exc:
            raise SinkError(f"bad Redis URL for {self.address}: {exc}") from None
        if password is not None and url_password is not None:
            raise SinkError(f"Redis at {self.address}: the URL has a password and one was also given (Redis.password_env); use one")
        if ssl_ca_certs is not None:
            if scheme != "rediss":
                raise SinkError(f"Redis at {self.address}: ssl_ca_certs needs a rediss:// URL (TLS)")
            if not os.path.isfile(ssl_ca_certs):
                raise SinkError(f"Redis.ssl_ca_certs: file {ssl_ca_certs} not found (for Redis at {self.address})")
            tls_options["ssl_ca_certs"] = ssl_ca_certs
        self._secrets = [s for s in (password, url_password, unquote(url_password or "")) if s]
        try:
            # No retries while connecting, so an unreachable server fails within connect_timeout_s.
            self._client = redis.Redis.from_url(
                url,
                socket_connect_timeout=connect_timeout_s,
                socket_timeout=max(connect_timeout_s, 5.0),
                retry=Retry(NoBackoff(), 0),
                **({"password": password} if password is not None else {}),
                **tls_options,
            )
            if require_server:
                self._client.ping()
        except (redis.RedisError, OSError, ValueError) as exc:
            raise SinkError(f"cannot reach Redis at {self.address}: {_describe(exc, self._secrets)}") from exc
        # Once connected, ride out a brief blip (all writes but PUBLISH are idempotent).
        self._client.set_retry(Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))

    def key(self, kind: str, stream_id: str | None = None) -> str:
        """``key('streams')``, ``key('latest', S)``, ``key('history', S)``, ``key('frames', S)`` (channel)."""
        return f"{self.key_prefix}:{kind}" if stream_id is None else f"{self.key_prefix}:{kind}:{stream_id}"

    def write(self, result: FrameResult) -> None:
        if self._closed:
            raise SinkError(f"Redis sink for {self.address} is closed")
        sid = result.stream_id
        payload = result.to_json()
        notice = json.dumps(
            {"stream_id": sid, "frame_index": result.frame_index, "capture_time": result.capture_time},
            separators=(",", ":"),
        )
        latest, history, streams = self.key("latest", sid), self.key("history", sid), self.key("streams")
        pipe = self._client.pipeline(transaction=False)
        pipe.set(latest, payload, ex=self.ttl_s)
        pipe.zadd(history, {payload: result.capture_time})
        pipe.zremrangebyrank(history, 0, -(self.history_len + 1))
        pipe.sadd(streams, sid)
        if self.ttl_s is not None:
            pipe.expire(history, self.ttl_s)
            pipe.expire(streams, self.ttl_s)
        pipe.publish(self.key("frames", sid), notice)
        try:
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise SinkError(f"cannot write to Redis at {self.address}: {_describe(exc, self._secrets)}") from exc

    def close(self) -> None:
        """Every write is already on the server; release the connections."""
        if self._closed:
            return
        self._closed = True
        self._client.close()

    def abort(self) -> None:
        """Same as close: what was written is valid per-frame state, nothing in Redis claims completeness."""
        self.close()


class RedisTrackSink(RedisSink):
    """Each stream's current tracks (``P:tracks:S``, see above): ``write`` takes a ``TrackEvent``; same
    connection options, TTL and key prefix as the results' sink."""

    def write(self, event: TrackEvent) -> None:  # type: ignore[override]
        if self._closed:
            raise SinkError(f"Redis sink for {self.address} is closed")
        key = self.key("tracks", event.stream_id)
        pipe = self._client.pipeline(transaction=False)
        if event.event == "ended":
            pipe.hdel(key, str(event.track_id))
        else:
            pipe.hset(key, str(event.track_id), event.to_json())
            if self.ttl_s is not None:
                pipe.expire(key, self.ttl_s)
        try:
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise SinkError(f"cannot write to Redis at {self.address}: {_describe(exc, self._secrets)}") from exc


def redis_address(url: str) -> str:
    """``url`` without credentials, for messages (``redis://host:port/db`` or ``unix:///path``)."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return f"unix://{parts.path}"
        db = parts.path.lstrip("/") or "0"
        return f"{parts.scheme}://{parts.hostname or 'localhost'}:{parts.port or 6379}/{db}"
    except ValueError:
        return url.rpartition("@")[2]


def redis_auth_kwargs(section: Any, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``RedisSink`` keyword arguments for a ``RedisSection``'s ``password_env`` and ``ssl_ca_certs``.

    The password is read from ``environ[section.password_env]`` (default ``os.environ``); an unset or empty
    variable is a one-line SinkError naming it (and the address), never a password.
    """
    env = os.environ if environ is None else environ
    kwargs: dict[str, Any] = {}
    variable = section.password_env
    if variable is not None:
        password = env.get(variable)
        if not password:
            state = "is empty" if password == "" else "is not set"
            where = f" for Redis at {redis_address(section.url)}" if section.url else ""
            raise SinkError(f"Redis.password_env: environment variable {variable} {state} (it holds the Redis password{where})")
        kwargs["password"] = password
    if section.ssl_ca_certs is not None:
        kwargs["ssl_ca_certs"] = section.ssl_ca_certs
    return kwargs


def _describe(exc: BaseException, secrets: list[str] | tuple[str, ...] = ()) -> str:
    text = str(exc).strip()
    for secret in secrets:
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
