"""The HTTP API of `vidrec serve` (stdlib ``ThreadingHTTPServer``; JSON in, JSON out).

    GET    /healthz            200 {"status": "ok", ...} when serving; 503 while starting or stopping
    GET    /streams            200 {"streams": [stream, ...], "sinks": [...]}: states, counters, sink totals
    GET    /streams/{id}       200 stream | 404
    POST   /streams            {"id", "url"[, "every_nth", "kind", "clock_stamp"]} -> 201 stream | 400 | 409 | 503
    DELETE /streams/{id}       202 {"id", "removing": true} | 404
    GET    /metrics            Prometheus text format (docs/metrics.md)
    GET    /recognitions       200 {"labels": [{"label", "count", "streams"}], "total"}: named objects per label
    GET    /overlay            the live overlay page (+ /overlay/overlay.js, /overlay/overlay.css)
    GET    /streams/{id}/frame.jpg[?index=N]   the newest overlay snapshot (JPEG, X-Frame-* headers) | 404
    GET    /streams/{id}/events               text/event-stream: `result` (from Redis) and `state` events
    GET    /gallery            200 {"index_dir", "version", "entries", "labels"} | 404 without a gallery
    POST   /gallery/items      {"items": [{"path", "label"}]} -> 201 {"added", "version", "entries"} | 400
    DELETE /gallery/items      {"labels": [...]} or {"paths": [...]} -> 200 {"removed", "version"} | 400

Errors are ``{"error": "<one line>"}`` with the status code. Bodies over ``max_body_bytes`` (64 KiB) are refused
with 413 unread.

Authentication (decided here, documented in the README): POST and DELETE need ``Authorization: Bearer <token>``
when a token is configured (the environment variable named by ``Service.api_token_env``, VIDREC_API_TOKEN by
default); a missing or wrong token gets 401 and changes nothing (compared in constant time). With no token
configured, POST and DELETE are open only when the server is bound to a loopback address (anyone who can reach
it already runs code on this machine); bound elsewhere they answer 403 until a token is set. GET routes are
open unless ``Service.http_read_auth`` is on: then every GET but /healthz needs the token too, as the header or
as ``?access_token=`` (the overlay page's EventSource and images cannot send headers). Stream URLs are shown
with any password replaced by ``***``.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from workers.service_errors import Conflict, Failed, Invalid, NotFound, RequestRefused, TimedOut, Unavailable

if TYPE_CHECKING:
    from workers.overlay_events import ResultFollower
    from workers.snapshots import Snapshot

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
OVERLAY_DIR = Path(__file__).resolve().parent / "overlay"
_STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


_REFUSAL_STATUS: dict[type[RequestRefused], HTTPStatus] = {
    Invalid: HTTPStatus.BAD_REQUEST, NotFound: HTTPStatus.NOT_FOUND, Conflict: HTTPStatus.CONFLICT,
    Unavailable: HTTPStatus.SERVICE_UNAVAILABLE, Failed: HTTPStatus.INTERNAL_SERVER_ERROR,
    TimedOut: HTTPStatus.GATEWAY_TIMEOUT,
}


def status_of(exc: Exception) -> int:
    """The status code of a refusal: the HTTP layer's own ``ApiError`` carries one, the service's kinds map."""
    if isinstance(exc, ApiError):
        return exc.status
    return _REFUSAL_STATUS.get(type(exc), HTTPStatus.BAD_REQUEST)


class ApiError(Exception):
    """A request the service refuses: ``status`` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message


