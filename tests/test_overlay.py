"""The live overlay page (GET /overlay) in a real browser against the real service.

`vidrec serve` runs as a subprocess on the real test RTSP server's /bikes (real street footage), with the real
Kafka and Redis; Debian's chromium, driven by Playwright, opens the page. The page must draw, on the snapshot
it shows, exactly the boxes that Kafka carries for that frame (same frame_index), scaled from frame pixels to
the snapshot, and really paint them on the canvas. With ``Service.http_read_auth`` every route but /healthz
needs the token, which the page passes on from its own ``?access_token=``; a lost service and a refused token
show on the page. Screenshots go to test-artifacts/ (overlay.png also to docs/ with VIDREC_UPDATE_DOCS=1).

Every wait polls a condition with a deadline (tests/polling.py); deadlines are bounds for a slow machine.
"""
from __future__ import annotations

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
# bikes.mp4 is 640x272; snapshots scaled to 480 wide make the canvas/frame ratio 0.75, not 1
SNAPSHOT_WIDTH = 480
BBOX_TOLERANCE_PX = 0.5
# the page draws its own colours over the JPEG: a painted edge pixel is that colour, give or take rounding
COLOR_TOLERANCE = 2

# One consistent reading of the page (JavaScript runs one task at a time, so nothing is redrawn meanwhile):
# what it says it drew, the canvas pixels on each box's edges, and the texts around it. null until a frame with
# a result and at least one object detected is drawn.
READ_DRAWN = """(want) => {
  const o = window.vidrecOverlay;
  const d = o && o.drawn;
  if (!d || d.stream_id !== want.stream || !d.has_result) return null;
  if (!d.boxes.some((b) => b.det_class !== null && (!want.labelled || b.label !== null))) return null;
  const canvas = document.getElementById("canvas");
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  const pixel = (x, y) => Array.from(ctx.getImageData(
    Math.min(W - 1, Math.max(0, Math.floor(x))), Math.min(H - 1, Math.max(0, Math.floor(y))), 1, 1).data);
  const edges = d.boxes.map((b) => {
    const [x, y, w, h] = b.canvas_rect;
    const points = [];
    for (const t of [0.25, 0.5, 0.75]) points.push([x + w * t, y], [x + w * t, y + h], [x, y + h * t], [x + w, y + h * t]);
    return points.map(([px, py]) => pixel(px, py));
  });
  const text = (id) => document.getElementById(id).textContent;
  return {
    drawn: JSON.parse(JSON.stringify(d)), canvas: [W, H], edges, colors: o.colors, resultsSeen: o.resultsSeen,
    errors: o.errors.slice(), state: text("state"), latencyShown: text("latency-shown"),
    shownFrame: text("shown-frame"), picker: document.getElementById("stream").value,
  };
}"""


@pytest.fixture(scope="module")
def rtsp_base() -> str:
    value = os.environ.get("RTSP_BASE")
    assert value, 'RTSP_BASE is not set: start the services with `set -a; eval "$(scripts/services up)"; set +a`'
    return value.rstrip("/")


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


def assert_page_drew_the_kafka_result(view: dict[str, Any], message: dict[str, Any], snapshot_width: int) -> None:
    """The drawn boxes are the Kafka result's boxes for that frame, scaled to the canvas and painted on it."""
    drawn = view["drawn"]
    assert (drawn["frame_width"], drawn["frame_height"]) == (message["width"], message["height"])
    canvas_w, canvas_h = view["canvas"]
    assert (drawn["canvas_width"], drawn["canvas_height"]) == (canvas_w, canvas_h)
    assert canvas_w == min(snapshot_width, message["width"]), "the canvas is the snapshot's size"
    assert canvas_h == round(message["height"] * canvas_w / message["width"])
    sx, sy = canvas_w / message["width"], canvas_h / message["height"]
    objects = message["objects"]
    assert len(drawn["boxes"]) == len(objects), (drawn["boxes"], objects)
    for box, obj in zip(drawn["boxes"], objects):
        assert box["bbox"] == pytest.approx(obj["bbox"], abs=BBOX_TOLERANCE_PX), (box, obj)
        x1, y1, x2, y2 = obj["bbox"]
        expected = [x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy]
        assert box["canvas_rect"] == pytest.approx(expected, abs=BBOX_TOLERANCE_PX), (box, expected)
        assert box["label"] == obj["label"] and box["det_class"] == obj["det_class"], (box, obj)
        assert box["kind"] == ("unlabelled" if obj["label"] is None else "labelled")
    # The boxes are really painted: most sampled pixels on each rectangle's edges have its colour (a crossing
    # box of the other colour may cover a few).
    for box, edge_pixels in zip(drawn["boxes"], view["edges"]):
        color = view["colors"][box["kind"]]
        painted = [p for p in edge_pixels
                   if p[3] == 255 and all(abs(c - e) <= COLOR_TOLERANCE for c, e in zip(p[:3], color))]
        assert len(painted) >= len(edge_pixels) // 2, (box, color, edge_pixels)


def kafka_result(reader: TopicReader, stream_id: str, frame_index: int) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return next((m.value for m in reader.of(stream_id) if m.value["frame_index"] == frame_index), None)

    return wait_for(find, 30, f"the Kafka result of {stream_id} frame {frame_index}")


def shown_latency_ms(text: str) -> float:
    number, unit = text.split()
    assert unit == "ms", text
    return float(number)


