"""`GET /stream-events?stream=A&stream=B...` (and its one-stream alias `GET /streams/{id}/events`): one overlay
viewer's server-sent events for some streams, for the framework's streaming response.

One feed for many streams because a browser keeps at most 6 HTTP/1.1 connections to one service and an event
stream holds one for good: a page showing every camera opens one feed, not one per camera. Every event names
its stream (``stream_id``), so the one-stream route is exactly this feed with one stream.

The result feed (``ResultFollower.follow``) and the service calls block, so each viewer gets its own thread that
follows Redis (one connection, one subscription for all its streams) and asks the service for the streams'
states; the thread hands finished event texts to the event loop through a small queue (a viewer that stops
reading holds its thread there, not the loop). The thread ends when the viewer goes (the response's generator is
closed), when every one of its streams is removed, or when the server stops.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from typing import TYPE_CHECKING, AsyncIterator, Sequence

import redis

if TYPE_CHECKING:
    from workers.http_api import ApiServer

log = logging.getLogger(__name__)

MAX_STREAMS = 64  # streams one feed follows (a 64-camera grid; the page opens one more feed per 64 more)
RETRY = b"retry: 2000\n\n"  # the browser's reconnect delay after the stream ends
_QUEUE_EVENTS = 32


def event(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode("utf-8")


def stream_ids_of(values: Sequence[str]) -> list[str]:
    """The feed's streams from its ``stream`` parameters: in the given order, each once; raises ``ValueError``
    with the one-line reason (none, an empty one, more than ``MAX_STREAMS``)."""
    if not values:
        raise ValueError("name the streams to follow: ?stream=ID (repeat it for more streams)")
    if any(not value for value in values):
        raise ValueError("stream must not be empty")
    stream_ids = list(dict.fromkeys(values))
    if len(stream_ids) > MAX_STREAMS:
        raise ValueError(f"at most {MAX_STREAMS} streams per feed, got {len(stream_ids)}")
    return stream_ids


async def event_stream(api: "ApiServer", stream_ids: Sequence[str]) -> AsyncIterator[bytes]:
    """``result`` per result (the FrameResult JSON, from Redis; it has its ``stream_id``), ``state`` every
    second per stream (``{"stream_id", "state", "reason", "latency_ms"}``), ``error`` once if Redis fails; a
    removed stream gets a last ``state`` of ``removed``, and the feed ends when none of its streams is left."""
    assert api.results is not None
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_QUEUE_EVENTS)
    stop = api.viewer_started()
    name = stream_ids[0] if len(stream_ids) == 1 else f"{stream_ids[0]}+{len(stream_ids) - 1}"
    thread = threading.Thread(target=_follow, args=(api, list(stream_ids), stop, loop, queue),
                              name=f"http-events-{name}", daemon=True)
    thread.start()
    try:
        yield RETRY
        while (item := await queue.get()) is not None:
            yield item
    finally:
        api.viewer_ended(stop)  # the viewer went, the streams ended or the server stops: the thread follows


def _follow(api: "ApiServer", stream_ids: list[str], stop: threading.Event, loop: asyncio.AbstractEventLoop,
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
    removed: set[str] = set()  # told `removed`; one added again with the same id is followed again
    try:
        for item in api.results.follow(stream_ids, stop):
            if item is not None:
                if not put(event("result", item[1])):
                    return
                continue
            views = {view["id"]: view for view in api.service.list_streams()}
            for stream_id in stream_ids:
                view = views.get(stream_id)
                if view is None and stream_id in removed:
                    continue
                if view is None:
                    removed.add(stream_id)
                    state = {"stream_id": stream_id, "state": "removed", "reason": "the stream was removed",
                             "latency_ms": {}}
                else:
                    removed.discard(stream_id)
                    state = {"stream_id": stream_id, "state": view["state"], "reason": view["reason"],
                             "latency_ms": view["last_latency_ms"]}
                if not put(event("state", json.dumps(state, allow_nan=False))):
                    return
            if len(removed) == len(stream_ids):
                return
    except redis.RedisError as exc:
        put(event("error", json.dumps({"error": f"Redis: {exc}"})))
    except Exception:  # noqa: BLE001 - a bug ends this viewer's stream, logged; the server stays up
        log.exception("event stream of %s failed", ", ".join(map(repr, stream_ids)))
    finally:
        put(None)