class StreamService(Protocol):
    """What the API needs from the supervisor (every method thread-safe; raise ApiError to refuse)."""

    def health(self) -> dict[str, Any]: ...

    def list_streams(self) -> list[dict[str, Any]]: ...

    def sinks(self) -> list[dict[str, Any]]: ...

    def get_stream(self, stream_id: str) -> dict[str, Any]: ...

    def add_stream(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def remove_stream(self, stream_id: str) -> dict[str, Any]: ...

    def metrics(self) -> bytes: ...

    def recognitions(self) -> dict[str, Any]: ...

    def snapshot(self, stream_id: str, index: int | None = None) -> "Snapshot": ...


class GalleryApi(Protocol):
    """The gallery routes' backend (workers/gallery_api.py); raise ApiError to refuse."""

    def info(self) -> dict[str, Any]: ...

    def add(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def remove(self, body: dict[str, Any]) -> dict[str, Any]: ...


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiServer:
    """Binds at construction (so a taken port fails at start), serves in a thread after ``start()``."""

    def __init__(
        self,
        host: str,
        port: int,
        service: StreamService,
        *,
        token: str | None,
        read_auth: bool = False,
        gallery: GalleryApi | None = None,
        results: "ResultFollower | None" = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.service = service
        self.token = token or None
        if read_auth and self.token is None:
            raise ValueError("http_read_auth needs a token")
        self.read_auth = read_auth
        self.gallery = gallery
        self.results = results
        self.max_body_bytes = max_body_bytes
        self.mutations_open = self.token is not None or is_loopback(host)
        self.closing = threading.Event()  # ends the event streams at shutdown
        handler = type("Handler", (_Handler,), {"api": self})
        server_class = _Server6 if ":" in host else ThreadingHTTPServer
        self._server = server_class((host, port), handler)  # OSError when the address is taken
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        if self.token is None:
            if self.mutations_open:
                log.warning("HTTP API on loopback without a token: POST/DELETE /streams are open to local users")
            else:
                log.warning("HTTP API on %s without a token: POST/DELETE /streams are disabled (set the token variable)", host)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http-api", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.closing.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()

    def check_auth(self, header: str | None) -> None:
        """For POST/DELETE: the bearer header only (a token in a URL ends up in logs and histories)."""
        if not self.mutations_open:
            raise ApiError(HTTPStatus.FORBIDDEN, "changes are disabled: no API token is configured and the API is not on loopback")
        if self.token is None:
            return
        if not header or not header.startswith("Bearer "):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "missing bearer token (Authorization: Bearer <token>)")
        self._compare(header[len("Bearer "):].strip())

    def check_read(self, header: str | None, query_token: str | None) -> None:
        """For GET routes when ``read_auth`` is on: the bearer header or ``?access_token=``."""
        if not self.read_auth:
            return
        if header and header.startswith("Bearer "):
            self._compare(header[len("Bearer "):].strip())
        elif query_token:
            self._compare(query_token)
        else:
            raise ApiError(HTTPStatus.UNAUTHORIZED, "missing token (Authorization: Bearer <token> or ?access_token=)")

    def _compare(self, given: str) -> None:
        assert self.token is not None
        if not hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8")):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "wrong bearer token")


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer
    server_version = "vidrec"
    protocol_version = "HTTP/1.1"
    # A client that stops sending (a body shorter than its Content-Length, an idle keep-alive) gives its
    # thread back after this long instead of holding it forever. The event stream writes, never reads.
    timeout = 30.0

    def handle(self) -> None:
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the client went away or stalled: nothing to answer

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (bad request line, headers too long, unknown method) as this
        API's JSON errors rather than an HTML page."""
        self._allowed = None
        self.close_connection = True
        try:
            self._send(code, {"error": message or HTTPStatus(code).phrase})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("http %s - %s", self.address_string(), format % args)

    # -- routing ---------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        self._allowed: str | None = None
        self._body_read = False
        try:
            if self._route_raw(method):
                return
            status, body = self._route(method)
        except (ApiError, RequestRefused) as exc:
            status, body = status_of(exc), {"error": str(exc)}
            if not self._body_read and self.headers.get("Content-Length", "0").strip() not in ("", "0"):
                self.close_connection = True  # a refused request's body is left unread: end the connection
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and is logged, the server stays up
            log.exception("HTTP %s %s failed", method, self.path)
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(exc).__name__}"}
        self._send(status, body)

    def _parts(self) -> tuple[str, list[str], dict[str, list[str]]]:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        parts = [unquote(p) for p in path.strip("/").split("/")] if path != "/" else []
        return path, parts, parse_qs(url.query)

    def _read_allowed(self, query: dict[str, list[str]]) -> None:
        self.api.check_read(self.headers.get("Authorization"), (query.get("access_token") or [None])[0])

    def _route_raw(self, method: str) -> bool:
        """The routes that answer something other than JSON; True when this request was one of them."""
        _, parts, query = self._parts()
        api = self.api
        if parts == ["metrics"]:
            self._allow(method, "GET")
            self._read_allowed(query)
            self._send_bytes(HTTPStatus.OK, api.service.metrics(), METRICS_CONTENT_TYPE)
            return True
        if parts and parts[0] == "overlay" and len(parts) <= 2:
            self._allow(method, "GET")
            self._read_allowed(query)
            name = parts[1] if len(parts) == 2 else "index.html"
            if name not in ("index.html", "overlay.js", "overlay.css"):
                raise ApiError(HTTPStatus.NOT_FOUND, f"no overlay file {name!r}")
            data = (OVERLAY_DIR / name).read_bytes()
            self._send_bytes(HTTPStatus.OK, data, _STATIC_TYPES[Path(name).suffix])
            return True
        if len(parts) == 3 and parts[0] == "streams" and parts[2] == "frame.jpg":
            self._allow(method, "GET")
            self._read_allowed(query)
            index = None
            if "index" in query:
                try:
                    index = int(query["index"][0])
                except ValueError:
                    raise ApiError(HTTPStatus.BAD_REQUEST, f"index must be an integer, got {query['index'][0]!r}") from None
            snap = api.service.snapshot(parts[1], index)
            self._send_bytes(HTTPStatus.OK, snap.jpeg, "image/jpeg", {
                "X-Frame-Index": str(snap.frame_index), "X-Pts": "" if snap.pts is None else repr(snap.pts),
                "X-Capture-Time": repr(snap.capture_time), "X-Frame-Width": str(snap.width),
                "X-Frame-Height": str(snap.height),
            })
            return True
        if len(parts) == 3 and parts[0] == "streams" and parts[2] == "events":
            self._allow(method, "GET")
            self._read_allowed(query)
            self._event_stream(parts[1])
            return True
        return False

    def _route(self, method: str) -> tuple[int, dict[str, Any]]:
        path, parts, query = self._parts()
        api = self.api
        if parts == ["healthz"]:
            self._allow(method, "GET")
            body = api.service.health()
            return (HTTPStatus.OK if body["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE), body
        if method == "GET":
            self._read_allowed(query)
        if parts == ["recognitions"]:
            self._allow(method, "GET")
            return HTTPStatus.OK, api.service.recognitions()
        if parts and parts[0] == "gallery" and len(parts) <= 2:
            return self._gallery_route(method, parts)
        if parts == ["streams"]:
            self._allow(method, "GET", "POST")
            if method == "GET":
                return HTTPStatus.OK, {"streams": api.service.list_streams(), "sinks": api.service.sinks()}
            api.check_auth(self.headers.get("Authorization"))
            return HTTPStatus.CREATED, api.service.add_stream(self._json_body())
        if len(parts) == 2 and parts[0] == "streams" and parts[1]:
            self._allow(method, "GET", "DELETE")
            if method == "GET":
                return HTTPStatus.OK, api.service.get_stream(parts[1])
            api.check_auth(self.headers.get("Authorization"))
            return HTTPStatus.ACCEPTED, api.service.remove_stream(parts[1])
        raise ApiError(HTTPStatus.NOT_FOUND, f"no route {path}")

    def _gallery_route(self, method: str, parts: list[str]) -> tuple[int, dict[str, Any]]:
        gallery = self.api.gallery
        if parts == ["gallery"]:
            self._allow(method, "GET")
            if gallery is None:
                raise ApiError(HTTPStatus.NOT_FOUND, "no gallery: IndexProcess.index_dir is not set")
            return HTTPStatus.OK, gallery.info()
        if parts == ["gallery", "items"]:
            self._allow(method, "POST", "DELETE")
            self.api.check_auth(self.headers.get("Authorization"))
            if gallery is None:
                raise ApiError(HTTPStatus.NOT_FOUND, "no gallery: IndexProcess.index_dir is not set")
            body = self._json_body()
            if method == "POST":
                return HTTPStatus.CREATED, gallery.add(body)
            return HTTPStatus.OK, gallery.remove(body)
        raise ApiError(HTTPStatus.NOT_FOUND, f"no route /{'/'.join(parts)}")

    def _event_stream(self, stream_id: str) -> None:
        """Server-sent events until the client goes or the server stops: ``result`` per result (from Redis),
        ``state`` every second (the stream's state and latency, from the supervisor)."""
        api = self.api
        if api.results is None:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the overlay's results come from Redis: Redis.url is not set")
        api.service.get_stream(stream_id)  # 404 for an unknown stream, before the 200 goes out
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        self.close_connection = True
        import redis  # only the event streams need it here

        def send(event: str, data: str) -> None:
            self.wfile.write(f"event: {event}\ndata: {data}\n\n".encode("utf-8"))
            self.wfile.flush()

        try:
            self.wfile.write(b"retry: 2000\n\n")
            for text in api.results.follow(stream_id, api.closing):
                if text is not None:
                    send("result", text)
                    continue
                try:
                    view = api.service.get_stream(stream_id)
                except NotFound:
                    send("state", json.dumps({"state": "removed", "reason": "the stream was removed", "latency_ms": {}}))
                    return
                send("state", json.dumps({"state": view["state"], "reason": view["reason"],
                                          "latency_ms": view["last_latency_ms"]}, allow_nan=False))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return  # the viewer went away
        except redis.RedisError as exc:
            try:
                send("error", json.dumps({"error": f"Redis: {exc}"}))
            except OSError:
                pass

    def _allow(self, method: str, *allowed: str) -> None:
        if method not in allowed:
            self._allowed = ", ".join(allowed)
            raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} not allowed here (allowed: {', '.join(allowed)})")

    def _json_body(self) -> dict[str, Any]:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise ApiError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length_header!r}")
        if length > self.api.max_body_bytes:
            self.close_connection = True  # the body is left unread
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes is over the {self.api.max_body_bytes}-byte limit")
        raw = self.rfile.read(length)
        self._body_read = True
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
        except RecursionError:  # "[[[[..." deeper than the parser's stack: not a body this API takes
            raise ApiError(HTTPStatus.BAD_REQUEST, "body is not JSON: nested too deeply") from None
        if not isinstance(body, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"body must be a JSON object, got {type(body).__name__}")
        return body

    def _send_bytes(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = (json.dumps(body, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="vidrec"')
        if status == HTTPStatus.METHOD_NOT_ALLOWED and self._allowed:
            self.send_header("Allow", self._allowed)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
