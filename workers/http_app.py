"""The HTTP API's routes on FastAPI: who may call what, request bodies read within limits, and every refusal as
``{"error": "<one line>"}`` (the route table and the rules are in ``workers/http_api.py``'s docstring).

The service's methods block (locks, a worker's answer), so each runs in the framework's thread pool, never on the
event loop. Answers are the service's dicts written as compact JSON, exactly as before the framework; the
pydantic models in ``workers/http_schemas.py`` describe them in ``/openapi.json``.

Before routing (``_Gate``), the limits the API always had: an unknown method is 501, a request line over 64 KiB
414, a header line over 64 KiB or over 100 header lines 431; and the path is split the way the API always did,
so that ``%2F`` inside a stream id or overlay file name stays part of that name and a trailing ``/`` is ignored.
"""
from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import quote, unquote

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response, StreamingResponse
from starlette.routing import Match

from workers import http_schemas as schemas
from workers import track_feed
from workers.http_events import MAX_STREAMS as MAX_FEED_STREAMS
from workers.http_events import event_stream, stream_ids_of
from workers.http_errors import ApiError, status_of
from workers.service_errors import RequestRefused

if TYPE_CHECKING:
    from workers.http_api import ApiServer

log = logging.getLogger(__name__)

OVERLAY_DIR = Path(__file__).resolve().parent / "overlay"
OVERLAY_FILES = {"index.html": "text/html; charset=utf-8", "overlay.js": "text/javascript; charset=utf-8",
                 "overlay.css": "text/css; charset=utf-8"}
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
KNOWN_METHODS = frozenset({"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"})
MAX_LINE_BYTES = 65536  # the longest request line or header line, and
MAX_HEADERS = 100  # the most header lines, that the standard library's server took: the API keeps its limits
_METHOD_ORDER = ("GET", "POST", "DELETE")
DEFAULT_TRACK_EVENTS = track_feed.DEFAULT_LIMIT  # GET /track-events without limit=
MAX_TRACK_EVENTS = track_feed.KEEP_EVENTS  # as many as the service keeps


