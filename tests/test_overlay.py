"""The live overlay page (GET /overlay) in a real browser against the real service.

`vidrec serve` runs as a subprocess with the real Kafka and Redis on the real test RTSP server's /clock and a
real file (vtest.avi, pedestrians); /bikes (street footage the sample gallery was cut from) is added and removed
through the API while the page is open. Debian's chromium, driven by Playwright, opens the page, which must:
show every stream as a tile of a grid that fills the window (ceil(sqrt n) columns, each snapshot letterboxed),
follow streams as they come and go, enlarge a tile on a click and put it back on a click or Esc; draw on each
snapshot exactly the boxes that Kafka carries for that frame (same frame_index), scaled into the tile, in a
colour per track, tagged "#<track_id> <label>" (also listed in the DOM); and list the recent tracks beside the
grid with their best crop served by the service. With ``Service.http_read_auth`` every route but /healthz needs
the token, which the page passes on from its own ``?access_token=``; a lost service and a refused token show on
the page. Screenshots go to test-artifacts/ (overlay.png also to docs/ with VIDREC_UPDATE_DOCS=1).

Every wait polls a condition with a deadline (tests/polling.py); deadlines are bounds for a slow machine.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from stream.messages import STREAM_STATES
from tests.browser_helpers import Browser, chromium
from tests.cli_helpers import sample_gallery
from tests.serve_helpers import REPO, ServeProcess, TopicReader, free_port, wait_for

TOKEN = "overlay-token-" + uuid.uuid4().hex
MODEL_ENV_HINT = "VIDREC_MODEL_DIR (the models) and a running scripts/services"
ARTIFACTS = REPO / "test-artifacts"
GALLERY_LABELS = ("taxi", "cyclist", "parked bicycle")  # samples/gallery
VIEWPORT = (1280, 720)
BBOX_TOLERANCE_PX = 0.5
LAYOUT_TOLERANCE_PX = 1.0
# the page draws its own colours over the JPEG: a painted edge pixel is that colour, give or take rounding
COLOR_TOLERANCE = 2
POLL_S = 0.1  # between two readings of the page

# One consistent reading of one tile (JavaScript runs one task at a time, so nothing is redrawn meanwhile): what
# it says it drew, the canvas pixels on each box's edges, the tags listed in its DOM and its caption. null until
# a frame with a result is drawn that has a box with a track (and a label, when want.labelled).
READ_TILE = """(want) => {
  const o = window.vidrecOverlay;
  const t = o && o.tiles[want.stream];
  const d = t && t.drawn;
  if (!d || !d.has_result) return null;
  if (!d.boxes.some((b) => b.track_id !== null && (!want.labelled || b.label !== null))) return null;
  const tile = document.querySelector(`#grid figure.tile[data-stream="${CSS.escape(want.stream)}"]`);
  const canvas = tile.querySelector("canvas");
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  const pixel = (x, y) => Array.from(ctx.getImageData(
    Math.min(W - 1, Math.max(0, Math.floor(x))), Math.min(H - 1, Math.max(0, Math.floor(y))), 1, 1).data);
  const edges = d.boxes.map((b) => {
    const [x, y, w, h] = b.canvas_rect;
    const points = [];
    for (const f of [0.25, 0.5, 0.75]) points.push([x + w * f, y], [x + w * f, y + h], [x, y + h * f], [x + w, y + h * f]);
    return points.map(([px, py]) => ({ x: px, y: py, rgba: pixel(px, py) }));
  });
  return {
    drawn: JSON.parse(JSON.stringify(d)), canvas: [W, H], edges, errors: o.errors.slice(),
    tags: [...tile.querySelectorAll(".tile-objects li")].map((li) => ({
      text: li.textContent, track_id: li.dataset.trackId === undefined ? null : Number(li.dataset.trackId),
      label: li.dataset.label === undefined ? null : li.dataset.label })),
    colors: d.boxes.map((b) => b.track_id === null ? null : o.trackColor(b.track_id)),
    state: tile.querySelector(".state").textContent, info: tile.querySelector(".tile-info").textContent,
    tileSize: [tile.clientWidth, tile.clientHeight], resultsSeen: t.results_seen,
  };
}"""

# Where everything is on the screen (CSS pixels).
READ_LAYOUT = """() => {
  const rect = (e) => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.width, b.height]; };
  const grid = document.getElementById("grid");
  const style = getComputedStyle(grid);
  const o = window.vidrecOverlay;
  return {
    viewport: [window.innerWidth, window.innerHeight], grid: rect(grid),
    padding: parseFloat(style.paddingLeft), gap: [parseFloat(style.columnGap), parseFloat(style.rowGap)],
    panel: rect(document.getElementById("events-panel")), columns: o.columns, rows: o.rows, order: o.order.slice(),
    enlarged: o.enlarged, search: window.location.search,
    tiles: Object.fromEntries([...grid.querySelectorAll("figure.tile")].map((t) => [t.dataset.stream, rect(t)])),
    visible: Object.fromEntries(Object.entries(o.tiles).map(([id, t]) => [id, t.visible])),
  };
}"""

# The track list's rows, newest first, with their thumbnail's state.
READ_TRACKS = """() => [...document.querySelectorAll("#track-events li.track-event")].map((li) => {
  const img = li.querySelector("img.thumb");
  return {
    stream: li.dataset.stream, track_id: Number(li.dataset.trackId), event: li.dataset.event,
    label: li.dataset.label || null, title: li.querySelector(".track-title").textContent,
    meta: li.querySelector(".track-meta").textContent, src: img.getAttribute("src"),
    loaded: img.complete && img.naturalWidth > 0, natural: [img.naturalWidth, img.naturalHeight],
  };
})"""


def get(base: str, path: str, *, token: str | None = None, bearer: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """A GET that returns (status, headers, body) for any status; an event stream is cut after its headers."""
    url = base + path
    if token is not None:
        url += ("&" if "?" in url else "?") + "access_token=" + token
    request = urllib.request.Request(url)
    if bearer is not None:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            headers = dict(response.headers.items())
            streaming = headers.get("Content-Type", "").startswith("text/event-stream")
            return response.status, headers, b"" if streaming else response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers.items()), exc.read()


def tag_text(obj: dict[str, Any]) -> str:
    """The tag the page must draw for a result's object."""
    if obj["track_id"] is not None:
        return f"#{obj['track_id']}" + (f" {obj['label']}" if obj["label"] is not None else "")
    if obj["label"] is not None:
        return f"{obj['label']} {obj['score']:.2f}"
    return f"{obj['det_class'] or 'whole frame'} {obj['det_score']:.2f}"


