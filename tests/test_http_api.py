"""The HTTP layer alone (workers/http_app.py) at the ASGI level: routing, refusals, auth rules and body limits,
against a small in-process service object that keeps streams in a dict (what the service does with a request is
tested end to end in test_serve.py, test_bad_input_serve.py and the others; here, only what HTTP makes of it).
The OpenAPI description is checked against the route table in workers/http_api.py's docstring and validated as
OpenAPI; ``test_real_answers_match_the_description`` checks a real `vidrec serve`'s answers against the models."""
from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from starlette.testclient import TestClient

from workers import http_api, http_schemas
from workers.http_api import ApiServer
from workers.service_errors import Conflict, Invalid, NotFound, Unavailable

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class DictService:
    """A StreamService keeping ids and URLs in a dict; refuses with the service's kinds as the supervisor does."""

    def __init__(self) -> None:
        self.streams: dict[str, str] = {"cam": "rtsp://h/cam"}
        self.phase = "serving"

    def health(self) -> dict[str, Any]:
        return {"status": "ok" if self.phase == "serving" else self.phase}

    def list_streams(self) -> list[dict[str, Any]]:
        return [self.get_stream(stream_id) for stream_id in self.streams]

    def sinks(self) -> list[dict[str, Any]]:
        return []

    def get_stream(self, stream_id: str) -> dict[str, Any]:
        if stream_id not in self.streams:
            raise NotFound(f"no stream {stream_id!r}")
        return {"id": stream_id, "url": self.streams[stream_id]}

    def add_stream(self, body: dict[str, Any]) -> dict[str, Any]:
        if set(body) - {"id", "url"}:
            raise Invalid(f"{sorted(set(body) - {'id', 'url'})[0]}: unknown field")
        if "url" not in body:
            raise Invalid("url: missing")
        if body["id"] in self.streams:
            raise Conflict(f"stream {body['id']!r} exists")
        if self.phase != "serving":
            raise Unavailable(f"service is {self.phase}")
        self.streams[body["id"]] = body["url"]
        return self.get_stream(body["id"])

    def remove_stream(self, stream_id: str) -> dict[str, Any]:
        self.get_stream(stream_id)
        del self.streams[stream_id]
        return {"id": stream_id, "removing": True}

    def metrics(self) -> bytes:
        return b"vidrec_streams 1\n"

    def recognitions(self) -> dict[str, Any]:
        return {"labels": [], "total": 0}

    def snapshot(self, stream_id: str, index: int | None = None) -> Any:
        self.get_stream(stream_id)
        raise NotFound(f"stream {stream_id!r}: no snapshot yet")

    def track_events(self, after: int | None, limit: int) -> dict[str, Any]:
        return {"events": [], "next": after or 0}

    def thumbnail(self, stream_id: str, run_id: str, track_id: int) -> bytes:
        raise NotFound(f"no thumbnail of track {track_id} of stream {stream_id!r} in run {run_id!r}")


def _client(host: str = "127.0.0.1", token: str | None = TOKEN, read_auth: bool = False) -> Iterator[TestClient]:
    api = ApiServer(host, 0, DictService(), token=token, read_auth=read_auth)
    try:
        with TestClient(api.app, base_url="http://vidrec") as client:
            yield client
    finally:
        api.close()


@pytest.fixture()
def client() -> Iterator[TestClient]:
    yield from _client()


def _error(response: Any) -> str:
    assert response.headers["content-type"] == "application/json", response.headers
    body = response.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"], body
    return body["error"]


