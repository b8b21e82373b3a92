"""The overlay page's result feed: the results of some streams as they land in Redis (docs/redis-keys.md).

The Redis sink publishes a small notice per result on ``P:frames:S``; the full result is read back from the
history by its capture time (``ZRANGE ... BYSCORE``), so the page gets exactly what every other consumer
of Redis sees, and nothing here waits for pixels. One Redis connection and one pub/sub subscription per viewer,
however many streams it follows: the channels of exactly those streams (``SUBSCRIBE`` with several channels,
not ``PSUBSCRIBE``: a stream id is a name, not a pattern, and other streams' notices never cross the wire).
Notices that arrived together are answered with one pipelined round trip, so one viewer of many busy streams
keeps up; one that still cannot is cut off by Redis's own pub/sub output limit (a ``RedisError`` here).
"""
from __future__ import annotations

import json
import threading
import time
from typing import Iterator, Sequence

import redis

MAX_NOTICES_AT_ONCE = 256  # notices answered with one pipeline; beyond it the rest wait for the next round


class ResultFollower:
    def __init__(self, url: str, key_prefix: str, *, password: str | None = None,
                 ssl_ca_certs: str | None = None) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.password = password
        self.ssl_ca_certs = ssl_ca_certs

    def _key(self, kind: str, stream_id: str) -> str:
        return f"{self.key_prefix}:{kind}:{stream_id}"

    def follow(self, stream_ids: Sequence[str], stop: threading.Event, *,
               tick_s: float = 1.0) -> Iterator[tuple[str, str] | None]:
        """Yields ``(stream_id, result JSON text)`` per new result of any of ``stream_ids`` (first the newest one
        of each, if any, in the given order), and None every ``tick_s`` with nothing new, so the caller can send
        its own events and notice a closed connection. Ends when ``stop`` is set. Raises ``redis.RedisError``
        when Redis cannot be reached."""
        kwargs: dict = {"password": self.password} if self.password else {}
        if self.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = self.ssl_ca_certs
        client = redis.Redis.from_url(self.url, socket_connect_timeout=3.0, socket_timeout=5.0, **kwargs)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        of_channel = {self._key("frames", stream_id).encode("utf-8"): stream_id for stream_id in stream_ids}
        try:
            if not of_channel:
                return
            pubsub.subscribe(*of_channel)
            latest = client.mget([self._key("latest", stream_id) for stream_id in stream_ids])
            for stream_id, text in zip(stream_ids, latest):
                if text is not None:
                    yield stream_id, text.decode("utf-8")
            next_tick = time.monotonic() + tick_s
            while not stop.is_set():
                notices = self._notices(pubsub, of_channel, timeout=max(0.0, min(0.5, next_tick - time.monotonic())))
                yield from self._results_of(client, notices)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + tick_s
                    yield None
        finally:
            pubsub.close()
            client.close()

    @staticmethod
    def _notices(pubsub: redis.client.PubSub, of_channel: dict[bytes, str], timeout: float) -> list[tuple[str, bytes]]:
        """The notices waiting (after up to ``timeout`` s for the first): ``(stream_id, notice)``, in order."""
        notices: list[tuple[str, bytes]] = []
        message = pubsub.get_message(timeout=timeout)
        while message is not None and len(notices) < MAX_NOTICES_AT_ONCE:
            if message.get("type") == "message" and message.get("channel") in of_channel:
                notices.append((of_channel[message["channel"]], message["data"]))
            message = pubsub.get_message(timeout=0.0)
        return notices

    def _results_of(self, client: redis.Redis, notices: list[tuple[str, bytes]]) -> Iterator[tuple[str, str]]:
        wanted: list[tuple[str, int]] = []
        pipe = client.pipeline(transaction=False)
        for stream_id, notice_raw in notices:
            try:
                notice = json.loads(notice_raw)
                capture_time = float(notice["capture_time"])
                frame_index = int(notice["frame_index"])
            except (ValueError, KeyError, TypeError):
                continue
            pipe.zrange(self._key("history", stream_id), capture_time, capture_time, byscore=True)
            wanted.append((stream_id, frame_index))
        if not wanted:
            return
        for (stream_id, frame_index), members in zip(wanted, pipe.execute()):
            text = _with_frame_index(members, frame_index)
            if text is not None:  # None: trimmed or expired already; the page waits for the next one
                yield stream_id, text


def _with_frame_index(members: list[bytes], frame_index: int) -> str | None:
    """The history entry of frame ``frame_index`` among those with its capture time."""
    for member in members:
        text = member.decode("utf-8")
        try:
            if json.loads(text).get("frame_index") == frame_index:
                return text
        except ValueError:
            continue
    return None