def assert_page_drew_the_kafka_result(view: dict[str, Any], message: dict[str, Any]) -> None:
    """The drawn boxes are the Kafka result's boxes for that frame, scaled into the letterboxed snapshot, tagged
    with track id and label, listed in the DOM and painted on the canvas in their track's colour."""
    drawn = view["drawn"]
    assert (drawn["frame_width"], drawn["frame_height"]) == (message["width"], message["height"])
    canvas_w, canvas_h = view["canvas"]
    assert (drawn["canvas_width"], drawn["canvas_height"]) == (canvas_w, canvas_h)
    assert [canvas_w, canvas_h] == view["tileSize"], "the canvas backs the whole tile (device pixel ratio 1)"
    ox, oy, dw, dh = drawn["image_rect"]
    sx, sy = dw / message["width"], dh / message["height"]
    objects = message["objects"]
    assert len(drawn["boxes"]) == len(objects), (drawn["boxes"], objects)
    for box, obj, tag, color in zip(drawn["boxes"], objects, view["tags"], view["colors"]):
        assert box["bbox"] == pytest.approx(obj["bbox"], abs=BBOX_TOLERANCE_PX), (box, obj)
        x1, y1, x2, y2 = obj["bbox"]
        expected = [ox + x1 * sx, oy + y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy]
        assert box["canvas_rect"] == pytest.approx(expected, abs=BBOX_TOLERANCE_PX), (box, expected)
        assert (box["label"], box["det_class"], box["track_id"]) == (obj["label"], obj["det_class"], obj["track_id"])
        assert box["text"] == tag_text(obj), (box, obj)
        assert tag == {"text": box["text"], "track_id": obj["track_id"], "label": obj["label"]}, (tag, obj)
        if obj["track_id"] is not None:
            assert box["color"] == color, "a track's colour comes from its id alone"
    # The boxes are really painted: every sampled pixel on a rectangle's edges has its colour, except where
    # another box's outline crosses (each track has its own colour, and a crowd's boxes overlap).
    checked = 0
    for i, (box, edge_points) in enumerate(zip(drawn["boxes"], view["edges"])):
        others = [b["canvas_rect"] for j, b in enumerate(drawn["boxes"]) if j != i]
        clear = [p for p in edge_points if not any(on_outline(p["x"], p["y"], rect) for rect in others)]
        for point in clear:
            rgba = point["rgba"]
            assert rgba[3] == 255 and all(abs(c - e) <= COLOR_TOLERANCE for c, e in zip(rgba[:3], box["color"])), \
                (box, point)
        checked += bool(clear)
    assert checked >= len(drawn["boxes"]) / 2, "most boxes have edges no other box crosses"