# (method, path, body, headers, status, error)
REFUSALS = [
    # an unknown route names the path as sent
    ("GET", "/nothing/here", None, {}, 404, "no route /nothing/here"),
    # a wrong method lists the route's methods in a fixed order
    ("PUT", "/streams", None, AUTH, 405, "PUT not allowed here (allowed: GET, POST)"),
    # the same with the methods of two routes on one path
    ("GET", "/gallery/items", None, {}, 405, "GET not allowed here (allowed: POST, DELETE)"),
    # HEAD is no GET here
    ("OPTIONS", "/streams/cam", None, {}, 405, "OPTIONS not allowed here (allowed: GET, DELETE)"),
    # a method no route knows at all
    ("BREW", "/streams", None, {}, 501, "Unsupported method ('BREW')"),
    # %2F stays inside the stream id, decoded once
    ("GET", "/streams/..%2F..%2Fetc%2Fpasswd", None, {}, 404, "no stream '../../etc/passwd'"),
    # %252F is a literal %2F in the id, not a slash
    ("GET", "/streams/a%252Fb", None, {}, 404, "no stream 'a%2Fb'"),
    # overlay files are looked up by name, never joined to a path
    ("GET", "/overlay/..%2Fhttp_api.py", None, {}, 404, "no overlay file '../http_api.py'"),
    # the service's refusal kinds map to their status codes
    ("POST", "/streams", b'{"id": "cam", "url": "x"}', AUTH, 409, "stream 'cam' exists"),
    ("POST", "/streams", b'{"id": "x", "fps": 5}', AUTH, 400, "fps: unknown field"),
    # bodies: JSON objects only, with the parser's own message
    ("POST", "/streams", b'{"id": ', AUTH, 400, "body is not JSON: Expecting value: line 1 column 8 (char 7)"),
    ("POST", "/streams", b"[1]", AUTH, 400, "body must be a JSON object, got list"),
    ("POST", "/streams", b"[" * 5000 + b"]" * 5000, AUTH, 400, "body is not JSON: nested too deeply"),
    ("POST", "/streams", b"\xff{}", AUTH, 400, "body is not JSON: 'utf-8' codec can't decode byte 0xff"),
    # over the 64 KiB limit: refused from the declared length
    ("POST", "/streams", b" " * (65 * 1024), AUTH, 413, "body of 66560 bytes is over the 65536-byte limit"),
    # a frame index must be a number
    ("GET", "/streams/cam/frame.jpg?index=abc", None, {}, 400, "index must be an integer, got 'abc'"),
    # track events: after and limit are integers within their bounds
    ("GET", "/track-events?after=x", None, {}, 400, "after must be an integer, got 'x'"),
    ("GET", "/track-events?after=-1", None, {}, 400, "after must be >= 0, got -1"),
    ("GET", "/track-events?limit=501", None, {}, 400, "limit must be within 1..500, got 501"),
    ("GET", "/track-events?limit=0", None, {}, 400, "limit must be within 1..500, got 0"),
    # a thumbnail's track id is a number; one not kept is 404, its stream id decoded once
    ("GET", "/thumbnails/cam/r1/x", None, {}, 400, "track_id must be an integer, got 'x'"),
    ("GET", "/thumbnails/a%2Fb/r1/7", None, {}, 404, "no thumbnail of track 7 of stream 'a/b' in run 'r1'"),
    # a gallery route without a gallery
    ("GET", "/gallery", None, {}, 404, "no gallery: IndexProcess.index_dir is not set"),
    # the overlay's events need Redis
    ("GET", "/streams/cam/events", None, {}, 503, "the overlay's results come from Redis: Redis.url is not set"),
    ("GET", "/stream-events?stream=cam", None, {}, 503, "the overlay's results come from Redis: Redis.url is not set"),
    # one feed for many streams: at least one, none empty, at most 64 (a repeat counts once), every one known
    ("GET", "/stream-events", None, {}, 400, "name the streams to follow: ?stream=ID (repeat it for more streams)"),
    ("GET", "/stream-events?stream=cam&stream=", None, {}, 400, "stream must not be empty"),
    ("GET", "/stream-events?" + "&".join(f"stream=s{i}" for i in range(65)), None, {}, 400,
     "at most 64 streams per feed, got 65"),
    ("GET", "/stream-events?stream=cam&stream=nope&stream=a%2Fb", None, {}, 404, "no stream 'nope'"),
    ("GET", "/stream-events?stream=a%2Fb", None, {}, 404, "no stream 'a/b'"),
    # tokens: POST/DELETE need one, and the right one
    ("DELETE", "/streams/cam", None, {}, 401, "missing bearer token (Authorization: Bearer <token>)"),
    ("DELETE", "/streams/cam", None, {"Authorization": "Bearer nope"}, 401, "wrong bearer token"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "error"), REFUSALS,
                         ids=[f"{m} {p[:40]} {s}" for m, p, _, _, s, _ in REFUSALS])
