"""The overlay page's result feed: one stream's results as they land in Redis (docs/redis-keys.md).

The Redis sink publishes a small notice per result on ``P:frames:S``; the full result is read back from the
history by its capture time (``ZRANGE ... BYSCORE``), so the page gets exactly what every other consumer
of Redis sees, and nothing here waits for pixels. One connection per viewer; a viewer that cannot keep up
skips to the newest notices (the pub/sub buffer is the server's; the page only ever draws recent frames).
"""
from __future__ import annotations

import json
import threading
import time
from typing import Iterator

import redis


class ResultFollower:
    def __init__(self, url: str, key_prefix: str, *, password: str | None = None,
                 ssl_ca_certs: str | None = None) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.password = password
        self.ssl_ca_certs = ssl_ca_certs

    def _key(self, kind: str, stream_id: str) -> str:
        return f"{self.key_prefix}:{kind}:{stream_id}"

    def follow(self, stream_id: str, stop: threading.Event, *, tick_s: float = 1.0) -> Iterator[str | None]:
        """Yields each new result's JSON text (the newest one first, if any), and None every ``tick_s`` with
        nothing new, so the caller can send its own events and notice a closed connection. Ends when
        ``stop`` is set. Raises ``redis.RedisError`` when Redis cannot be reached."""
        kwargs: dict = {"password": self.password} if self.password else {}
        if self.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = self.ssl_ca_certs
        client = redis.Redis.from_url(self.url, socket_connect_timeout=3.0, socket_timeout=5.0, **kwargs)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._key("frames", stream_id))
            latest = client.get(self._key("latest", stream_id))
            if latest is not None:
                yield latest.decode("utf-8")
            next_tick = time.monotonic() + tick_s
            while not stop.is_set():
                message = pubsub.get_message(timeout=max(0.0, min(0.5, next_tick - time.monotonic())))
                if message is not None and message.get("type") == "message":
                    result = self._result_of(client, stream_id, message["data"])
                    if result is not None:
                        yield result
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + tick_s
                    yield None
        finally:
            pubsub.close()
            client.close()

    def _result_of(self, client: redis.Redis, stream_id: str, notice_raw: bytes) -> str | None:
        try:
            notice = json.loads(notice_raw)
            capture_time = float(notice["capture_time"])
            frame_index = int(notice["frame_index"])
        except (ValueError, KeyError, TypeError):
            return None
        for member in client.zrange(self._key("history", stream_id), capture_time, capture_time, byscore=True):
            text = member.decode("utf-8")
            try:
                if json.loads(text).get("frame_index") == frame_index:
                    return text
            except ValueError:
                continue
        return None  # trimmed or expired already: the page waits for the next one