def on_outline(x: float, y: float, rect: list[float], margin: float = 2.5) -> bool:
    """Whether (x, y) is within ``margin`` px of the outline of ``rect`` = [x, y, w, h] (a 2 px stroke covers
    1 px either side of it)."""
    left, top, width, height = rect
    right, bottom = left + width, top + height
    near_side = (abs(x - left) <= margin or abs(x - right) <= margin) and top - margin <= y <= bottom + margin
    near_top_or_bottom = (abs(y - top) <= margin or abs(y - bottom) <= margin) and left - margin <= x <= right + margin
    return near_side or near_top_or_bottom


def assert_letterboxed(view: dict[str, Any]) -> None:
    """The whole snapshot is drawn, centred, its aspect ratio kept, touching two opposite sides of the tile."""
    drawn = view["drawn"]
    ox, oy, dw, dh = drawn["image_rect"]
    canvas_w, canvas_h = view["canvas"]
    assert dw / dh == pytest.approx(drawn["snapshot_width"] / drawn["snapshot_height"], rel=1e-6)
    assert ox == pytest.approx((canvas_w - dw) / 2) and oy == pytest.approx((canvas_h - dh) / 2)
    assert dw == pytest.approx(canvas_w) or dh == pytest.approx(canvas_h), drawn["image_rect"]


def assert_grid_fills_the_window(layout: dict[str, Any], ids: list[str], *, narrow: bool = False) -> None:
    """ceil(sqrt n) equal columns, as many equal rows as needed, in the service's order, filling everything the
    header and the track list leave; the track list takes the right edge (on a ``narrow`` window, the bottom)."""
    columns = math.ceil(math.sqrt(len(ids)))
    rows = math.ceil(len(ids) / columns)
    assert (layout["order"], layout["columns"], layout["rows"]) == (ids, columns, rows), layout
    assert list(layout["tiles"]) == ids
    vw, vh = layout["viewport"]
    gx, gy, gw, gh = layout["grid"]
    px, py, pw, ph = layout["panel"]
    tol = LAYOUT_TOLERANCE_PX
    if narrow:
        assert gx == pytest.approx(0, abs=tol) and gw == pytest.approx(vw, abs=tol), layout
        assert gy + gh == pytest.approx(py, abs=tol) and py + ph == pytest.approx(vh, abs=tol), layout
        assert pw == pytest.approx(vw, abs=tol) and gh > 0.5 * vh, layout
    else:
        assert gx == pytest.approx(0, abs=tol) and gy + gh == pytest.approx(vh, abs=tol), layout
        assert gx + gw == pytest.approx(px, abs=tol) and px + pw == pytest.approx(vw, abs=tol), layout
        assert gw > 0.6 * vw, f"the track list leaves the grid most of the width: {layout}"
    assert gy < 0.15 * vh, f"the header leaves the grid the rest of the height: {layout}"
    pad, (col_gap, row_gap) = layout["padding"], layout["gap"]
    cell_w = (gw - 2 * pad - (columns - 1) * col_gap) / columns
    cell_h = (gh - 2 * pad - (rows - 1) * row_gap) / rows
    for i, stream_id in enumerate(ids):
        col, row = i % columns, i // columns
        expected = [gx + pad + col * (cell_w + col_gap), gy + pad + row * (cell_h + row_gap), cell_w, cell_h]
        assert layout["tiles"][stream_id] == pytest.approx(expected, abs=tol), (stream_id, layout)


