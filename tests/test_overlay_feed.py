"""The overlay's live feed of many streams (`GET /stream-events?stream=A&stream=B`, workers/http_events.py and
workers/overlay_events.py): real results written by the real Redis sink to the real Redis, read back by a real
uvicorn server, over a real HTTP connection. The service behind the HTTP layer is the small dict-backed one of
tests/test_http_api.py (here only what the feed makes of Redis is tested; the page with the real service is
tests/test_overlay_many.py).
"""
from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from stream.messages import FrameResult, ObjectResult
from stream.sinks.redis import RedisSink
from tests.polling import wait_for
from tests.test_http_api import DictService
from workers.http_api import ApiServer
from workers.http_events import MAX_STREAMS, stream_ids_of
from workers.overlay_events import ResultFollower

FEED_DEADLINE_S = 20  # a bound for a loaded machine, not a timing claim


# (parameters, streams followed)
STREAM_PARAMETERS = [
    (["a"], ["a"]),  # one stream: the per-stream route's case
    (["b", "a", "c"], ["b", "a", "c"]),  # the given order is kept
    (["a", "b", "a"], ["a", "b"]),  # a repeat counts once
    ([f"s{i}" for i in range(MAX_STREAMS)] * 2, [f"s{i}" for i in range(MAX_STREAMS)]),  # 64, each twice: 64
]


@pytest.mark.parametrize(("parameters", "expected"), STREAM_PARAMETERS)
def test_the_feed_follows_each_named_stream_once(parameters: list[str], expected: list[str]) -> None:
    assert stream_ids_of(parameters) == expected


# (parameters, the refusal)
BAD_STREAM_PARAMETERS = [
    ([], "name the streams to follow: ?stream=ID (repeat it for more streams)"),  # none
    (["a", ""], "stream must not be empty"),  # an empty one
    ([f"s{i}" for i in range(MAX_STREAMS + 1)], f"at most {MAX_STREAMS} streams per feed, got {MAX_STREAMS + 1}"),
]


@pytest.mark.parametrize(("parameters", "error"), BAD_STREAM_PARAMETERS)
def test_a_feed_of_no_empty_or_too_many_streams_is_refused(parameters: list[str], error: str) -> None:
    with pytest.raises(ValueError) as refused:
        stream_ids_of(parameters)
    assert str(refused.value) == error


class StatefulService(DictService):
    """DictService with the stream view fields the feed's `state` events carry; the test changes its streams
    while the feed's thread lists them, so the listing is of a copy taken at once."""

    def get_stream(self, stream_id: str) -> dict[str, Any]:
        return self._view(stream_id, super().get_stream(stream_id)["url"])

    def list_streams(self) -> list[dict[str, Any]]:
        return [self._view(stream_id, url) for stream_id, url in list(self.streams.items())]

    @staticmethod
    def _view(stream_id: str, url: str) -> dict[str, Any]:
        return {"id": stream_id, "url": url, "state": "live", "reason": None, "last_latency_ms": {"total": 12.5}}


class FeedReader:
    """One open feed, read on a thread: every event as ``(name, data)``; ``ended`` once the server closes it."""

    def __init__(self, address: tuple[str, int], path: str) -> None:
        self.connection = http.client.HTTPConnection(*address, timeout=30)
        self.connection.request("GET", path)
        self.response = self.connection.getresponse()
        self.events: list[tuple[str, Any]] = []
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        if self.response.status == 200:
            self._thread.start()

    def _read(self) -> None:
        name, data = "message", ""
        try:
            while line := self.response.readline():
                text = line.decode("utf-8").rstrip("\n")
                if text.startswith("event: "):
                    name = text[len("event: "):]
                elif text.startswith("data: "):
                    data = text[len("data: "):]
                elif not text and data:
                    self.events.append((name, json.loads(data)))
                    name, data = "message", ""
        except OSError:
            pass  # closed by close()
        finally:
            self.ended.set()

    def of(self, name: str, stream_id: str) -> list[Any]:
        return [data for kind, data in list(self.events) if kind == name and data.get("stream_id") == stream_id]

    def close(self) -> None:
        self.connection.close()


def _result(stream_id: str, frame_index: int) -> FrameResult:
    box = ObjectResult((10.0, 20.0, 110.0, 220.0), 0.9, "person", "walker", 0.8, track_id=frame_index + 1)
    return FrameResult(stream_id, frame_index, frame_index / 25, time.time(), 640, 360, {"total": 5.0}, (box,))


@pytest.fixture()
def feed_setup(redis_url: str) -> Iterator[tuple[ApiServer, RedisSink, str]]:
    prefix = f"vf{uuid.uuid4().hex[:8]}"
    service = StatefulService()
    service.streams = {sid: f"rtsp://h/{sid}" for sid in ("cam1", "yard/east", "cam3")}
    api = ApiServer("127.0.0.1", 0, service, token=None, results=ResultFollower(redis_url, prefix))
    api.start()
    sink = RedisSink(redis_url, key_prefix=prefix, ttl_s=120)
    try:
        yield api, sink, prefix
    finally:
        sink.close()
        api.close()


