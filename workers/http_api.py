"""The HTTP API of `vidrec serve` (FastAPI on uvicorn, in a thread of the supervisor; JSON in, JSON out).

    GET    /healthz            200 {"status": "ok", ...} when serving; 503 while starting or stopping
    GET    /streams            200 {"streams": [stream, ...], "sinks": [...]}: states, counters, sink totals
    GET    /streams?scope=cluster   200 {"scope": "cluster", "streams": [...]}: every stream of the cluster, its node | 404 | 503
    GET    /cluster            200 {"cluster", "node", "nodes": [...], "pending", "warnings"} (docs/cluster.md) | 404 | 503
    GET    /streams/{id}       200 stream | 404
    POST   /streams            {"id", "url"[, "every_nth", "kind", "clock_stamp"]} -> 201 stream | 400 | 409 | 503
                               (cluster: 201 with the node that runs it, or 202 {"state": "pending"})
    DELETE /streams/{id}       202 {"id", "removing": true} | 404
    GET    /metrics            Prometheus text format (docs/metrics.md)
    GET    /recognitions       200 {"labels": [{"label", "count", "streams"}], "total"}: named objects per label
    GET    /overlay            the live overlay page (+ /overlay/overlay.js, /overlay/overlay.css)
    GET    /streams/{id}/frame.jpg[?index=N]   the newest overlay snapshot (JPEG, X-Frame-* headers) | 404
    GET    /stream-events?stream=A&stream=B   text/event-stream, up to 64 streams: `result`, `state` | 400 | 404 | 503
    GET    /streams/{id}/events               the same for one stream (/stream-events?stream=ID) | 404 | 503
    GET    /track-events[?after=N&limit=M]    200 {"events": [{"n", "event", "thumbnail"}], "next"} | 400
    GET    /thumbnails/{stream_id}/{run_id}/{track_id}   a track's best crop (JPEG) | 400 | 404
    GET    /gallery            200 {"index_dir", "version", "entries", "labels"} | 404 without a gallery
    POST   /gallery/items      {"items": [{"path", "label"}]} -> 201 {"added", "version", "entries"} | 400
    DELETE /gallery/items      {"labels": [...]} or {"paths": [...]} -> 200 {"removed", "version"} | 400
    GET    /openapi.json       this API's OpenAPI description (bodies: workers/http_schemas.py)

Errors are ``{"error": "<one line>"}`` with the status code. Bodies over ``max_body_bytes`` (64 KiB) are refused
with 413 unread. A client gets 30 s to send its body (then 408) and to start or continue a request on its
connection (then the connection is closed). An unknown method gets 501, a request line over 64 KiB 414, a header
line over 64 KiB or over 100 headers 431. What uvicorn refuses before the application sees a request (a garbled
request line, a TLS hello, a request head over 256 KiB) gets uvicorn's own plain-text 400.

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
import logging
import socket
import threading
import time
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from workers.http_app import build_app
from workers.http_errors import ApiError, status_of

if TYPE_CHECKING:
    from workers.overlay_events import ResultFollower
    from workers.snapshots import Snapshot

log = logging.getLogger(__name__)

__all__ = ["ApiError", "ApiServer", "GalleryApi", "StreamService", "status_of"]

MAX_BODY_BYTES = 64 * 1024
# A request head that has not ended after this many bytes is refused by uvicorn (400); complete heads are held
# to the old limits per line and header count by the application (workers/http_app.py).
MAX_HEAD_BYTES = 256 * 1024
CLIENT_TIMEOUT_S = 30.0  # how long a client may take to send a request (or keep an idle connection)


class StreamService(Protocol):
    """What the API needs from the supervisor (every method thread-safe; raise a ``RequestRefused`` kind to refuse)."""

    def health(self) -> dict[str, Any]: ...

    def list_streams(self) -> list[dict[str, Any]]: ...

    def sinks(self) -> list[dict[str, Any]]: ...

    def get_stream(self, stream_id: str) -> dict[str, Any]: ...

    def add_stream(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def remove_stream(self, stream_id: str) -> dict[str, Any]: ...

    def metrics(self) -> bytes: ...

    def recognitions(self) -> dict[str, Any]: ...

    def snapshot(self, stream_id: str, index: int | None = None) -> "Snapshot": ...

    def track_events(self, after: int | None, limit: int) -> dict[str, Any]: ...

    def thumbnail(self, stream_id: str, run_id: str, track_id: int) -> bytes: ...

    def cluster(self) -> dict[str, Any]: ...

    def cluster_streams(self) -> list[dict[str, Any]]: ...


class GalleryApi(Protocol):
    """The gallery routes' backend (workers/gallery_api.py); raise a ``RequestRefused`` kind to refuse."""

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
    """Binds at construction (so a taken port fails at start), serves in a thread after ``start()``: uvicorn
    with its own event loop; the service's methods run in its thread pool."""

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
        client_timeout_s: float = CLIENT_TIMEOUT_S,
    ) -> None:
        self.service = service
        self.token = token or None
        if read_auth and self.token is None:
            raise ValueError("http_read_auth needs a token")
        self.read_auth = read_auth
        self.gallery = gallery
        self.results = results
        self.max_body_bytes = max_body_bytes
        self.client_timeout_s = client_timeout_s
        self.mutations_open = self.token is not None or is_loopback(host)
        self.closing = threading.Event()  # ends the event streams at shutdown
        self._viewers: set[threading.Event] = set()
        self._viewers_lock = threading.Lock()
        self._socket = _listen(host, port)  # OSError when the address is taken
        self.app = build_app(self)  # the ASGI application
        config = uvicorn.Config(
            self.app, http=type("Protocol", (_Protocol,), {"timeout_s": client_timeout_s}), ws="none", lifespan="off", interface="asgi3", loop="asyncio",
            log_config=None, access_log=False, proxy_headers=False, server_header=False,
            headers=[("Server", "vidrec")], timeout_keep_alive=client_timeout_s,  # type: ignore[arg-type] - uvicorn waits a float fine
            timeout_graceful_shutdown=5,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        )
        self._server = uvicorn.Server(config)
        # uvicorn's own lines ("Started server process", which is a thread here) only when something is wrong.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        self._thread: threading.Thread | None = None
        if self.token is None:
            if self.mutations_open:
                log.warning("HTTP API on loopback without a token: POST/DELETE /streams are open to local users")
            else:
                log.warning("HTTP API on %s without a token: POST/DELETE /streams are disabled (set the token variable)", host)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="http-api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10.0  # connections wait in the socket's backlog meanwhile
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.closing.set()
        with self._viewers_lock:
            for stop in self._viewers:
                stop.set()
        if self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10.0)
        self._socket.close()

    # -- the event streams' viewers (workers/http_events.py) ------------------------------------------------
    def viewer_started(self) -> threading.Event:
        """A viewer's stop signal: set when it goes or when the server closes."""
        stop = threading.Event()
        with self._viewers_lock:
            self._viewers.add(stop)
            if self.closing.is_set():
                stop.set()
        return stop

    def viewer_ended(self, stop: threading.Event) -> None:
        stop.set()
        with self._viewers_lock:
            self._viewers.discard(stop)

    # -- who may do what -----------------------------------------------------------------------------------
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


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the standard library's server did
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class _Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 with the old server's deadline on slow clients: a connection that has not sent a
    whole request head within ``timeout_s`` of opening or of its last answer is closed (uvicorn alone times
    out only idle keep-alive connections, not one that trickles its headers)."""

    timeout_s = CLIENT_TIMEOUT_S

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def _arm(self) -> None:
        self.loop.call_later(self.timeout_s, self._deadline, self.cycle)

    def _deadline(self, cycle: Any) -> None:
        if self.cycle is cycle and (cycle is None or cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()
