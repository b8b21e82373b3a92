"""`GET /streams/{id}/events`: one overlay viewer's server-sent events, for the framework's streaming response.

The result feed (``ResultFollower.follow``) and the service calls block, so each viewer gets its own thread that
follows Redis and asks the service for the stream's state; the thread hands finished event texts to the event
loop through a small queue (a viewer that stops reading holds its thread there, not the loop). The thread ends
when the viewer goes (the response's generator is closed), when the stream is removed, or when the server stops.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from typing import TYPE_CHECKING, AsyncIterator

import redis

from workers.service_errors import NotFound

if TYPE_CHECKING:
    from workers.http_api import ApiServer

log = logging.getLogger(__name__)

RETRY = b"retry: 2000\n\n"  # the browser's reconnect delay after the stream ends
_QUEUE_EVENTS = 32


def event(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode("utf-8")


async def event_stream(api: "ApiServer", stream_id: str) -> AsyncIterator[bytes]:
    """``result`` per result (from Redis), ``state`` every second (the stream's state and latency), ``error``
    once if Redis fails; ends after a ``state`` of ``removed``."""
    assert api.results is not None
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_QUEUE_EVENTS)
    stop = api.viewer_started()
    thread = threading.Thread(target=_follow, args=(api, stream_id, stop, loop, queue),
                              name=f"http-events-{stream_id}", daemon=True)
    thread.start()
    try:
        yield RETRY
        while (item := await queue.get()) is not None:
            yield item
    finally:
        api.viewer_ended(stop)  # the viewer went, the stream ended or the server stops: the thread follows


def _follow(api: "ApiServer", stream_id: str, stop: threading.Event, loop: asyncio.AbstractEventLoop,
            queue: asyncio.Queue[bytes | None]) -> None:
    def put(item: bytes | None) -> bool:
        """Waits for room in the queue; False once the viewer is gone."""
        try:
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        except RuntimeError:  # the server's loop is closed
            return False
        while True:
            try:
                future.result(timeout=0.5)
                return True
            except concurrent.futures.TimeoutError:
                if stop.is_set():
                    future.cancel()
                    return False

    assert api.results is not None
    try:
        for text in api.results.follow(stream_id, stop):
            if text is not None:
                if not put(event("result", text)):
                    return
                continue
            try:
                view = api.service.get_stream(stream_id)
            except NotFound:
                put(event("state", json.dumps({"state": "removed", "reason": "the stream was removed", "latency_ms": {}})))
                return
            state = json.dumps({"state": view["state"], "reason": view["reason"], "latency_ms": view["last_latency_ms"]},
                               allow_nan=False)
            if not put(event("state", state)):
                return
    except redis.RedisError as exc:
        put(event("error", json.dumps({"error": f"Redis: {exc}"})))
    except Exception:  # noqa: BLE001 - a bug ends this viewer's stream, logged; the server stays up
        log.exception("event stream of %r failed", stream_id)
    finally:
        put(None)