@pytest.mark.timeout(120)
def test_one_feed_carries_the_results_and_states_of_exactly_its_streams(
    feed_setup: tuple[ApiServer, RedisSink, str], redis_url: str
) -> None:
    api, sink, prefix = feed_setup
    service = api.service
    for sid in ("cam1", "yard/east", "cam3"):
        sink.write(_result(sid, 0))  # each stream's newest result, there before the feed opens
    feed = FeedReader(api.address, "/stream-events?stream=cam1&stream=yard%2Feast")
    try:
        assert feed.response.status == 200, feed.response.read()
        assert feed.response.getheader("Content-Type") == "text/event-stream; charset=utf-8"

        # 1. First each stream's newest result, then a state per stream every second, each naming its stream.
        def frames_of(sid: str) -> list[int]:
            return [r["frame_index"] for r in feed.of("result", sid)]

        wait_for(lambda: frames_of("cam1") == [0] and frames_of("yard/east") == [0], FEED_DEADLINE_S,
                 f"the newest result of both streams: {feed.events}")
        states = wait_for(lambda: feed.of("state", "cam1") and feed.of("state", "yard/east")
                          and feed.of("state", "yard/east"), FEED_DEADLINE_S, f"states of both streams: {feed.events}")
        assert states[0] == {"stream_id": "yard/east", "state": "live", "reason": None, "latency_ms": {"total": 12.5}}

        # 2. One Redis subscription serves both streams; cam3 is not asked for, its channel has no subscriber here.
        client = redis.Redis.from_url(redis_url)
        try:
            counts = dict(client.pubsub_numsub(*(f"{prefix}:frames:{s}" for s in ("cam1", "yard/east", "cam3"))))
        finally:
            client.close()
        assert counts == {f"{prefix}:frames:cam1".encode(): 1, f"{prefix}:frames:yard/east".encode(): 1,
                          f"{prefix}:frames:cam3".encode(): 0}, counts

        # 3. New results of all three: the feed carries those of its two streams, in order, exactly as written.
        written = {}
        for index in (1, 2, 3):
            for sid in ("cam1", "yard/east", "cam3"):
                written[(sid, index)] = _result(sid, index)
                sink.write(written[(sid, index)])
        wait_for(lambda: frames_of("cam1") == [0, 1, 2, 3] and frames_of("yard/east") == [0, 1, 2, 3],
                 FEED_DEADLINE_S, f"frames 1..3 of both streams: {feed.events}")
        assert feed.of("result", "cam1")[3] == json.loads(written[("cam1", 3)].to_json())
        assert not feed.of("result", "cam3") and not feed.of("state", "cam3"), "a stream not asked for"

        # 4. A removed stream gets one `removed` state; the others go on; added again under its id, it is
        #    followed again; when none is left the feed ends.
        def yard_states() -> list[str]:
            return [s["state"] for s in feed.of("state", "yard/east")]

        del service.streams["yard/east"]
        wait_for(lambda: "removed" in yard_states(), FEED_DEADLINE_S, f"the removed state: {feed.events}")
        sink.write(_result("cam1", 4))
        wait_for(lambda: frames_of("cam1")[-1:] == [4], FEED_DEADLINE_S, f"cam1 goes on: {feed.events}")
        assert yard_states()[-1] == "removed" and yard_states().count("removed") == 1, "one `removed`, then quiet"
        service.streams["yard/east"] = "rtsp://h/yard/east"
        sink.write(_result("yard/east", 5))
        wait_for(lambda: frames_of("yard/east")[-1:] == [5] and yard_states()[-1] == "live", FEED_DEADLINE_S,
                 f"the stream added again followed again: {feed.events}")
        assert not feed.ended.is_set()
        del service.streams["cam1"], service.streams["yard/east"]
        assert feed.ended.wait(FEED_DEADLINE_S), f"the feed did not end: {feed.events}"
        assert feed.of("state", "cam1")[-1]["state"] == "removed" and yard_states()[-1] == "removed"
    finally:
        feed.close()


@pytest.mark.timeout(60)
def test_the_one_stream_route_is_the_feed_of_that_stream(feed_setup: tuple[ApiServer, RedisSink, str]) -> None:
    api, sink, _ = feed_setup
    sink.write(_result("cam3", 7))
    feed = FeedReader(api.address, "/streams/cam3/events")
    try:
        assert feed.response.status == 200, feed.response.read()
        wait_for(lambda: feed.of("result", "cam3") and feed.of("state", "cam3"), FEED_DEADLINE_S,
                 f"a result and a state of cam3: {feed.events}")
        assert feed.of("result", "cam3")[0]["frame_index"] == 7
        assert {data["stream_id"] for _, data in feed.events} == {"cam3"}
    finally:
        feed.close()
