"""The overlay page with more cameras than a browser can hold event streams for, in Chromium against the real
service.

A browser keeps at most 6 HTTP/1.1 connections to one service and each live result feed (server-sent events)
holds one for good, so the page gives a feed, and boxes, to the first 4 visible tiles only; a fifth camera
shows its snapshots without boxes and says why, until it is enlarged (then it is the only visible tile and gets
a feed). Nothing else may starve meanwhile: snapshots of every tile keep coming and a removed stream's tile goes.
Five streams of the test RTSP server's /clock (small, cheap to decode) on the real service with Redis.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.browser_helpers import chromium
from tests.serve_helpers import ServeProcess, free_port, wait_for
from tests.test_overlay import MODEL_ENV_HINT, POLL_S, READ_LAYOUT, assert_grid_fills_the_window

STREAMS = [f"cam{i}" for i in range(1, 6)]
MAX_FEEDS = 4  # overlay.js

READ_FEEDS = """() => Object.fromEntries(Object.entries(window.vidrecOverlay.tiles).map(([id, t]) => [id, {
  feed: t.feed, visible: t.visible, draws: t.draws, results_seen: t.results_seen,
  frame: t.drawn && t.drawn.frame_index, has_result: !!(t.drawn && t.drawn.has_result),
  note: document.querySelector(`#grid figure.tile[data-stream="${CSS.escape(id)}"] .note`).textContent,
}]))"""


@pytest.mark.timeout(300)
def test_only_four_tiles_hold_a_result_feed_and_an_enlarged_one_gets_it(
    tmp_path: Path, rtsp_base: str, redis_url: str
) -> None:
    args = [arg for stream_id in STREAMS for arg in ("--stream", f"{stream_id}={rtsp_base}/clock")]
    serve = ServeProcess([*args, "--redis", redis_url, "-o", f"Redis.key_prefix=vm{uuid.uuid4().hex[:6]}"],
                         log_path=tmp_path / "serve.log", http_port=free_port())
    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        with chromium(tmp_path / "profile", width=1280, height=720) as browser:
            browser.page.goto(f"{serve.base}/overlay")

            def feeds_when(condition: Any, what: str) -> dict[str, Any]:
                return wait_for(lambda: (f := browser.evaluate(READ_FEEDS)) and condition(f) and f, 90,
                                what + "\n" + browser.log(), every_s=POLL_S)

            # 1. Five tiles, 3 columns by 2 rows; the first four draw results, the fifth snapshots only.
            feeds = feeds_when(lambda f: len(f) == 5 and all(v["frame"] is not None for v in f.values())
                               and all(f[s]["has_result"] for s in STREAMS[:MAX_FEEDS]),
                               "every tile drawn, the first four with results")
            assert_grid_fills_the_window(browser.evaluate(READ_LAYOUT), STREAMS)
            assert [feeds[s]["feed"] for s in STREAMS] == [True] * MAX_FEEDS + [False]
            assert feeds["cam5"]["results_seen"] == 0 and not feeds["cam5"]["has_result"]
            assert "no live boxes" in feeds["cam5"]["note"], feeds["cam5"]
            # every tile's snapshots keep coming with four event streams open
            before = {s: feeds[s]["draws"] for s in STREAMS}
            feeds_when(lambda f: all(f[s]["draws"] >= before[s] + 3 for s in STREAMS), "new snapshots on every tile")

            # 2. Enlarged, the fifth is the only visible tile: the others drop their feeds, it gets one.
            browser.page.click('#grid figure.tile[data-stream="cam5"]')
            feeds = feeds_when(lambda f: f["cam5"]["has_result"], "results drawn on the enlarged fifth camera")
            assert [feeds[s]["feed"] for s in STREAMS] == [False] * MAX_FEEDS + [True]
            assert [feeds[s]["visible"] for s in STREAMS] == [False] * MAX_FEEDS + [True]

            # 3. Back to the grid: the first four get their feeds again; with cam1 removed, cam5 is among the
            #    first four and gets one too.
            browser.page.keyboard.press("Escape")
            feeds_when(lambda f: [f[s]["feed"] for s in STREAMS] == [True] * MAX_FEEDS + [False], "feeds back")
            assert serve.api("DELETE", "/streams/cam1").status == 202
            feeds = feeds_when(lambda f: sorted(f) == STREAMS[1:] and all(v["feed"] for v in f.values()),
                               "the removed stream's tile gone and a feed for every remaining tile")
            assert_grid_fills_the_window(browser.evaluate(READ_LAYOUT), STREAMS[1:])
            assert browser.evaluate("window.vidrecOverlay.errors") == []
        assert serve.terminate() == 0, serve.log_text()[-4000:]
        assert "Traceback" not in serve.log_text()
    finally:
        serve.kill()
