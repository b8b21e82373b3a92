"""The overlay page with more cameras than a browser can hold event streams for, in Chromium against the real
service.

A browser keeps at most 6 HTTP/1.1 connections to one service and a live result feed (server-sent events) holds
one for good, so the page opens ONE feed for all visible tiles (GET /stream-events?stream=A&stream=B...) and
every tile gets its boxes. The feed follows what is on screen: enlarged, a tile is alone in it; back to the
grid, all are; a removed stream leaves it. Nothing starves meanwhile: snapshots of every tile keep coming.
Five streams of the test RTSP server's /vtest (pedestrians in every frame, so every result has boxes) on the real
service with Redis.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis

from tests.browser_helpers import chromium
from tests.serve_helpers import ServeProcess, free_port, wait_for
from tests.test_overlay import MODEL_ENV_HINT, POLL_S, READ_LAYOUT, assert_grid_fills_the_window

STREAMS = [f"cam{i}" for i in range(1, 6)]

READ_FEEDS = """() => ({feeds: window.vidrecOverlay.feeds, tiles: Object.fromEntries(
  Object.entries(window.vidrecOverlay.tiles).map(([id, t]) => [id, {
    feed: t.feed, visible: t.visible, draws: t.draws, results_seen: t.results_seen,
    frame: t.drawn && t.drawn.frame_index, has_result: !!(t.drawn && t.drawn.has_result),
    boxes: t.drawn ? t.drawn.boxes.length : 0,
  }]))})"""


@pytest.mark.timeout(300)
def test_one_feed_gives_every_tile_its_boxes_and_follows_what_is_on_screen(
    tmp_path: Path, rtsp_base: str, redis_url: str
) -> None:
    prefix = f"vm{uuid.uuid4().hex[:6]}"
    args = [arg for stream_id in STREAMS for arg in ("--stream", f"{stream_id}={rtsp_base}/vtest")]
    serve = ServeProcess([*args, "--redis", redis_url, "-o", f"Redis.key_prefix={prefix}"],
                         log_path=tmp_path / "serve.log", http_port=free_port())
    subscribers = redis.Redis.from_url(redis_url)
    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        with chromium(tmp_path / "profile", width=1280, height=720) as browser:
            opened: list[list[str]] = []  # the streams of each result feed the page asked for, in order
            per_stream: list[str] = []  # any one-stream feed it asked for (there must be none)

            def on_request(request: Any) -> None:
                url = urlsplit(request.url)
                if url.path == "/stream-events":
                    opened.append(parse_qs(url.query)["stream"])
                elif url.path.endswith("/events") and url.path.startswith("/streams/"):
                    per_stream.append(request.url)

            browser.page.on("request", on_request)
            browser.page.goto(f"{serve.base}/overlay")

            def feeds_when(condition: Any, what: str) -> dict[str, Any]:
                last: list[Any] = [None]

                def read() -> Any:
                    last[0] = browser.evaluate(READ_FEEDS)
                    return last[0] and condition(last[0]["tiles"]) and last[0]

                try:
                    return wait_for(read, 90, what, every_s=POLL_S)
                except pytest.fail.Exception as failed:
                    pytest.fail(f"{failed}\nthe page's last reading: {last[0]}\n{browser.log()}")

            def numsub() -> list[int]:
                return [n for _, n in subscribers.pubsub_numsub(*(f"{prefix}:frames:{s}" for s in STREAMS))]

            # 1. Five tiles, 3 columns by 2 rows, every one drawn with its result's boxes, from ONE feed.
            state = feeds_when(lambda t: len(t) == 5 and all(v["has_result"] and v["boxes"] for v in t.values()),
                               "every tile drawn with its boxes")
            assert_grid_fills_the_window(browser.evaluate(READ_LAYOUT), STREAMS)
            assert state["feeds"] == [STREAMS] and opened == [STREAMS], (state["feeds"], opened)
            assert not per_stream, per_stream
            assert all(state["tiles"][s]["feed"] for s in STREAMS)
            # the service follows the page's five streams with one Redis subscription (one per stream channel)
            assert numsub() == [1] * 5
            # every tile's results and snapshots keep coming through the one feed
            before = {s: (state["tiles"][s]["draws"], state["tiles"][s]["results_seen"]) for s in STREAMS}
            feeds_when(lambda t: all(t[s]["draws"] >= before[s][0] + 3 and t[s]["results_seen"] >= before[s][1] + 3
                                     for s in STREAMS), "new snapshots and results on every tile")

            # 2. Enlarged, the fifth is the only visible tile: the feed is reopened for it alone.
            browser.page.click('#grid figure.tile[data-stream="cam5"]')
            state = feeds_when(lambda t: [t[s]["feed"] for s in STREAMS] == [False] * 4 + [True],
                               "the feed of the enlarged camera alone")
            assert state["feeds"] == [["cam5"]] and opened[-1] == ["cam5"] and len(opened) == 2, opened
            assert [state["tiles"][s]["visible"] for s in STREAMS] == [False] * 4 + [True]
            seen = state["tiles"]["cam5"]["results_seen"]
            feeds_when(lambda t: t["cam5"]["results_seen"] > seen and t["cam5"]["has_result"],
                       "results drawn on the enlarged camera")
            wait_for(lambda: numsub() == [0] * 4 + [1], 30, "the grid's feed closed, the enlarged one's open")

            # 3. Back to the grid: one feed for all five again; with cam1 removed, one for the other four.
            browser.page.keyboard.press("Escape")
            feeds_when(lambda t: all(t[s]["feed"] for s in STREAMS), "the feed back on every tile")
            assert opened[-1] == STREAMS and len(opened) == 3, opened
            assert serve.api("DELETE", "/streams/cam1").status == 202
            state = feeds_when(lambda t: sorted(t) == STREAMS[1:] and all(v["feed"] for v in t.values()),
                               "the removed stream's tile gone, the feed on every remaining tile")
            assert state["feeds"] == [STREAMS[1:]] and opened[-1] == STREAMS[1:], opened
            counts = {s: state["tiles"][s]["results_seen"] for s in STREAMS[1:]}
            feeds_when(lambda t: all(t[s]["results_seen"] > counts[s] and t[s]["has_result"] for s in STREAMS[1:]),
                       "results on every remaining tile")
            assert_grid_fills_the_window(browser.evaluate(READ_LAYOUT), STREAMS[1:])
            assert browser.evaluate("window.vidrecOverlay.errors") == []
            assert not per_stream, per_stream
        assert serve.terminate() == 0, serve.log_text()[-4000:]
        assert "Traceback" not in serve.log_text()
    finally:
        subscribers.close()
        serve.kill()