def kafka_result(reader: TopicReader, stream_id: str, frame_index: int) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((m.value for m in reader.of(stream_id) if m.value["frame_index"] == frame_index), None)

    return wait_for(find, 30, f"the Kafka result of {stream_id} frame {frame_index}")


def save_screenshot(browser: Browser, name: str, *, docs: bool = False) -> Path:
    """Kept in test-artifacts/; with VIDREC_UPDATE_DOCS=1 a ``docs`` one also replaces docs/<name>."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    browser.page.screenshot(path=str(path))
    if docs and os.environ.get("VIDREC_UPDATE_DOCS") == "1":
        shutil.copyfile(path, REPO / "docs" / name)
    return path


def read_tile(browser: Browser, stream_id: str, *, labelled: bool = False, timeout_s: float = 90) -> dict[str, Any]:
    what = f"a drawn {stream_id} frame with a {'named ' if labelled else ''}track on the page\n"
    return wait_for(lambda: browser.evaluate(READ_TILE, {"stream": stream_id, "labelled": labelled}), timeout_s,
                    what + browser.log(), every_s=POLL_S)


def wait_for_layout(browser: Browser, ids: list[str], what: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        layout = browser.evaluate(READ_LAYOUT)
        return layout if layout["order"] == ids and list(layout["tiles"]) == ids else None

    return wait_for(ready, 30, what + "\n" + browser.log(), every_s=POLL_S)


@pytest.mark.timeout(420)
def test_the_grid_shows_every_camera_with_its_tracked_boxes_and_the_recent_tracks(
    tmp_path: Path, rtsp_base: str, vtest_avi: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    gallery = sample_gallery(tmp_path / "index")
    topic = f"vidrec-overlay-{uuid.uuid4().hex[:8]}"
    serve = ServeProcess(
        ["--stream", f"clock={rtsp_base}/clock", "--stream", f"file={vtest_avi}", "--kafka", kafka_bootstrap,
         "--topic", topic, "--redis", redis_url, "-o", f"Redis.key_prefix=vo{uuid.uuid4().hex[:6]}", *gallery],
        log_path=tmp_path / "serve.log", http_port=free_port(),
    )
    reader: TopicReader | None = None
    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        reader = TopicReader(kafka_bootstrap, topic)
        with chromium(tmp_path / "profile", width=VIEWPORT[0], height=VIEWPORT[1]) as browser:
            browser.page.goto(f"{serve.base}/overlay")

            # 1. Two streams: two tiles side by side filling the window left of the track list.
            layout = wait_for_layout(browser, ["clock", "file"], "a tile per stream")
            assert_grid_fills_the_window(layout, ["clock", "file"])
            assert layout["enlarged"] is None

            # 2. The file's tile draws the Kafka boxes of the frame it shows, with track ids; the clock's tile
            #    shows its snapshot too (the ball may or may not be detected: only the snapshot is required).
            view = read_tile(browser, "file")
            message = kafka_result(reader, "file", view["drawn"]["frame_index"])
            assert_page_drew_the_kafka_result(view, message)
            assert_letterboxed(view)
            assert any(box["text"].startswith("#") for box in view["drawn"]["boxes"]), view["drawn"]["boxes"]
            assert view["state"].split()[0] in STREAM_STATES, view["state"]
            frame_text, latency_text = view["info"].split(" · ")
            assert frame_text == f"#{message['frame_index']}"
            assert float(latency_text.split()[1]) == pytest.approx(message["latency_ms"]["total"], abs=0.5)
            assert view["errors"] == [], view["errors"]
            colors = {box["track_id"]: tuple(box["color"]) for box in view["drawn"]["boxes"] if box["track_id"]}
            if len(colors) > 1:
                assert len(set(colors.values())) == len(colors), f"tracks of one frame share a colour: {colors}"
            clock = wait_for(lambda: browser.evaluate("window.vidrecOverlay.tiles.clock.drawn"), 60,
                             "a drawn clock snapshot\n" + browser.log(), every_s=POLL_S)
            assert (clock["frame_width"], clock["frame_height"]) == (640, 360)
            assert_letterboxed({"drawn": clock, "canvas": [clock["canvas_width"], clock["canvas_height"]]})

            # 3. A click enlarges a tile to the whole window (the others fetch nothing meanwhile); a click puts
            #    it back, and so does Esc.
            browser.page.click('#grid figure.tile[data-stream="file"]')
            layout = browser.evaluate(READ_LAYOUT)
            assert layout["enlarged"] == "file" and "stream=file" in layout["search"]
            assert layout["tiles"]["file"] == pytest.approx([0, 0, *VIEWPORT], abs=LAYOUT_TOLERANCE_PX)
            assert layout["visible"] == {"clock": False, "file": True}
            view = wait_for(lambda: (v := browser.evaluate(READ_TILE, {"stream": "file", "labelled": False}))
                            and v["canvas"] == list(VIEWPORT) and v, 30, "the enlarged file redrawn\n" + browser.log(),
                            every_s=POLL_S)
            assert_page_drew_the_kafka_result(view, kafka_result(reader, "file", view["drawn"]["frame_index"]))
            assert_letterboxed(view)
            browser.page.click('#grid figure.tile[data-stream="file"]')
            layout = browser.evaluate(READ_LAYOUT)
            assert layout["enlarged"] is None and "stream=" not in layout["search"]
            assert_grid_fills_the_window(layout, ["clock", "file"])
            browser.page.click('#grid figure.tile[data-stream="clock"]')
            assert browser.evaluate(READ_LAYOUT)["enlarged"] == "clock"
            browser.page.keyboard.press("Escape")
            layout = browser.evaluate(READ_LAYOUT)
            assert layout["enlarged"] is None and layout["visible"] == {"clock": True, "file": True}
            assert_grid_fills_the_window(layout, ["clock", "file"])

            # 4. The track list: rows from GET /track-events with the track's best crop, loaded from the service.
            def track_with_thumbnail() -> dict[str, Any] | None:
                return next((row for row in browser.evaluate(READ_TRACKS) if row["loaded"]), None)

            row = wait_for(track_with_thumbnail, 90, "a track row with a loaded thumbnail\n" + browser.log(),
                           every_s=POLL_S)
            status, _, body = get(serve.base, "/track-events?limit=500")
            assert status == 200
            entries = [e for e in json.loads(body)["events"]
                       if e["event"]["stream_id"] == row["stream"] and e["event"]["track_id"] == row["track_id"]]
            assert entries, row
            newest = entries[-1]
            assert row["src"].split("?")[0] == newest["thumbnail"], (row, newest)
            label = newest["event"]["label"]
            assert row["title"].startswith(f"{label or 'unknown'} #{row['track_id']}"), row
            assert row["meta"].startswith(f"{row['stream']} · "), row
            assert "dwell " in row["meta"] and row["meta"].endswith(" s"), row
            status, headers, jpeg = get(serve.base, newest["thumbnail"])
            assert status == 200 and headers["Content-Type"] == "image/jpeg"
            crop = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert row["natural"] == [crop.shape[1], crop.shape[0]], "the page shows the service's crop"

            # 5. A stream added while the page is open gets a tile (3 streams: 2 columns, 2 rows); its named
            #    tracks show "#id label" with the label Kafka carries for that frame.
            added = serve.api("POST", "/streams", {"id": "bikes", "url": f"{rtsp_base}/bikes"})
            assert added.status == 201, added
            layout = wait_for_layout(browser, ["clock", "file", "bikes"], "a tile for the added stream")
            assert_grid_fills_the_window(layout, ["clock", "file", "bikes"])
            view = read_tile(browser, "bikes", labelled=True, timeout_s=150)
            message = kafka_result(reader, "bikes", view["drawn"]["frame_index"])
            assert_page_drew_the_kafka_result(view, message)
            named = [box for box in view["drawn"]["boxes"] if box["track_id"] is not None and box["label"]]
            assert all(box["label"] in GALLERY_LABELS for box in named), named
            assert all(box["text"] == f"#{box['track_id']} {box['label']}" for box in named), named
            # ... and the track list names it, with its crop
            named_row = wait_for(lambda: next((r for r in browser.evaluate(READ_TRACKS)
                                               if r["stream"] == "bikes" and r["label"] and r["loaded"]), None),
                                 60, "a named bikes track with its crop in the list\n" + browser.log(), every_s=POLL_S)
            assert named_row["label"] in GALLERY_LABELS and named_row["title"].startswith(named_row["label"]), named_row
            read_tile(browser, "bikes", labelled=True, timeout_s=60)  # for the picture: a named box on screen
            save_screenshot(browser, "overlay.png", docs=True)

            # 6. Removed, its tile goes and the grid is two tiles again.
            assert serve.api("DELETE", "/streams/bikes").status == 202
            layout = wait_for_layout(browser, ["clock", "file"], "the removed stream's tile gone")
            assert_grid_fills_the_window(layout, ["clock", "file"])
            assert browser.evaluate("Object.keys(window.vidrecOverlay.tiles).sort()") == ["clock", "file"]

            # A narrow window (a phone held upright): the track list goes below the grid, the grid still fills
            # the rest and every snapshot is letterboxed in its smaller tile.
            browser.page.set_viewport_size({"width": 480, "height": 800})
            layout = wait_for(lambda: (v := browser.evaluate(READ_LAYOUT))["viewport"] == [480, 800] and v, 10,
                              "the narrow window")
            assert_grid_fills_the_window(layout, ["clock", "file"], narrow=True)
            view = wait_for(lambda: (v := browser.evaluate(READ_TILE, {"stream": "file", "labelled": False}))
                            and v["canvas"] == v["tileSize"] and v["canvas"][0] < 240 and v, 30,
                            "the file redrawn in its narrow tile\n" + browser.log(), every_s=POLL_S)
            assert_letterboxed(view)
            browser.page.set_viewport_size({"width": VIEWPORT[0], "height": VIEWPORT[1]})

            # 7. ?stream=ID opens with that tile enlarged; a stream the service does not have is named as such.
            browser.page.goto(f"{serve.base}/overlay?stream=file")
            wait_for(lambda: browser.evaluate(READ_LAYOUT)["enlarged"] == "file", 30, "file enlarged from the URL")
            browser.page.goto(f"{serve.base}/overlay?stream=nope")
            errors = wait_for(lambda: browser.evaluate("window.vidrecOverlay.errors"), 30,
                              "the page's error for an unknown stream\n" + browser.log(), every_s=POLL_S)
            assert errors == ['stream "nope" is not configured on this service'], errors
            assert browser.page.is_visible("#errors")
            assert wait_for_layout(browser, ["clock", "file"], "the grid under the error")["enlarged"] is None
        assert serve.terminate() == 0, serve.log_text()[-4000:]
        assert "Traceback" not in serve.log_text()
    finally:
        serve.kill()
        if reader is not None:
            reader.close()


@pytest.mark.timeout(240)
def test_read_auth_the_page_passes_its_token_on_and_shows_a_lost_service_and_a_refused_token(
    tmp_path: Path, rtsp_base: str, redis_url: str
) -> None:
    port = free_port()
    gallery = sample_gallery(tmp_path / "index")  # tracks get recognition attempts, so best crops to show
    args = ["--stream", f"bikes={rtsp_base}/bikes", "--redis", redis_url, *gallery,
            "-o", f"Redis.key_prefix=vo{uuid.uuid4().hex[:6]}", "-o", "Service.http_read_auth=True"]
    serve = ServeProcess(args, log_path=tmp_path / "serve.log", http_port=port, env={"VIDREC_API_TOKEN": TOKEN})
    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        base = serve.base

        # 1. Without the token (or with a wrong one) every GET but /healthz is refused.
        assert get(base, "/healthz")[0] == 200
        for path in ("/overlay", "/overlay/overlay.js", "/overlay/overlay.css", "/streams", "/streams/bikes",
                     "/streams/bikes/frame.jpg", "/streams/bikes/events", "/stream-events?stream=bikes", "/track-events",
                     "/thumbnails/bikes/run/1"):
            assert get(base, path)[0] == 401, path
            assert get(base, path, token="wrong")[0] == 401, path
            assert get(base, path, bearer="wrong")[0] == 401, path

        # 2. The page opened without the token is refused; opened with ?access_token= it works, and every
        #    request it makes carries the token.
        with chromium(tmp_path / "profile") as browser:
            requests: list[str] = []
            refused: list[str] = []
            browser.page.on("request", lambda request: requests.append(request.url))
            browser.page.on("response", lambda response: response.status == 401 and refused.append(response.url))
            response = browser.page.goto(f"{base}/overlay")
            assert response is not None and response.status == 401
            assert "token" in browser.page.inner_text("body")
            requests.clear()
            refused.clear()

            browser.page.goto(f"{base}/overlay?access_token={TOKEN}")
            view = read_tile(browser, "bikes")
            assert view["errors"] == [], view["errors"]
            # the track list's thumbnails go with the token too, once one is shown
            wait_for(lambda: any(row["loaded"] for row in browser.evaluate(READ_TRACKS)), 90,
                     "a loaded thumbnail\n" + browser.log(), every_s=POLL_S)
            assert not refused, refused
            service_requests = [url for url in requests if url.startswith(base)]
            paths = {url[len(base):].split("?")[0] for url in service_requests}
            assert {"/overlay", "/overlay/overlay.js", "/overlay/overlay.css", "/streams",
                    "/stream-events", "/streams/bikes/frame.jpg", "/track-events"} <= paths, paths
            assert any(path.startswith("/thumbnails/bikes/") for path in paths), paths
            assert all(f"access_token={TOKEN}" in url for url in service_requests), service_requests

            # A snapshot is a JPEG (at most Service.overlay_max_width wide) with the frame's own size in its
            # headers; here the token goes as the Authorization header.
            status, headers, body = get(base, "/streams/bikes/frame.jpg", bearer=TOKEN)
            assert status == 200 and headers["Content-Type"] == "image/jpeg"
            image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None
            assert (int(headers["X-Frame-Width"]), int(headers["X-Frame-Height"])) == (640, 272)
            assert image.shape[:2] == (272, 640)  # under Service.overlay_max_width: not scaled
            assert int(headers["X-Frame-Index"]) >= 0

            # 3. The service goes away: the page says the connection is lost.
            assert serve.terminate() == 0, serve.log_text()[-4000:]

            def lost() -> list[str] | None:
                errors = browser.evaluate("window.vidrecOverlay.errors")
                return errors if any("connection lost" in e for e in errors) else None

            errors = wait_for(lost, 30, "'connection lost' on the page\n" + browser.log())
            assert browser.page.is_visible("#errors"), errors
            save_screenshot(browser, "overlay-connection-lost.png")
            assert "Traceback" not in serve.log_text()

            # 4. It comes back on the same address with another token: the page shows the 401, not a lost link.
            serve = ServeProcess(
                args, log_path=tmp_path / "serve-again.log", http_port=port, env={"VIDREC_API_TOKEN": TOKEN + "-new"},
            )
            wait_for(serve.healthy, 120, "the service back")

            def refused_token() -> list[str] | None:
                errors = browser.evaluate("window.vidrecOverlay.errors")
                return errors if errors and all(e.startswith("401 Unauthorized") for e in errors) else None

            errors = wait_for(refused_token, 30, "only the 401 error on the page\n" + browser.log())
            assert errors == ["401 Unauthorized: the service refused this page's access_token."], errors
            assert browser.page.is_visible("#errors")
            save_screenshot(browser, "overlay-401.png")
        assert serve.terminate() == 0, serve.log_text()[-4000:]
        assert "Traceback" not in serve.log_text()
    finally:
        serve.kill()
