"""Bad input against ONE running `vidrec serve`: a healthy camera publishes to Kafka while bad streams, bad HTTP
requests and bad gallery requests are thrown at the service one after another.

For every case: the API's answer (400 when the input is refused at add time; else 201 and the stream reaches
``failed`` or ``ended`` with a one-line ``reason`` naming the file or URL), no traceback in the service log, the
camera's results keep coming (results captured after the case ended are awaited), the service stays healthy and
its worker processes are never restarted. At the end SIGTERM drains and exits 0 with every camera result on
Kafka. `vidrec serve` with an absurd config is checked too (each its own short process: exit 1, one line).

The bad clips are made here from samples/bikes.mp4 with FFmpeg (Debian's). docs/robustness.md lists the cases.
Every wait polls with a deadline; deadlines are bounds for a slow, shared 2-core machine, not timing claims.
"""
from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stream.live import redact
from tests.cli_helpers import assert_one_line_error, run_vidrec, sample_gallery, ffmpeg, tool
from tests.serve_helpers import ServeProcess, TopicReader, free_port, wait_for

TOKEN = "bad-input-token-" + uuid.uuid4().hex
CAMERA = "cam"
POLL_S = 0.2  # API polls: the machine is shared, do not hammer it


# ---------------------------------------------------------------------------------------------- the clips ---


