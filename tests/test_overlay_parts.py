"""The overlay page's pure parts (grid shape, letterboxing, box tags, track colours, dwell text), table-driven, run
by the page's own script in Chromium.

The page's files are served as they are by a plain static HTTP server (no vidrec service: these parts need none,
and the page's requests for /streams and /track-events get the server's 404). The page with the real service is
tests/test_overlay.py.
"""
from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser_helpers import Browser, chromium
from tests.serve_helpers import REPO, wait_for

WORKERS = REPO / "workers"  # holds overlay/, so the page's own paths (/overlay/overlay.js) resolve


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    handler = functools.partial(_QuietHandler, directory=str(WORKERS))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with chromium(Path(tmp_path_factory.mktemp("profile"))) as browser:
            browser.page.goto(f"http://127.0.0.1:{server.server_address[1]}/overlay/index.html")
            wait_for(lambda: browser.evaluate("!!(window.vidrecOverlay && window.vidrecOverlay.parts)"), 10,
                     "overlay.js loaded\n" + browser.log())
            yield browser
    finally:
        server.shutdown()
        server.server_close()


def call(page: Browser, name: str, *args: Any) -> Any:
    return page.evaluate("([name, args]) => window.vidrecOverlay.parts[name](...args)", [name, list(args)])


@pytest.mark.parametrize("n, shape", [
    (0, (0, 0)),    # no streams: no grid
    (1, (1, 1)),    # one camera: the whole grid
    (2, (2, 1)),    # side by side
    (3, (2, 2)),    # 2×2, one cell empty
    (4, (2, 2)),    # 2×2
    (5, (3, 2)),    # ceil(sqrt 5) = 3 columns, 2 rows
    (9, (3, 3)),
    (10, (4, 3)),   # one more than a square: a new column, not a new row of one
    (16, (4, 4)),
])
def test_grid_shape(page: Browser, n: int, shape: tuple[int, int]) -> None:
    got = call(page, "gridShape", n)
    assert (got["columns"], got["rows"]) == shape


@pytest.mark.parametrize("picture, canvas, rect", [
    ((640, 360), (1280, 720), [0, 0, 1280, 720]),       # same aspect ratio: fills the canvas
    ((640, 480), (1280, 720), [160, 0, 960, 720]),      # 4:3 in 16:9: bars left and right
    ((640, 272), (484, 678), [0, 236.15, 484, 205.7]),  # wide in tall: bars above and below
    ((100, 100), (50, 80), [0, 15, 50, 50]),            # scaled down
])
def test_letterbox(page: Browser, picture: tuple[int, int], canvas: tuple[int, int], rect: list[float]) -> None:
    assert call(page, "letterbox", *picture, *canvas) == pytest.approx(rect, abs=0.01)


def obj(track_id: int | None, label: str | None, score: float | None = None, det_class: str | None = "person",
        det_score: float = 0.9) -> dict[str, Any]:
    return {"track_id": track_id, "label": label, "score": score, "det_class": det_class, "det_score": det_score}


@pytest.mark.parametrize("message_object, tag", [
    (obj(7, "taxi", 0.81), "#7 taxi"),                    # a named track: id and voted label, no score
    (obj(12, None), "#12"),                               # a track not named yet: its id alone
    (obj(None, "taxi", 0.812), "taxi 0.81"),              # no track (tracking off): label and score, as before
    (obj(None, None, det_class="car", det_score=0.6), "car 0.60"),  # no track, no label: detector class
    (obj(None, None, det_class=None, det_score=1.0), "whole frame 1.00"),  # the whole-frame box
])
def test_tag_text(page: Browser, message_object: dict[str, Any], tag: str) -> None:
    assert call(page, "tagText", message_object) == tag


def test_track_colours_are_fixed_per_id_and_differ_between_neighbours(page: Browser) -> None:
    colours = page.evaluate("[...Array(64).keys()].map((i) => window.vidrecOverlay.parts.trackColor(i + 1))")
    assert colours == page.evaluate("[...Array(64).keys()].map((i) => window.vidrecOverlay.parts.trackColor(i + 1))")
    assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colours)
    assert len({tuple(c) for c in colours}) == len(colours), "every id of the first 64 has its own colour"
    for a, b in zip(colours, colours[1:]):  # consecutive ids (tracks born together) are far apart
        assert sum(abs(x - y) for x, y in zip(a, b)) >= 120, (a, b)


@pytest.mark.parametrize("seconds, text", [
    (0, "0.0 s"),          # a track's first frame
    (4.25, "4.3 s"),       # one decimal under a minute
    (59.94, "59.9 s"),
    (59.96, "1 min 0 s"),  # would read 60.0 s
    (61, "1 min 1 s"),
    (119.7, "2 min 0 s"),  # rounded before splitting, never "1 min 60 s"
    (3725, "62 min 5 s"),
])
def test_dwell_text(page: Browser, seconds: float, text: str) -> None:
    assert call(page, "fmtDwell", seconds) == text
