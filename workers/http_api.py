"""The HTTP API of `vidrec serve` (stdlib ``ThreadingHTTPServer``; JSON in, JSON out).

    GET    /healthz            200 {"status": "ok", ...} when serving; 503 while starting or stopping
    GET    /streams            200 {"streams": [stream, ...], "sinks": [...]}: states, counters, sink totals
    GET    /streams/{id}       200 stream | 404
    POST   /streams            {"id", "url"[, "every_nth", "kind", "clock_stamp"]} -> 201 stream | 400 | 409 | 503
    DELETE /streams/{id}       202 {"id", "removing": true} | 404

Errors are ``{"error": "<one line>"}`` with the status code. Bodies over ``max_body_bytes`` (64 KiB) are refused
with 413 unread.

Authentication (decided here, documented in the README): POST and DELETE need ``Authorization: Bearer <token>``
when a token is configured (the environment variable named by ``Service.api_token_env``, VIDREC_API_TOKEN by
default); a missing or wrong token gets 401 and changes nothing (compared in constant time). With no token
configured, POST and DELETE are open only when the server is bound to a loopback address (anyone who can reach
it already runs code on this machine); bound elsewhere they answer 403 until a token is set. GET routes are
open: they show stream URLs with any password replaced by ``***``.
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
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


class ApiError(Exception):
    """A request the service refuses: ``status`` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message


class StreamService(Protocol):
    """What the API needs from the supervisor (every method thread-safe; raise ApiError to refuse)."""

    def health(self) -> tuple[int, dict[str, Any]]: ...

    def list_streams(self) -> list[dict[str, Any]]: ...

    def sinks(self) -> list[dict[str, Any]]: ...

    def get_stream(self, stream_id: str) -> dict[str, Any]: ...

    def add_stream(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def remove_stream(self, stream_id: str) -> dict[str, Any]: ...


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
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.service = service
        self.token = token or None
        self.max_body_bytes = max_body_bytes
        self.mutations_open = self.token is not None or is_loopback(host)
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
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()

    def check_auth(self, header: str | None) -> None:
        if not self.mutations_open:
            raise ApiError(HTTPStatus.FORBIDDEN, "stream changes are disabled: no API token is configured and the API is not on loopback")
        if self.token is None:
            return
        if not header or not header.startswith("Bearer "):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "missing bearer token (Authorization: Bearer <token>)")
        given = header[len("Bearer "):].strip().encode("utf-8")
        if not hmac.compare_digest(given, self.token.encode("utf-8")):
            raise ApiError(HTTPStatus.UNAUTHORIZED, "wrong bearer token")


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer
    server_version = "vidrec"
    protocol_version = "HTTP/1.1"

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
            status, body = self._route(method)
        except ApiError as exc:
            status, body = exc.status, {"error": exc.message}
            if not self._body_read and self.headers.get("Content-Length", "0").strip() not in ("", "0"):
                self.close_connection = True  # a refused request's body is left unread: end the connection
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 and is logged, the server stays up
            log.exception("HTTP %s %s failed", method, self.path)
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {type(exc).__name__}"}
        self._send(status, body)

    def _route(self, method: str) -> tuple[int, dict[str, Any]]:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        parts = [unquote(p) for p in path.strip("/").split("/")] if path != "/" else []
        api = self.api
        if parts == ["healthz"]:
            self._allow(method, "GET")
            return api.service.health()
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
            raise ApiError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {length_header!r}") from None
        if length < 0 or length > self.api.max_body_bytes:
            self.close_connection = True  # the body is left unread
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes is over the {self.api.max_body_bytes}-byte limit")
        raw = self.rfile.read(length)
        self._body_read = True
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, f"body must be a JSON object, got {type(body).__name__}")
        return body

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