# ---- answers ------------------------------------------------------------------------------------------------
def json_response(status: int, body: Any, *, close: bool = False, headers: dict[str, str] | None = None) -> Response:
    data = (json.dumps(body, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
    out = {"Cache-Control": "no-store", **(headers or {})}
    if status == HTTPStatus.UNAUTHORIZED:
        out["WWW-Authenticate"] = 'Bearer realm="vidrec"'
    if close:
        out["Connection"] = "close"
    return Response(data, status_code=int(status), headers=out, media_type="application/json")


def error_response(status: int, message: str, request: Request | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    # A refused request whose body was not read ends its connection: the unread bytes are not a next request.
    close = request is not None and _body_unread(request)
    return json_response(status, {"error": message}, close=close, headers=headers)


def _body_unread(request: Request) -> bool:
    if request.scope.get("vidrec.body_read"):
        return False
    length = request.headers.get("content-length", "").strip()
    return length not in ("", "0") or "transfer-encoding" in request.headers


def bytes_response(data: bytes, content_type: str, headers: dict[str, str] | None = None) -> Response:
    return Response(data, headers={"Cache-Control": "no-store", **(headers or {})}, media_type=content_type)


class _ApiRoute(APIRoute):
    """Every route's refusals (from the service, the auth checks, the body reader) as one-line JSON errors, and
    a bug as 500 ``internal error: <kind>``, logged, with the server still up."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except (ApiError, RequestRefused) as exc:
                return error_response(status_of(exc), str(exc), request)
            except Exception as exc:  # noqa: BLE001 - a bug answers 500 and is logged, the server stays up
                log.exception("HTTP %s %s failed", request.method, request.url.path)
                return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(exc).__name__}", request)

        return handle


# ---- the app ------------------------------------------------------------------------------------------------
def build_app(api: "ApiServer") -> Callable[..., Awaitable[None]]:
    """The ASGI application of ``api`` (an ``ApiServer``: its service, gallery, result feed and auth rules)."""
    from workers import __version__

    # No OpenTelemetry: the service's metrics are Prometheus (/metrics), and spans would cost every request.
    telemetry_off = {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    app = FastAPI(title="vidrec", version=__version__, openapi_url=None, docs_url=None, redoc_url=None,
                  redirect_slashes=False, telemetry=telemetry_off,
                  description="The HTTP API of `vidrec serve` (README: The HTTP API).")
    app.router.route_class = _ApiRoute
    call = run_in_threadpool  # the service's methods block (locks, a worker's answer): never on the event loop

    # async: a check this small runs on the event loop (a plain def would cost a trip to the thread pool)
    async def read_allowed(request: Request) -> None:
        api.check_read(request.headers.get("authorization"), _first(request, "access_token"))

    async def change_allowed(request: Request) -> None:
        api.check_auth(request.headers.get("authorization"))

    reads = [Depends(read_allowed)]
    changes = [Depends(change_allowed)]
    errors = {status: {"model": schemas.ErrorBody} for status in (400, 401, 403, 404, 405, 408, 409, 411, 413, 503)}

    def described(*codes: int) -> dict[int | str, dict[str, Any]]:
        return {code: errors[code] for code in codes}

    @app.get("/healthz", response_model=schemas.Health, responses=described(503),
             summary="200 while serving; 503 while starting or stopping")
    async def healthz() -> Response:
        body = await call(api.service.health)
        return json_response(HTTPStatus.OK if body["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE, body)

    @app.get("/streams", response_model=schemas.StreamList, dependencies=reads,
             responses=described(400, 401, 404, 503),  # ?scope=cluster answers a ClusterStreamList
             summary="Every stream with its state and counters, and the sinks' totals; ?scope=cluster: every stream of the cluster and its node")
    async def list_streams(request: Request) -> Response:
        scope = _first(request, "scope") or "node"
        if scope == "cluster":
            return json_response(HTTPStatus.OK, {"scope": "cluster", "streams": await call(api.service.cluster_streams)})
        if scope != "node":
            raise ApiError(HTTPStatus.BAD_REQUEST, f"scope={scope}: expected node or cluster")

        def both() -> dict[str, Any]:
            return {"streams": api.service.list_streams(), "sinks": api.service.sinks()}

        return json_response(HTTPStatus.OK, await call(both))

    @app.get("/cluster", response_model=schemas.ClusterView, dependencies=reads, responses=described(401, 404, 503),
             summary="Every live node of the cluster with its streams (404 outside a cluster)")
    async def cluster() -> Response:
        return json_response(HTTPStatus.OK, await call(api.service.cluster))

    @app.post("/streams", status_code=201, response_model=schemas.StreamView, dependencies=changes,
              responses={**described(400, 401, 403, 408, 409, 411, 413, 503),
                         202: {"model": schemas.ClusterStream, "description": "Cluster mode: written, not placed yet"}},
              summary="Add a stream (in a cluster: 201 with the node that runs it, or 202 pending)",
              openapi_extra=_request_body("POST", "/streams"))
    async def add_stream(request: Request) -> Response:
        body = await read_json_object(request, api.max_body_bytes, api.client_timeout_s)
        answer = await call(api.service.add_stream, body)
        # In a cluster the stream is written to the streams topic; not placed on a node yet: accepted, pending.
        pending = answer.get("state") == "pending"
        return json_response(HTTPStatus.ACCEPTED if pending else HTTPStatus.CREATED, answer)

    @app.get("/streams/{stream_id}", response_model=schemas.StreamView, dependencies=reads,
             responses=described(401, 404), summary="One stream")
    async def get_stream(stream_id: str) -> Response:
        return json_response(HTTPStatus.OK, await call(api.service.get_stream, unquote(stream_id)))

    @app.delete("/streams/{stream_id}", status_code=202, response_model=schemas.StreamRemoval, dependencies=changes,
                responses=described(401, 403, 404, 503), summary="Remove a stream (it drains, then goes)")
    async def remove_stream(stream_id: str) -> Response:
        return json_response(HTTPStatus.ACCEPTED, await call(api.service.remove_stream, unquote(stream_id)))

    @app.get("/streams/{stream_id}/frame.jpg", dependencies=reads, response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}, "description": "The newest overlay snapshot"},
                        **described(400, 401, 404)},
             summary="The newest overlay snapshot (or frame ?index=N) as JPEG, with X-Frame-* headers")
    async def frame(request: Request, stream_id: str) -> Response:
        index_text = _first(request, "index")
        index = None
        if index_text:
            try:
                index = int(index_text)
            except ValueError:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"index must be an integer, got {index_text!r}") from None
        snap = await call(api.service.snapshot, unquote(stream_id), index)
        return bytes_response(snap.jpeg, "image/jpeg", {
            "X-Frame-Index": str(snap.frame_index), "X-Pts": "" if snap.pts is None else repr(snap.pts),
            "X-Capture-Time": repr(snap.capture_time), "X-Frame-Width": str(snap.width),
            "X-Frame-Height": str(snap.height),
        })

    feed = {200: {"content": {"text/event-stream": {}},
                  "description": "Server-sent events naming their stream: result (from Redis), state (every second)"}}

    @app.get("/stream-events", dependencies=reads, response_class=StreamingResponse,
             responses={**feed, **described(400, 401, 404, 503)},
             summary=f"The overlay's live feed of some streams (?stream=ID, repeated; at most {MAX_FEED_STREAMS})")
    async def stream_events(request: Request) -> Response:
        return await _feed(request.query_params.getlist("stream"))

    @app.get("/streams/{stream_id}/events", dependencies=reads, response_class=StreamingResponse,
             responses={**feed, **described(401, 404, 503)},
             summary="The overlay's live feed of one stream (/stream-events?stream=ID)")
    async def events(stream_id: str) -> Response:
        return await _feed([unquote(stream_id)])

    async def _feed(stream_parameters: list[str]) -> Response:
        """One feed for all the streams a page shows (a browser holds few connections; workers/http_events.py),
        refused before the 200 goes out: no or too many streams (400), an unknown one (404), no Redis (503)."""
        try:
            stream_ids = stream_ids_of(stream_parameters)
        except ValueError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        # 404 naming the first unknown stream, before the 200 goes out
        await call(lambda: [api.service.get_stream(stream_id) for stream_id in stream_ids])
        if api.results is None:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE,
                           "the overlay's results come from Redis: Redis.url is not set")
        headers = {"Cache-Control": "no-store", "Connection": "close", "X-Accel-Buffering": "no"}
        return StreamingResponse(event_stream(api, stream_ids), media_type="text/event-stream; charset=utf-8",
                                 headers=headers)

    @app.get("/metrics", dependencies=reads, response_class=Response,
             responses={200: {"content": {METRICS_CONTENT_TYPE: {}}, "description": "Prometheus text format"},
                        **described(401)},
             summary="Prometheus metrics (docs/metrics.md)")
    async def metrics() -> Response:
        return bytes_response(await call(api.service.metrics), METRICS_CONTENT_TYPE)

    @app.get("/recognitions", response_model=schemas.Recognitions, dependencies=reads, responses=described(401),
             summary="Named objects per gallery label in the published results")
    async def recognitions() -> Response:
        return json_response(HTTPStatus.OK, await call(api.service.recognitions))

    @app.get("/overlay", dependencies=reads, response_class=Response,
             responses={200: {"content": {"text/html": {}}, "description": "The live overlay page"}, **described(401)},
             summary="The live overlay page")
    async def overlay_page() -> Response:
        return _overlay_file("index.html")

    @app.get("/overlay/{name}", dependencies=reads, response_class=Response,
             responses={200: {"content": {"text/html": {}, "text/javascript": {}, "text/css": {}},
                              "description": "One of the overlay page's files"}, **described(401, 404)},
             summary="The overlay page's files: index.html, overlay.js, overlay.css")
    async def overlay_file(name: str) -> Response:
        return _overlay_file(unquote(name))

    @app.get("/track-events", response_model=schemas.TrackEventPage, dependencies=reads,
             responses=described(400, 401),
             summary="Recent track events of every stream (?after=N: those after event N; ?limit=M, at most "
                     f"{MAX_TRACK_EVENTS})")
    async def track_events(request: Request) -> Response:
        after = _int_param(request, "after", None, 0, None)
        limit = _int_param(request, "limit", DEFAULT_TRACK_EVENTS, 1, MAX_TRACK_EVENTS)
        return json_response(HTTPStatus.OK, await call(api.service.track_events, after, limit))

    @app.get("/thumbnails/{stream_id}/{run_id}/{track_id}", dependencies=reads, response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}, "description": "The track's best crop"},
                        **described(400, 401, 404)},
             summary="A track's best crop as JPEG (the thumbnail path of a track event)")
    async def thumbnail(stream_id: str, run_id: str, track_id: str) -> Response:
        try:
            number = int(track_id)
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"track_id must be an integer, got {track_id!r}") from None
        jpeg = await call(api.service.thumbnail, unquote(stream_id), unquote(run_id), number)
        return bytes_response(jpeg, "image/jpeg")

    @app.get("/gallery", response_model=schemas.GalleryInfo, dependencies=reads, responses=described(401, 404),
             summary="The gallery's version, size and labels")
    async def gallery_info() -> Response:
        gallery = _gallery(api)
        return json_response(HTTPStatus.OK, await call(gallery.info))

    @app.post("/gallery/items", status_code=201, response_model=schemas.GalleryAdded, dependencies=changes,
              responses=described(400, 401, 403, 404, 408, 409, 411, 413, 503), summary="Add images to the gallery",
              openapi_extra=_request_body("POST", "/gallery/items"))
    async def gallery_add(request: Request) -> Response:
        gallery = _gallery(api)
        body = await read_json_object(request, api.max_body_bytes, api.client_timeout_s)
        return json_response(HTTPStatus.CREATED, await call(gallery.add, body))

    @app.delete("/gallery/items", response_model=schemas.GalleryRemoved, dependencies=changes,
                responses=described(400, 401, 403, 404, 408, 409, 411, 413, 503),
                summary="Remove gallery entries by label or by image path",
                openapi_extra=_request_body("DELETE", "/gallery/items"))
    async def gallery_remove(request: Request) -> Response:
        gallery = _gallery(api)
        body = await read_json_object(request, api.max_body_bytes, api.client_timeout_s)
        return json_response(HTTPStatus.OK, await call(gallery.remove, body))

    @app.get("/openapi.json", dependencies=reads, include_in_schema=False)
    async def openapi() -> Response:
        return json_response(HTTPStatus.OK, describe(app))

    @app.exception_handler(StarletteHTTPException)
    async def routing_refusal(request: Request, exc: StarletteHTTPException) -> Response:
        """The router's own refusals: no route here (404), or not this method (405)."""
        if exc.status_code == HTTPStatus.METHOD_NOT_ALLOWED:
            allowed = ", ".join(_allowed_methods(app, request.scope))
            return error_response(exc.status_code, f"{request.method} not allowed here (allowed: {allowed})", request,
                                  headers={"Allow": allowed})
        if exc.status_code == HTTPStatus.NOT_FOUND:
            return error_response(exc.status_code, f"no route {request.scope['vidrec.shown_path']}", request)
        return error_response(exc.status_code, str(exc.detail), request)

    return _Gate(app)


def _first(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    return values[0] if values and values[0] else None


def _int_param(request: Request, name: str, default: int | None, low: int, high: int | None) -> int | None:
    """Query parameter ``name`` as an integer within ``low``..``high`` (400 otherwise); ``default`` when absent."""
    text = _first(request, name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name} must be an integer, got {text!r}") from None
    if value < low or (high is not None and value > high):
        within = f">= {low}" if high is None else f"within {low}..{high}"
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name} must be {within}, got {value}")
    return value


def _gallery(api: "ApiServer") -> Any:
    if api.gallery is None:
        raise ApiError(HTTPStatus.NOT_FOUND, "no gallery: IndexProcess.index_dir is not set")
    return api.gallery


def _overlay_file(name: str) -> Response:
    if name not in OVERLAY_FILES:  # names are looked up, never joined to a path
        raise ApiError(HTTPStatus.NOT_FOUND, f"no overlay file {name!r}")
    return bytes_response((OVERLAY_DIR / name).read_bytes(), OVERLAY_FILES[name])


def _allowed_methods(app: FastAPI, scope: dict[str, Any]) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.matches(scope)[0] != Match.NONE:
            methods |= route.methods
    return [m for m in _METHOD_ORDER if m in methods]


# ---- request bodies -----------------------------------------------------------------------------------------
async def read_json_object(request: Request, max_bytes: int, timeout_s: float) -> dict[str, Any]:
    """The body as a JSON object: Content-Length required (411) and within ``max_bytes`` (413, left unread),
    all of it sent within ``timeout_s`` (408)."""
    length_header = request.headers.get("content-length")
    if length_header is None:
        raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
    try:
        length = int(length_header)
    except ValueError:
        length = -1
    if length < 0:  # uvicorn's h11 refuses these itself (400) before the app; kept for any other ASGI server
        raise ApiError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length_header!r}")
    if length > max_bytes:
        raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes is over the {max_bytes}-byte limit")
    try:
        raw = await asyncio.wait_for(request.body(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(HTTPStatus.REQUEST_TIMEOUT, f"body not received within {timeout_s:g} s") from None
    request.scope["vidrec.body_read"] = True
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
    except RecursionError:  # "[[[[..." deeper than the parser's stack: not a body this API takes
        raise ApiError(HTTPStatus.BAD_REQUEST, "body is not JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"body must be a JSON object, got {type(body).__name__}")
    return body


# ---- the description ----------------------------------------------------------------------------------------
def _request_body(method: str, path: str) -> dict[str, Any]:
    models = schemas.REQUEST_BODIES[(method, path)]
    refs = [{"$ref": f"#/components/schemas/{model.__name__}"} for model in models]
    schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_ACCESS_TOKEN = {"name": "access_token", "in": "query", "required": False, "schema": {"type": "string"},
                 "description": "The API token, for clients that cannot send a header (with Service.http_read_auth)."}
_FRAME_INDEX = {"name": "index", "in": "query", "required": False, "schema": {"type": "integer"},
                "description": "A frame index among the kept snapshots; the newest without it."}


_FEED_STREAMS = {"name": "stream", "in": "query", "required": True, "style": "form", "explode": True,
                 "schema": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
                            "maxItems": MAX_FEED_STREAMS},
                 "description": "A stream to follow; repeat it for more (each at most once)."}


_TRACK_EVENT_PARAMS = [
    {"name": "after", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0},
     "description": "The `next` of the previous answer: only events after it. Without it: the newest `limit`."},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TRACK_EVENTS, "default": DEFAULT_TRACK_EVENTS},
     "description": "The most events in the answer."},
]


def describe(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI description, with the request bodies' models (which no route parameter names) added."""
    if app.openapi_schema is None:
        spec = app.openapi()
        models: list[type[BaseModel]] = [m for ms in schemas.REQUEST_BODIES.values() for m in ms]
        _, extra = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
        components = spec.setdefault("components", {}).setdefault("schemas", {})
        components.update(extra.get("$defs", {}))
        # The path parameters are plain strings and the bodies are checked by the service (400 with one line):
        # this API never answers the framework's 422.
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                operation["responses"].pop("422", None)
                if method == "get" and path != "/healthz":
                    operation.setdefault("parameters", []).append(_ACCESS_TOKEN)
                if path.endswith("/frame.jpg"):
                    operation["parameters"].append(_FRAME_INDEX)
                if path == "/track-events":
                    operation["parameters"].extend(_TRACK_EVENT_PARAMS)
                if path == "/stream-events":
                    operation["parameters"].append(_FEED_STREAMS)
        app.openapi_schema = spec
    return app.openapi_schema


# ---- before routing -----------------------------------------------------------------------------------------
class _Gate:
    """Refusals before any route runs, and the path as the routes see it (see the module docstring)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _canonical_header_names(send)
        if scope["method"] not in KNOWN_METHODS:
            await _raw_error(scope, receive, send, HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({scope['method']!r})")
            return
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string") or b""
        request_line = len(scope["method"]) + len(raw) + (len(query) + 1 if query else 0) + len(" HTTP/1.1\r\n") + 1
        if request_line > MAX_LINE_BYTES:
            await _raw_error(scope, receive, send, HTTPStatus.REQUEST_URI_TOO_LONG, HTTPStatus.REQUEST_URI_TOO_LONG.phrase)
            return
        if len(scope["headers"]) > MAX_HEADERS:
            await _raw_error(scope, receive, send, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers")
            return
        if any(len(name) + len(value) + 4 > MAX_LINE_BYTES for name, value in scope["headers"]):
            await _raw_error(scope, receive, send, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long")
            return
        raw_path = raw.decode("latin-1").split("?", 1)[0].rstrip("/") or "/"
        parts = [unquote(p) for p in raw_path.strip("/").split("/")] if raw_path != "/" else []
        # Each segment decoded once; "/" and "%" inside one stay escaped so that routing cannot split it and
        # the route decodes it back exactly.
        path = "/" + "/".join(quote(p, safe="".join(c for c in map(chr, range(32, 127)) if c not in "/%")) for p in parts)
        shown = ("/" + "/".join(parts)) if parts and parts[0] == "gallery" and len(parts) <= 2 else raw_path
        scope = dict(scope, path=path, raw_path=path.encode("utf-8"), **{"vidrec.shown_path": shown})
        await self.app(scope, receive, send)


def _canonical_header_names(send: Any) -> Any:
    """Header names as the API always wrote them (``Content-Type``, not Starlette's ``content-type``): names are
    case-blind in HTTP, but clients that look them up in a plain dict are not."""

    async def send_canonical(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = dict(message, headers=[(_canonical(name), value) for name, value in message.get("headers", [])])
        await send(message)

    return send_canonical


def _canonical(name: bytes) -> bytes:
    return _SPECIAL_NAMES.get(name) or b"-".join(part.capitalize() for part in name.split(b"-"))


_SPECIAL_NAMES = {b"www-authenticate": b"WWW-Authenticate"}


async def _raw_error(scope: dict[str, Any], receive: Any, send: Any, status: int, message: str) -> None:
    await json_response(status, {"error": message}, close=True)(scope, receive, send)