def test_a_refusal_is_one_line_of_json_with_its_status(client: TestClient, method: str, path: str, body: bytes | None,
                                                       headers: dict[str, str], status: int, error: str) -> None:
    response = client.request(method, path, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert _error(response).startswith(error)
    if status == 405:
        assert response.headers["allow"] == error.split("(allowed: ")[1].rstrip(")")
    if status == 401:
        assert response.headers["www-authenticate"] == 'Bearer realm="vidrec"'
    assert client.get("/streams").json()["streams"] == [{"id": "cam", "url": "rtsp://h/cam"}], "nothing changed"


def test_an_unread_body_ends_the_connection(client: TestClient) -> None:
    too_big = client.post("/streams", content=b" " * (65 * 1024), headers=AUTH)
    no_token = client.post("/streams", content=b'{"id": "x", "url": "y"}')
    read = client.post("/streams", content=b"[1]", headers=AUTH)
    assert (too_big.status_code, no_token.status_code, read.status_code) == (413, 401, 400)
    assert too_big.headers["connection"] == no_token.headers["connection"] == "close"
    assert "connection" not in read.headers, "a body that was read leaves the connection open"


def test_a_body_needs_a_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # a streamed body goes out chunked, without Content-Length
        yield b'{"id": "x", "url": "y"}'

    response = client.post("/streams", content=chunks(), headers=AUTH)
    assert response.status_code == 411 and _error(response) == "Content-Length required"


def test_streams_are_added_and_removed_with_their_status_codes(client: TestClient) -> None:
    added = client.post("/streams/", json={"id": "new", "url": "/v.mp4"}, headers=AUTH)  # a trailing / is no other route
    assert (added.status_code, added.json()) == (201, {"id": "new", "url": "/v.mp4"})
    assert added.content == b'{"id":"new","url":"/v.mp4"}\n', "compact JSON and a newline, as always"
    assert added.headers["cache-control"] == "no-store"
    names = [name for name, _ in added.headers.raw]
    assert b"Content-Type" in names and b"Cache-Control" in names, "header names as the API always wrote them"
    removed = client.delete("/streams/new", headers=AUTH)
    assert (removed.status_code, removed.json()) == (202, {"id": "new", "removing": True})
    assert client.get("/streams/new").status_code == 404


def test_health_is_503_unless_serving() -> None:
    api = ApiServer("127.0.0.1", 0, DictService(), token=TOKEN)
    try:
        with TestClient(api.app) as client:
            assert client.get("/healthz").status_code == 200
            api.service.phase = "draining"
            assert (client.get("/healthz").status_code, client.get("/healthz").json()) == (503, {"status": "draining"})
    finally:
        api.close()


def test_without_a_token_changes_are_open_on_loopback_only() -> None:
    for client in _client(token=None):
        assert client.post("/streams", json={"id": "x", "url": "y"}).status_code == 201
    for client in _client(host="0.0.0.0", token=None):
        refused = client.post("/streams", json={"id": "x", "url": "y"})
        assert refused.status_code == 403
        assert _error(refused) == "changes are disabled: no API token is configured and the API is not on loopback"
        assert client.get("/streams").status_code == 200, "reads stay open"


# (path, how the token is given, status); http_read_auth on
READS = [
    ("/streams", {}, 401),  # no token
    ("/streams", {"headers": AUTH}, 200),  # the header
    ("/streams", {"params": {"access_token": TOKEN}}, 200),  # the query, for EventSource and <img>
    ("/streams", {"params": {"access_token": "nope"}}, 401),  # a wrong one in the query
    ("/metrics", {}, 401),  # every GET route...
    ("/overlay", {}, 401),
    ("/stream-events?stream=cam", {}, 401),  # the feed, before any check of its streams
    ("/openapi.json", {}, 401),
    ("/healthz", {}, 200),  # ...but /healthz
]


@pytest.mark.parametrize(("path", "given", "status"), READS, ids=[f"{p} {s} {sorted(g)}" for p, g, s in READS])
def test_read_auth_needs_the_token_on_every_get_but_healthz(path: str, given: dict[str, Any], status: int) -> None:
    for client in _client(read_auth=True):
        response = client.get(path, **given)
        assert response.status_code == status, response.text
        if status == 401:
            assert _error(response) in ("missing token (Authorization: Bearer <token> or ?access_token=)",
                                        "wrong bearer token")


def test_read_auth_without_a_token_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="http_read_auth needs a token"):
        ApiServer("127.0.0.1", 0, DictService(), token=None, read_auth=True)