def save_screenshot(browser: Browser, name: str, *, docs: bool = False) -> Path:
    """Kept in test-artifacts/; with VIDREC_UPDATE_DOCS=1 a ``docs`` one also replaces docs/<name>."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    browser.page.screenshot(path=str(path))
    if docs and os.environ.get("VIDREC_UPDATE_DOCS") == "1":
        shutil.copyfile(path, REPO / "docs" / name)
    return path


@pytest.mark.timeout(300)
def test_the_page_draws_the_kafka_boxes_of_the_frame_it_shows(
    tmp_path: Path, rtsp_base: str, kafka_bootstrap: str, redis_url: str
) -> None:
    index_dir = tmp_path / "index"
    gallery = sample_gallery(index_dir)
    topic = f"vidrec-overlay-{uuid.uuid4().hex[:8]}"
    serve = ServeProcess(
        ["--stream", f"bikes={rtsp_base}/bikes", "--kafka", kafka_bootstrap, "--topic", topic, "--redis", redis_url,
         "-o", f"Redis.key_prefix=vo{uuid.uuid4().hex[:6]}", "-o", f"Service.overlay_max_width={SNAPSHOT_WIDTH}",
         *gallery],
        log_path=tmp_path / "serve.log", http_port=free_port(),
    )
    reader: TopicReader | None = None
    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        reader = TopicReader(kafka_bootstrap, topic)
        with chromium(tmp_path / "profile") as browser:
            browser.page.goto(f"{serve.base}/overlay?stream=bikes")

            # 1. A frame with detected objects drawn: its boxes are Kafka's for that frame_index.
            view = wait_for(lambda: browser.evaluate(READ_DRAWN, {"stream": "bikes", "labelled": False}), 90,
                            "a drawn frame with objects on the page\n" + browser.log())
            screenshot = save_screenshot(browser, "overlay.png", docs=True)
            message = kafka_result(reader, "bikes", view["drawn"]["frame_index"])
            assert_page_drew_the_kafka_result(view, message, SNAPSHOT_WIDTH)
            assert view["picker"] == "bikes"
            assert view["shownFrame"] == f"#{message['frame_index']}"
            assert shown_latency_ms(view["latencyShown"]) == pytest.approx(message["latency_ms"]["total"], abs=0.5)
            assert view["state"].split()[1] in STREAM_STATES, view["state"]
            assert view["resultsSeen"] >= 1
            assert view["errors"] == [], view["errors"]
            assert screenshot.stat().st_size > 0

            # 2. A recognised object (the gallery holds crops of this footage): label and its colour.
            view = wait_for(lambda: browser.evaluate(READ_DRAWN, {"stream": "bikes", "labelled": True}), 90,
                            "a drawn frame with a recognised object\n" + browser.log())
            message = kafka_result(reader, "bikes", view["drawn"]["frame_index"])
            assert_page_drew_the_kafka_result(view, message, SNAPSHOT_WIDTH)
            assert any(box["label"] in ("taxi", "cyclist", "parked bicycle") for box in view["drawn"]["boxes"])
            save_screenshot(browser, "overlay.png", docs=True)

            # 3. A stream the service does not have: the page says so instead of drawing anything.
            browser.page.goto(f"{serve.base}/overlay?stream=nope")
            errors = wait_for(lambda: len(e := browser.evaluate("window.vidrecOverlay.errors")) >= 2 and e, 30,
                              "the page's errors for an unknown stream\n" + browser.log())
            assert any('"nope" is not configured' in e for e in errors), errors
            assert any("result stream refused" in e and "nope" in e for e in errors), errors
            assert browser.evaluate("window.vidrecOverlay.drawn") is None
            assert browser.page.is_visible("#errors")
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
    args = ["--stream", f"bikes={rtsp_base}/bikes", "--redis", redis_url,
            "-o", f"Redis.key_prefix=vo{uuid.uuid4().hex[:6]}", "-o", "Service.http_read_auth=True"]
    serve = ServeProcess(args, log_path=tmp_path / "serve.log", http_port=port, env={"VIDREC_API_TOKEN": TOKEN})
    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        base = serve.base

        # 1. Without the token (or with a wrong one) every GET but /healthz is refused.
        assert get(base, "/healthz")[0] == 200
        for path in ("/overlay", "/overlay/overlay.js", "/overlay/overlay.css", "/streams", "/streams/bikes",
                     "/streams/bikes/frame.jpg", "/streams/bikes/events"):
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
            response = browser.page.goto(f"{base}/overlay?stream=bikes")
            assert response is not None and response.status == 401
            assert "token" in browser.page.inner_text("body")
            requests.clear()
            refused.clear()

            browser.page.goto(f"{base}/overlay?stream=bikes&access_token={TOKEN}")
            view = wait_for(lambda: browser.evaluate(READ_DRAWN, {"stream": "bikes", "labelled": False}), 90,
                            "a drawn frame with objects on the page\n" + browser.log())
            assert view["errors"] == [], view["errors"]
            assert not refused, refused
            service_requests = [url for url in requests if url.startswith(base)]
            paths = {url[len(base):].split("?")[0] for url in service_requests}
            assert {"/overlay", "/overlay/overlay.js", "/overlay/overlay.css", "/streams",
                    "/streams/bikes/events", "/streams/bikes/frame.jpg"} <= paths, paths
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