def frame_sizes(path: Path) -> list[tuple[int, int]]:
    """Every decoded frame's size, by ffprobe (the reference, independent of vidrec)."""
    out = subprocess.run(
        [tool("ffprobe"), "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=width,height",
         "-of", "json", str(path)], check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    return [(f["width"], f["height"]) for f in json.loads(out)["frames"]]


def make_clips(folder: Path, bikes_mp4: Path) -> dict[str, Path]:
    clips: dict[str, Path] = {}
    data = bikes_mp4.read_bytes()  # the bundled clip has its moov index at the end
    clips["truncated_moov_lost"] = folder / "cut_end.mp4"
    clips["truncated_moov_lost"].write_bytes(data[: len(data) // 2])
    faststart = folder / "faststart.mp4"  # moov in front: a cut keeps the index, decoding stops at the cut
    ffmpeg("-i", str(bikes_mp4), "-c", "copy", "-movflags", "+faststart", str(faststart))
    front = faststart.read_bytes()
    # The faults come at 30 % of the bytes (74 and 75 frames decode first): every frame before a fault goes through
    # inference and is checked on Kafka; cuts at 60 % and 50 % (140 and 115 frames) showed nothing further.
    clips["truncated_midstream"] = folder / "cut_middle.mp4"
    clips["truncated_midstream"].write_bytes(front[: int(len(front) * 0.3)])
    garbage = bytearray(front)
    middle = int(len(garbage) * 0.3)
    garbage[middle:middle + 60_000] = random.Random(7).randbytes(60_000)
    clips["corrupt_midstream"] = folder / "garbage_middle.mp4"
    clips["corrupt_midstream"].write_bytes(bytes(garbage))
    clips["zero_byte"] = folder / "empty.mp4"
    clips["zero_byte"].touch()
    clips["text_named_mp4"] = folder / "notes.mp4"
    clips["text_named_mp4"].write_text("this is a shopping list, not a video\n" * 40)
    clips["audio_only"] = folder / "tone.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(clips["audio_only"]))
    clips["no_images"] = folder / "empty_folder"
    clips["no_images"].mkdir()
    (clips["no_images"] / "readme.txt").write_text("no pictures here\n")
    # A resolution switch mid-stream: two H.264 segments of different sizes joined without re-encoding into one
    # MPEG-TS (SPS in-band; MP4 keeps one size in its sample description, TS carries the switch as it is).
    big, small = folder / "big.ts", folder / "small.ts"
    ffmpeg("-i", str(bikes_mp4), "-t", "2", "-an", "-c:v", "libx264", "-preset", "veryfast", str(big))
    ffmpeg("-ss", "2", "-i", str(bikes_mp4), "-t", "2", "-an", "-vf", "scale=320:136", "-c:v", "libx264",
           "-preset", "veryfast", str(small))
    clips["resolution_change"] = folder / "resize.ts"
    ffmpeg("-i", f"concat:{big}|{small}", "-c", "copy", str(clips["resolution_change"]))
    return clips


# ---------------------------------------------------------------------------------------------- the bench ---
@dataclass
class Bench:
    serve: ServeProcess
    reader: TopicReader
    port: int
    clips: dict[str, Path]
    index_dir: Path
    uploads: Path
    outside: Path
    workers: dict[str, Any]

    def log_offset(self) -> int:
        return self.serve.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with self.serve.log_path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")

    def assert_no_traceback_since(self, offset: int) -> None:
        text = self.log_since(offset)
        assert "Traceback" not in text and "Exception occurred" not in text, text[-4000:]

    def camera_results_after(self, t: float) -> int:
        return sum(1 for m in self.reader.of(CAMERA) if m.value["capture_time"] > t)

    def assert_camera_goes_on(self, since: float, what: str) -> None:
        """The healthy camera's results captured after ``since`` reach Kafka; the service answers healthy."""
        wait_for(lambda: self.camera_results_after(since) >= 5, 90, f"camera results captured after {what}",
                 every_s=POLL_S)
        assert self.serve.healthy(), f"unhealthy after {what}"
        workers = self.serve.api("GET", "/healthz").body["workers"]
        assert workers == self.workers, f"a worker process was replaced after {what}: {workers} != {self.workers}"

    def streams(self) -> set[str]:
        return set(self.serve.streams())


@pytest.fixture(scope="module")
def rtsp_base() -> str:
    value = os.environ.get("RTSP_BASE")
    assert value, 'RTSP_BASE is not set: start the services with `set -a; eval "$(scripts/services up)"; set +a`'
    return value.rstrip("/")


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, repo_dir: Path, bikes_mp4: Path, rtsp_base: str,
          kafka_bootstrap: str, model_dir: Path):
    base = tmp_path_factory.mktemp("bad-input-serve")
    clips_dir = base / "clips"
    clips_dir.mkdir()
    clips = make_clips(clips_dir, bikes_mp4)

    # A gallery for the gallery routes; the API may read images only under uploads/.
    gallery_dir = repo_dir / "samples" / "gallery"
    index_dir = base / "index"
    gallery = sample_gallery(index_dir)
    uploads, outside = base / "uploads", base / "outside"
    uploads.mkdir()
    outside.mkdir()
    shutil.copy(gallery_dir / "taxi_f36.jpg", outside / "secret.jpg")
    (uploads / "escape.jpg").symlink_to(outside / "secret.jpg")
    (uploads / "notes.jpg").write_text("not an image, whatever its name says\n")

    topic = f"vidrec-bad-input-{uuid.uuid4().hex[:8]}"
    port = free_port()
    # One ingest process: the bad streams share it with the camera, which must not notice them.
    serve = ServeProcess(
        ["--stream", f"{CAMERA}={rtsp_base}/clock", "--kafka", kafka_bootstrap, "--topic", topic, *gallery,
         "-o", f"Service.gallery_image_root={uploads}", "-o", "Service.ingest_processes=1"],
        log_path=base / "serve.log", http_port=port, env={"VIDREC_API_TOKEN": TOKEN},
    )
    reader: TopicReader | None = None
    try:
        wait_for(serve.healthy, 180, "healthy service (needs VIDREC_MODEL_DIR and scripts/services)", every_s=POLL_S)
        reader = TopicReader(kafka_bootstrap, topic)
        wait_for(lambda: reader.count(CAMERA) >= 5, 90, "the camera's first results on Kafka", every_s=POLL_S)
        workers = serve.api("GET", "/healthz").body["workers"]
        assert workers["inference"] and all(workers["ingest"]), workers
        yield Bench(serve=serve, reader=reader, port=port, clips=clips, index_dir=index_dir, uploads=uploads,
                    outside=outside, workers=workers)
    finally:
        serve.kill()
        if reader is not None:
            reader.close()


def raw_request(port: int, method: str, path: str, *, body: bytes | None = None, length: str | None = "auto",
                token: str | None = TOKEN, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly the headers given (``length=None``: no Content-Length at all)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        if token is not None:
            conn.putheader("Authorization", f"Bearer {token}")
        if length == "auto":
            length = None if body is None else str(len(body))
        if length is not None:
            conn.putheader("Content-Length", length)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        if body:
            conn.send(body)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def one_line_error(status_headers_body: tuple[int, dict[str, str], bytes]) -> str:
    _, headers, data = status_headers_body
    assert headers.get("content-type") == "application/json", headers
    body = json.loads(data)
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"], body
    return body["error"]


# ---------------------------------------------------------------------------------------------- bad streams --
# (case, what to add, fragment of the one-line reason, whether frames decode before the fault)
FAILING_STREAMS = [
    ("truncated-moov-lost", "clip:truncated_moov_lost", "MP4/MOV file without a readable index (moov atom missing)", False),
    ("truncated-midstream", "clip:truncated_midstream", "video ended after", True),
    ("corrupt-midstream", "clip:corrupt_midstream", "decode error at frame", True),
    ("zero-byte-file", "clip:zero_byte", "file is empty (0 bytes), not a video or image", False),
    ("text-named-mp4", "clip:text_named_mp4", "not a video or image file FFmpeg can read", False),
    ("audio-only-file", "clip:audio_only", "no video stream (streams: audio/aac)", False),
    ("folder-without-images", "clip:no_images", "folder has no images", False),
    ("unknown-host", "rtsp://no-such-host.invalid:8554/cam", "unknown host 'no-such-host.invalid'", False),
    ("audio-only-camera", "rtsp:/audio", "no video stream (streams: audio/pcm_alaw)", False),
    ("camera-404", "rtsp:/no-such-mount", "404 Not Found", False),
]


def _url(bench: Bench, rtsp_base: str, what: str) -> str:
    if what.startswith("clip:"):
        return str(bench.clips[what[len("clip:"):]])
    if what.startswith("rtsp:/") and not what.startswith("rtsp://"):
        return rtsp_base + what[len("rtsp:"):]
    return what


def _remove(bench: Bench, stream_id: str) -> None:
    removed = bench.serve.api("DELETE", f"/streams/{stream_id}", token=TOKEN)
    assert removed.status == 202, removed
    wait_for(lambda: bench.serve.stream(stream_id) is None, 60, f"{stream_id} gone from the API", every_s=POLL_S)


@pytest.fixture()
def cleanup(bench: Bench):
    """Streams a case added are removed even when it fails, so that one failure does not spill into the next."""
    added: list[str] = []
    yield added
    if bench.serve.alive():
        for stream_id in added:
            if bench.serve.stream(stream_id) is not None:
                bench.serve.api("DELETE", f"/streams/{stream_id}", token=TOKEN)
        wait_for(lambda: all(bench.serve.stream(sid) is None for sid in added), 60, "the case's streams removed",
                 every_s=POLL_S)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("case", "what", "fragment", "decodes_first"), FAILING_STREAMS,
                         ids=[case[0] for case in FAILING_STREAMS])
def test_a_bad_stream_fails_alone_with_one_line(bench: Bench, cleanup: list[str], rtsp_base: str, case: str, what: str,
                                                fragment: str, decodes_first: bool) -> None:
    url = _url(bench, rtsp_base, what)
    sid = f"bad-{case}"
    cleanup.append(sid)
    offset = bench.log_offset()
    added = bench.serve.api("POST", "/streams", {"id": sid, "url": url}, token=TOKEN)
    assert added.status == 201, added  # only a missing path or a malformed URL is known before trying
    view = wait_for(lambda: (v := bench.serve.stream(sid)) and v["state"] in ("failed", "ended") and v, 120,
                    f"{sid} failed", every_s=POLL_S)
    failed_at = time.time()
    assert view["state"] == "failed", view
    reason = view["reason"]
    assert reason.startswith(f"{url}: ") and fragment in reason and "\n" not in reason, reason
    if decodes_first:
        # The reason says how many frames came before the fault ("ended after N of", "error at frame N"): each of
        # them went through inference to Kafka, in order, and nothing after it.
        match = re.search(r"(?:ended after|error at frame) (\d+)", reason)
        assert match, reason
        n = int(match.group(1))
        assert 0 < n < 250, reason
        wait_for(lambda: bench.reader.count(sid) >= n, 120, f"{n} results of {sid} on Kafka", every_s=POLL_S)
        wait_for(lambda: (c := bench.serve.stream(sid)["counters"])["decoded"] == c["processed"] == n, 30,
                 f"{sid}'s final counters", every_s=POLL_S)
        assert [m.value["frame_index"] for m in bench.reader.of(sid)] == list(range(n))
    else:
        assert view["counters"]["decoded"] == 0 and bench.reader.count(sid) == 0, view["counters"]
    bench.assert_camera_goes_on(failed_at, f"the {case} stream failed")
    _remove(bench, sid)
    assert bench.streams() == {CAMERA}
    bench.assert_no_traceback_since(offset)


# (case, URL, fragment of the 400's one-line error)
REFUSED_AT_ADD = [
    ("missing-file", "clip-dir:/no_such_clip.mp4", "no_such_clip.mp4: no such file or directory"),
    ("wrong-scheme-ftp", "ftp://127.0.0.1/clips/bikes.mp4", "unsupported URL scheme 'ftp'"),
    ("scheme-typo", "rtps://127.0.0.1:8554/cam", "unsupported URL scheme 'rtps'"),
    ("port-not-a-number", "rtsp://admin:s3cret@127.0.0.1:abc/cam", "rtsp://admin:***@127.0.0.1:abc/cam: bad port"),
    ("port-out-of-range", "rtsp://127.0.0.1:99999/cam", "bad port (Port out of range 0-65535)"),
    ("camera-url-without-host", "rtsp:///cam", "rtsp:///cam: no host in the URL"),
    ("unclosed-ipv6-bracket", "rtsp://[::1/cam", "not a valid URL"),
]


@pytest.mark.parametrize(("case", "url", "fragment"), REFUSED_AT_ADD, ids=[case[0] for case in REFUSED_AT_ADD])
def test_a_stream_known_bad_at_add_time_is_400(bench: Bench, cleanup: list[str], case: str, url: str,
                                               fragment: str) -> None:
    url = url.replace("clip-dir:", str(bench.clips["zero_byte"].parent))
    cleanup.append(f"bad-{case}")
    offset = bench.log_offset()
    added = bench.serve.api("POST", "/streams", {"id": f"bad-{case}", "url": url}, token=TOKEN)
    assert added.status == 400, added
    error = added.body["error"]
    assert fragment in error and "\n" not in error, error
    assert "s3cret" not in error
    assert bench.streams() == {CAMERA}, "a refused stream is not added"
    assert bench.serve.api("GET", "/streams").status == 200
    assert bench.serve.healthy()
    bench.assert_no_traceback_since(offset)


@pytest.mark.timeout(300)
def test_a_resolution_change_midstream_loses_no_frame(bench: Bench, cleanup: list[str]) -> None:
    cleanup.append("resize")
    clip = bench.clips["resolution_change"]
    sizes = frame_sizes(clip)
    assert sizes == [(640, 272)] * 50 + [(320, 136)] * 50, "the clip really switches size once (ffprobe)"
    offset = bench.log_offset()
    added = bench.serve.api("POST", "/streams", {"id": "resize", "url": str(clip)}, token=TOKEN)
    assert added.status == 201, added
    wait_for(lambda: (v := bench.serve.stream("resize")) and v["state"] in ("ended", "failed"), 120, "resize ended",
             every_s=POLL_S)
    view = bench.serve.stream("resize")
    assert view["state"] == "ended", view
    ended_at = time.time()
    wait_for(lambda: bench.reader.count("resize") >= len(sizes), 120, "a result for every frame of resize",
             every_s=POLL_S)
    results = [m.value for m in bench.reader.of("resize")]
    assert [r["frame_index"] for r in results] == list(range(len(sizes)))
    assert [(r["width"], r["height"]) for r in results] == sizes, "each result carries its own frame's size"
    for r in results:  # boxes are in the pixels of their own frame
        for obj in r["objects"]:
            x1, y1, x2, y2 = obj["bbox"]
            assert 0 <= x1 <= x2 <= r["width"] and 0 <= y1 <= y2 <= r["height"], (r["frame_index"], obj)
    assert any(r["objects"] for r in results[50:]), "the small frames were really looked at"
    # The ingest and inference counters come with the workers' periodic reports: wait for both to be final.
    n = len(sizes)
    counters = wait_for(lambda: (c := bench.serve.stream("resize")["counters"])["processed"] == c["decoded"] == n
                        and c["written"] == c["taken"] == n and c, 30, "resize's final counters", every_s=POLL_S)
    assert sum(counters["dropped_ring"].values()) == 0 and counters["inference_errors"] == 0
    bench.assert_camera_goes_on(ended_at, "the resolution change")
    _remove(bench, "resize")
    bench.assert_no_traceback_since(offset)


# ---------------------------------------------------------------------------------------------- bad HTTP -----
def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


# (case, method, path, body, Content-Length ("auto", None or a literal), token, status, error fragment)
BAD_REQUESTS = [
    ("malformed-json", "POST", "/streams", b'{"id": "x", "url": ', "auto", TOKEN, 400, "body is not JSON"),
    ("json-array-body", "POST", "/streams", _json([{"id": "x", "url": "/x"}]), "auto", TOKEN, 400, "must be a JSON object, got list"),
    ("json-string-body", "POST", "/streams", _json("rtsp://h/x"), "auto", TOKEN, 400, "must be a JSON object, got str"),
    ("not-utf8-body", "POST", "/streams", b"\xff\xfe{}", "auto", TOKEN, 400, "body is not JSON"),
    ("empty-body", "POST", "/streams", b"", "0", TOKEN, 400, "body is not JSON"),
    ("unknown-field", "POST", "/streams", _json({"id": "x", "url": "rtsp://h/x", "fps": 5}), "auto", TOKEN, 400, "fps: unknown field"),
    ("missing-url", "POST", "/streams", _json({"id": "x"}), "auto", TOKEN, 400, "url: missing"),
    ("url-not-a-string", "POST", "/streams", _json({"id": "x", "url": ["rtsp://h/x"]}), "auto", TOKEN, 400, "url:"),
    ("bad-stream-id", "POST", "/streams", _json({"id": "../x", "url": "rtsp://h/x"}), "auto", TOKEN, 400, "id:"),
    ("every-nth-zero", "POST", "/streams", _json({"id": "x", "url": "rtsp://h/x", "every_nth": 0}), "auto", TOKEN, 400, "every_nth"),
    ("body-over-64KiB", "POST", "/streams", b" " * (65 * 1024), "auto", TOKEN, 413, "over the 65536-byte limit"),
    ("declared-1GB-body-not-read", "POST", "/streams", None, str(10**9), TOKEN, 413, "body of 1000000000 bytes"),
    ("missing-content-length", "POST", "/streams", None, None, TOKEN, 411, "Content-Length required"),
    ("chunked-body", "POST", "/streams", None, None, TOKEN, 411, "Content-Length required"),
    ("no-token", "POST", "/streams", _json({"id": "x", "url": "rtsp://h/x"}), "auto", None, 401, "missing bearer token"),
    ("wrong-token", "DELETE", f"/streams/{CAMERA}", None, "auto", "wrong", 401, "wrong bearer token"),
    ("delete-unknown-stream", "DELETE", "/streams/nope", None, "auto", TOKEN, 404, "no stream 'nope'"),
    ("get-unknown-stream", "GET", "/streams/nope", None, "auto", None, 404, "no stream 'nope'"),
    ("stream-id-traversal", "GET", "/streams/..%2F..%2Fetc%2Fpasswd", None, "auto", None, 404, "no stream '../../etc/passwd'"),
    ("overlay-file-traversal", "GET", "/overlay/..%2Fhttp_api.py", None, "auto", None, 404, "no overlay file '../http_api.py'"),
    ("frame-index-not-a-number", "GET", f"/streams/{CAMERA}/frame.jpg?index=abc", None, "auto", None, 400, "index must be an integer"),
    ("unknown-route", "GET", "/nothing/here", None, "auto", None, 404, "no route /nothing/here"),
    ("wrong-method-put", "PUT", "/streams", None, "auto", TOKEN, 405, "PUT not allowed here (allowed: GET, POST)"),
    ("wrong-method-delete-all", "DELETE", "/streams", None, "auto", TOKEN, 405, "allowed: GET, POST"),
    ("wrong-method-gallery", "GET", "/gallery/items", None, "auto", None, 405, "allowed: POST, DELETE"),
]


@pytest.mark.parametrize(("case", "method", "path", "body", "length", "token", "status", "fragment"), BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_a_bad_request_gets_a_one_line_json_error(bench: Bench, case: str, method: str, path: str, body: bytes | None,
                                                  length: str | None, token: str | None, status: int,
                                                  fragment: str) -> None:
    offset = bench.log_offset()
    headers = {"Transfer-Encoding": "chunked"} if case == "chunked-body" else None
    answer = raw_request(bench.port, method, path, body=body, length=length, token=token, headers=headers)
    assert answer[0] == status, (answer[0], answer[2][:300])
    assert fragment in one_line_error(answer)
    if status == 405:
        assert answer[1].get("allow"), answer[1]
    if status == 401:
        assert answer[1].get("www-authenticate") == 'Bearer realm="vidrec"'
    if status == 413:
        assert answer[1].get("connection") == "close", "the unread body ends the connection"
    assert bench.streams() == {CAMERA}, "a refused request changes nothing"
    assert bench.serve.healthy()
    bench.assert_no_traceback_since(offset)


# (case, raw request, status, who answers): "api" is vidrec's JSON error, with the limits the API always had;
# "server" is uvicorn's own plain-text refusal of what is no HTTP request at all, before any route runs.
GARBLED_REQUESTS = [
    # A request line over 64 KiB.
    ("request-line-over-64KiB", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "api"),
    # One header line over 64 KiB.
    ("header-line-over-64KiB", b"GET /streams HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431, "api"),
    # More header lines than the 100 the API takes.
    ("over-100-headers", b"GET /streams HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(120))
     + b"\r\n", 431, "api"),
    # A method no route knows.
    ("unknown-method", b"BREW /streams HTTP/1.1\r\nHost: x\r\n\r\n", 501, "api"),
    # A TLS hello on the plain-HTTP port: not HTTP, refused by the server before the application sees it.
    ("tls-on-plain-http", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n", 400, "server"),
    # A request line without a target or version.
    ("garbled-request-line", b"HELLO\r\n\r\n", 400, "server"),
    # A Content-Length that is no number: the server cannot tell where the body ends.
    ("content-length-not-a-number", b"POST /streams HTTP/1.1\r\nHost: x\r\nContent-Length: two\r\n\r\n{}", 400, "server"),
]


@pytest.mark.parametrize(("case", "request_bytes", "status", "who"), GARBLED_REQUESTS,
                         ids=[case[0] for case in GARBLED_REQUESTS])
def test_an_oversized_or_garbled_request_is_refused_by_the_http_layer(bench: Bench, case: str, request_bytes: bytes,
                                                                      status: int, who: str) -> None:
    offset = bench.log_offset()
    with socket.create_connection(("127.0.0.1", bench.port), timeout=30) as sock:
        sock.sendall(request_bytes)
        data = b""
        while chunk := sock.recv(65536):  # these answers close the connection
            data += chunk
    status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
    assert status_line.startswith(f"HTTP/1.1 {status} "), data[:300]
    head, body = data.split(b"\r\n\r\n", 1)
    if who == "api":
        error = json.loads(body)["error"]  # the API's own error shape
        assert error and "\n" not in error, body[:300]
    else:
        assert b"content-type: text/plain" in head.lower() and body == b"Invalid HTTP request received.", data[:300]
    assert bench.serve.healthy()
    bench.assert_no_traceback_since(offset)


def test_a_deeply_nested_json_body_is_400(bench: Bench) -> None:
    offset = bench.log_offset()
    answer = raw_request(bench.port, "POST", "/streams", body=b"[" * 5000 + b"]" * 5000)
    assert bench.serve.healthy() and bench.streams() == {CAMERA}
    assert answer[0] == 400, (answer[0], answer[2][:300])
    assert "body is not JSON" in one_line_error(answer)
    bench.assert_no_traceback_since(offset)


def test_a_negative_content_length_is_400(bench: Bench) -> None:
    # Refused by the server before any route runs (it cannot tell where the body ends): its plain-text 400.
    answer = raw_request(bench.port, "POST", "/streams", body=b"{}", length="-5")
    assert bench.serve.healthy() and bench.streams() == {CAMERA}
    assert answer[0] == 400, (answer[0], answer[2][:300])
    assert answer[1].get("connection") == "close" and answer[2] == b"Invalid HTTP request received.", answer


# ---------------------------------------------------------------------------------------------- gallery ------
def _index_files(bench: Bench) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bench.index_dir.iterdir())}


GALLERY_REFUSALS = [
    # (case, method, body, status, fragment); "{outside}" is a folder outside the allowed root
    ("dotdot-traversal", "POST", {"path": "../../../../etc/passwd", "label": "x"}, 400, "is outside the gallery image root"),
    ("absolute-path-outside", "POST", {"path": "/etc/passwd", "label": "x"}, 400, "is outside the gallery image root"),
    ("absolute-image-outside", "POST", {"path": "{outside}/secret.jpg", "label": "x"}, 400, "is outside the gallery image root"),
    ("symlink-out-of-root", "POST", {"path": "escape.jpg", "label": "x"}, 400, "is outside the gallery image root"),
    ("missing-image", "POST", {"path": "nope.jpg", "label": "x"}, 400, "no such file under the gallery image root"),
    ("text-named-jpg", "POST", {"path": "notes.jpg", "label": "x"}, 400, "is not an image"),
    ("label-with-tab", "POST", {"path": "notes.jpg", "label": "a\tb"}, 400, "label must be"),
    ("items-not-a-list", "POST", {"items": "escape.jpg"}, 400, "items must be a list"),
    ("unknown-key", "POST", {"path": "notes.jpg", "label": "x", "force": True}, 400, "unknown key 'force'"),
    ("remove-unknown-label", "DELETE", {"labels": ["unicorn"]}, 404, "label 'unicorn' is not in the gallery"),
]


@pytest.mark.parametrize(("case", "method", "body", "status", "fragment"), GALLERY_REFUSALS,
                         ids=[case[0] for case in GALLERY_REFUSALS])
def test_a_refused_gallery_change_changes_nothing(bench: Bench, case: str, method: str, body: dict, status: int,
                                                  fragment: str) -> None:
    body = json.loads(json.dumps(body).replace("{outside}", str(bench.outside)))
    before = _index_files(bench)
    offset = bench.log_offset()
    answer = raw_request(bench.port, method, "/gallery/items", body=_json(body))
    assert answer[0] == status, (answer[0], answer[2][:300])
    error = one_line_error(answer)
    assert fragment in error, error
    assert str(bench.outside) not in error.replace(body.get("path", ""), ""), "nothing told about files outside"
    assert _index_files(bench) == before
    info = bench.serve.api("GET", "/gallery").body
    assert (info["version"], info["entries"]) == (1, 3), info
    bench.assert_no_traceback_since(offset)


# ---------------------------------------------------------------------------------------------- the end ------
@pytest.mark.timeout(300)
def test_the_camera_published_throughout_and_the_service_drains(bench: Bench) -> None:
    serve = bench.serve
    start = time.time()
    bench.assert_camera_goes_on(start, "every bad case")
    assert serve.streams()[CAMERA]["state"] in ("live", "stalled", "reconnecting")
    code = serve.terminate()
    assert code == 0, serve.log_text()[-4000:]
    final = serve.final()
    assert final["exit_code"] == 0
    (camera,) = [s for s in final["streams"] if s["id"] == CAMERA]
    processed = camera["counters"]["processed"]
    assert camera["sinks"]["kafka"] == {"written": processed, "dropped": 0, "errors": 0}, camera
    wait_for(lambda: bench.reader.count(CAMERA) >= processed, 60, f"{processed} camera results on Kafka", every_s=POLL_S)
    results = [m.value for m in bench.reader.of(CAMERA)]
    assert len(results) == processed
    # One inference run from start to end (never restarted): seq counts 0, 1, 2... without a gap.
    assert {r["run_id"] for r in results} == {final["run_id"]}
    assert [r["seq"] for r in results] == list(range(processed))
    indices = [r["frame_index"] for r in results]
    assert all(a < b for a, b in zip(indices, indices[1:]))
    text = serve.log_path.read_bytes().decode("utf-8", "replace")
    assert "Traceback" not in text and "Exception occurred" not in text, text[-4000:]


# ---------------------------------------------------------------------------------------------- absurd config -
def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# (case, arguments of `vidrec serve` besides a good file stream, fragments of the one error line); "{tmp}/NAME:TEXT"
# is a file NAME with TEXT in the test's folder
ABSURD_CONFIGS = [
    ("max-batch-0", ["-o", "Service.max_batch=0"], ["-o Service.max_batch=0", "Service.max_batch", ">= 1"]),
    ("batch-size-0", ["-o", "Global.batch_size=0"], ["-o Global.batch_size=0", "Global.batch_size", ">= 1"]),
    ("negative-threshold", ["-o", "Global.threshold=-0.1"], ["Global.threshold", ">= 0"]),
    ("score-thres-above-1-ip", ["-o", "IndexProcess.dist_type=IP", "-o", "IndexProcess.score_thres=1.5"],
     ["-o IndexProcess.score_thres=1.5", "IndexProcess.score_thres", "<= 1"]),
    ("negative-live-age", ["-o", "Service.live_max_age_ms=-5"], ["Service.live_max_age_ms", "> 0"]),
    ("unknown-key-in-yaml", ["--config", "{tmp}/serve.yaml:Service:\n  max_bacth: 4\n"],
     ["serve.yaml", "Service.max_bacth", "unknown key", "max_batch"]),
    ("unknown-stream-field-in-yaml", ["--config", "{tmp}/serve.yaml:streams:\n  - {id: a, url: x.mp4, fps: 5}\n"],
     ["serve.yaml", "streams.0.fps", "unknown key"]),
    ("ftp-stream-in-yaml", ["--config", "{tmp}/serve.yaml:streams:\n  - {id: a, url: 'ftp://h/x.mp4'}\n"],
     ["stream 'a'", "ftp://h/x.mp4", "unsupported URL scheme 'ftp'"]),
    ("bad-port-on-command-line", ["--stream", "door=rtsp://admin:s3cret@10.0.0.5:abc/1"],
     ["stream 'door'", "rtsp://admin:***@10.0.0.5:abc/1", "bad port"]),
]


@pytest.mark.parametrize(("case", "args", "fragments"), ABSURD_CONFIGS, ids=[case[0] for case in ABSURD_CONFIGS])
def test_serve_with_an_absurd_config_exits_1_naming_the_key(tmp_path: Path, bikes_mp4: Path, case: str,
                                                             args: list[str], fragments: list[str]) -> None:
    resolved: list[str] = []
    for arg in args:
        if arg.startswith("{tmp}/"):
            name, _, text = arg[len("{tmp}/"):].partition(":")
            arg = str(_write(tmp_path, name, text))
        resolved.append(arg)
    proc = run_vidrec("serve", "--stream", f"file={bikes_mp4}", *resolved, timeout=120)
    assert_one_line_error(proc, *fragments)
    assert "s3cret" not in proc.stderr


# ---------------------------------------------------------------------------------------------- the helpers ----
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:s3cret@10.0.0.5:554/1", "rtsp://admin:***@10.0.0.5:554/1"),
        ("rtsp://admin:s3cret@10.0.0.5:abc/1", "rtsp://admin:***@10.0.0.5:abc/1"),  # raised ValueError before
        ("rtsp://admin:s3cret@10.0.0.5:99999/1", "rtsp://admin:***@10.0.0.5:99999/1"),  # raised ValueError before
        ("rtsp://admin:s3cret@[::1]:8554/cam", "rtsp://admin:***@[::1]:8554/cam"),  # lost its brackets before
        ("rtsp://admin:s3cret@[::1/cam", "rtsp://***@[::1/cam"),  # unparsable: everything before the host hidden
        ("rtsp://u:p@ss@cam.local/1", "rtsp://u:***@cam.local/1"),  # an '@' inside the password
        ("rtsp://admin@cam.local/1", "rtsp://admin@cam.local/1"),  # no password, nothing to hide
        ("rtsp://cam.local/a@b", "rtsp://cam.local/a@b"),  # an '@' in the path is no credential
        ("/videos/a@b.mp4", "/videos/a@b.mp4"),
    ],
)
def test_urls_are_shown_without_their_password_and_never_raise(url: str, shown: str) -> None:
    assert redact(url) == shown