def test_the_overlay_files_are_served_with_their_types(client: TestClient) -> None:
    for path, kind in [("/overlay", "text/html"), ("/overlay/overlay.js", "text/javascript"),
                       ("/overlay/overlay.css", "text/css")]:
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), path
        assert response.content == (Path(http_api.__file__).parent / "overlay" /
                                    (path.split("/")[-1] if "." in path else "index.html")).read_bytes()


# ---- slow clients, on a real uvicorn -----------------------------------------------------------------------
def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.fixture()
def served() -> Iterator[ApiServer]:
    """A real server on loopback with a short client deadline (the service's is 30 s)."""
    api = ApiServer("127.0.0.1", 0, DictService(), token=TOKEN, client_timeout_s=0.5)
    api.start()
    try:
        yield api
    finally:
        api.close()


# (case, what the client sends and then waits with, what comes back before the server closes the connection)
SLOW_CLIENTS = [
    # a body shorter than its Content-Length: 408, the rest never waited for
    ("body-never-finished", b"POST /streams HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
     + b"\r\nContent-Length: 100\r\n\r\n{", b"HTTP/1.1 408 "),
    # a request head that never ends: closed without an answer
    ("head-never-finished", b"GET /streams HTTP/1.1\r\nHost: x\r\n", b""),
    # a connection that never sends anything
    ("silent-connection", b"", b""),
    # an idle keep-alive connection after its answer: the answer, then closed
    ("idle-keep-alive", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 "),
]


@pytest.mark.parametrize(("case", "sent", "answer"), SLOW_CLIENTS, ids=[c[0] for c in SLOW_CLIENTS])
def test_a_slow_client_is_cut_off_after_the_deadline(served: ApiServer, case: str, sent: bytes, answer: bytes) -> None:
    with socket.create_connection(served.address, timeout=30) as sock:  # the server closes long before 30 s
        sock.sendall(sent)
        data = _read_until_closed(sock)
    assert data.startswith(answer) and (answer or not data), data[:300]
    if case == "body-never-finished":
        assert b"Connection: close" in data and b'{"error":"body not received within 0.5 s"}' in data, data
    with socket.create_connection(served.address, timeout=30) as sock:  # and it goes on serving
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_until_closed(sock).startswith(b"HTTP/1.1 200 ")


# ---- the description ----------------------------------------------------------------------------------------
def _documented_routes() -> dict[tuple[str, str], set[int]]:
    """(method, path) -> the status codes the module docstring's table names."""
    routes: dict[tuple[str, str], set[int]] = {}
    for line in (http_api.__doc__ or "").splitlines():
        match = re.match(r"\s+(GET|POST|DELETE)\s+(/\S*)\s*(.*)", line)
        if match:
            method, path, rest = match.groups()
            path = re.sub(r"(\[.*\]|\?.*)$", "", path).replace("{id}", "{stream_id}")  # no query part
            routes[(method, path)] = {int(code) for code in re.findall(r"(?<![\d.])([1-5]\d\d)(?![\d.])", rest)}
            if "/overlay/overlay.js" in rest:  # the page's own files, one route by name
                routes[(method, "/overlay/{name}")] = set()
    return routes


def test_every_route_in_the_table_is_described_with_its_status_codes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    validate(spec)  # a valid OpenAPI document (openapi-spec-validator)
    documented = _documented_routes()
    assert len(documented) >= 13, documented
    described = {(method.upper(), path): {int(code) for code in operation["responses"]}
                 for path, operations in spec["paths"].items() for method, operation in operations.items()}
    documented.pop(("GET", "/openapi.json"))  # the description does not describe itself
    assert set(described) == set(documented)
    for route, codes in documented.items():
        assert codes <= described[route], (route, codes, described[route])
        assert "422" not in spec["paths"][route[1]][route[0].lower()]["responses"], "the API never answers 422"
    for route, model in [(("POST", "/streams"), "StreamSpec"), (("POST", "/gallery/items"), "GalleryAddItems")]:
        body = spec["paths"][route[1]][route[0].lower()]["requestBody"]["content"]["application/json"]["schema"]
        assert model in str(body) and model in spec["components"]["schemas"], (route, body)
    assert spec["paths"]["/streams"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StreamList"}



# ---- a real service's answers -------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_real_answers_match_the_description(tmp_path: Path, repo_dir: Path, kafka_bootstrap: str, redis_url: str) -> None:
    """`vidrec serve` on samples/bikes.mp4 with a gallery, Kafka and Redis: each JSON answer fits its model
    (``extra="forbid"``: every field is described), and its description is valid OpenAPI."""
    from tests.cli_helpers import sample_gallery
    from tests.serve_helpers import ServeProcess, free_port, wait_for

    gallery = sample_gallery(tmp_path / "index")
    serve = ServeProcess(
        ["--stream", f"bikes={repo_dir / 'samples' / 'bikes.mp4'}", "--kafka", kafka_bootstrap,
         "--topic", f"vidrec-http-{tmp_path.name[-12:]}", "--redis", redis_url,
         "-o", f"Redis.key_prefix=vh{abs(hash(tmp_path)) % 10**6}", *gallery],
        log_path=tmp_path / "serve.log", http_port=free_port(), env={"VIDREC_API_TOKEN": TOKEN},
    )
    try:
        wait_for(serve.healthy, 180, "healthy service (needs VIDREC_MODEL_DIR and the services)")
        listed = wait_for(lambda: (body := serve.api("GET", "/streams").body)["sinks"]
                          and body["streams"][0]["counters"]["processed"] > 0 and body, 120, "results counted")
        http_schemas.StreamList.model_validate(listed)
        http_schemas.Health.model_validate(serve.api("GET", "/healthz").body)
        http_schemas.StreamView.model_validate(serve.api("GET", "/streams/bikes").body)
        http_schemas.Recognitions.model_validate(serve.api("GET", "/recognitions").body)
        http_schemas.GalleryInfo.model_validate(serve.api("GET", "/gallery").body)
        added = serve.api("POST", "/streams", {"id": "again", "url": str(repo_dir / "samples" / "bikes.mp4")}, token=TOKEN)
        assert added.status == 201, added
        http_schemas.StreamView.model_validate(added.body)
        removed = serve.api("DELETE", "/streams/again", token=TOKEN)
        assert removed.status == 202, removed
        http_schemas.StreamRemoval.model_validate(removed.body)
        spec = serve.api("GET", "/openapi.json").body
        validate(spec)
        assert set(spec["components"]["schemas"]) >= {"StreamList", "StreamView", "Health", "StreamSpec"}
    finally:
        serve.kill()
