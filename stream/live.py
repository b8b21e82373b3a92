"""Live sources: an RTSP camera (or any URL PyAV opens) decoded in a reader thread, reconnected when it drops.

``LiveSource`` never blocks its consumer forever and never gives up on a camera for a passing fault:

- PyAV runs in a reader thread the source owns, with its own timeouts on every blocking call (``open_timeout_s``
  for connect + stream probe, ``read_timeout_s`` for each packet read). Measured on gst-rtsp-server over TCP: a
  killed server ends PyAV's decode loop *without an exception* (~0.2 s); connecting while it is down raises
  ``ConnectionRefusedError``; a server that keeps the connection but sends nothing blocks forever unless a read
  timeout is set, which then raises ``av.ExitError``. All three, and any ``av.FFmpegError`` / ``OSError``, end
  the connection and start a reconnect.
- A watchdog thread watches the age of the last frame: past ``stall_after_s`` a live source is ``stalled``
  (visible even while PyAV is still blocked). A reader that made no progress for longer than PyAV's own timeout
  should have allowed (a hung name lookup; ``read_timeout_s=None``) is abandoned: the watchdog starts a fresh
  connection, and the old thread exits on its own when its call returns, delivering nothing more.
- Reconnects back off exponentially (``backoff_initial_s`` doubling to ``backoff_max_s``), reset by a decoded
  frame. Errors that retrying cannot fix (unsupported scheme, unknown host, 404/401/403, no video stream) mark
  the source ``failed`` with a one-line reason naming the URL, without retrying, as long as the source has never
  been live; once it has, they are retried like any other fault (a camera being reconfigured comes back).
- Frames wait for the consumer in a small buffer (``max_pending``); when the consumer falls behind, the oldest
  waiting frame is dropped and counted, never queued: a live consumer always gets the newest picture.
- ``close()`` returns promptly in every state (bounded joins; a reader blocked inside PyAV is left to finish on
  its own, bounded by PyAV's timeouts).

States (``StreamState``, stream/states.py; in code ``RUNNING`` is the state whose value is ``live``):
``starting`` (first connection) → ``live`` (a frame decoded) ⇄ ``stalled`` (no frame for
``stall_after_s``) → ``reconnecting`` (connection lost or given up; backing off or connecting again) → ``live``;
``failed`` (permanent error; terminal) and ``ended`` (closed, or a finite input such as a file reached its end;
terminal).

Decoding: ``thread_type='AUTO'`` plus the codec's ``low_delay`` and ``chunks`` flags. Measured on /clock (15 fps,
2 cores): AUTO alone picks frame threading, which holds back one frame per thread (~200 ms end-to-end instead of
~70 ms); ``low_delay`` makes FFmpeg use slice threading only, which adds no delay. The ~70 ms left is about one
frame interval: FFmpeg's H.264 parser releases a picture when the next one starts.

Use ``open_source`` (stream/sources.py) for files processed offline: it never drops. ``LiveSource`` also opens a
file path (decoded as fast as possible, dropping what the consumer misses, ``ended`` at its end), which is
handy for tests.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import av
import av.error

from stream.errors import SourceError
from stream.frames import Frame
from stream.sources import _ffmpeg_reason, _to_bgr
from stream.live_options import LiveOptions
from stream.states import StreamState

log = logging.getLogger(__name__)


# FFmpeg errors no retry can fix, when they happen before the source was ever live.
_PERMANENT_ERRORS = (
    av.error.ProtocolNotFoundError,
    av.error.HTTPNotFoundError,
    av.error.HTTPUnauthorizedError,
    av.error.HTTPForbiddenError,
    av.error.HTTPBadRequestError,
    av.error.FileNotFoundError,
    av.error.PermissionError,
    av.error.IsADirectoryError,
)
# getaddrinfo's "this name does not exist" (as opposed to EAI_AGAIN, a resolver that could not answer now).
_UNKNOWN_HOST = {getattr(socket, name) for name in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, name)}


_FINAL = (StreamState.ENDED, StreamState.FAILED)


@dataclass(frozen=True, slots=True)
class SourceStats:
    """A snapshot of one live source.

    ``frames``: frames decoded and handed on (including ``dropped`` ones); ``dropped``: frames replaced by newer
    ones before the consumer took them; ``reconnects``: connection attempts after the first; ``decode_errors``:
    packets the decoder rejected plus frames it flagged corrupt (both skipped); ``last_frame_age_s``: seconds since
    the last decoded frame (None before the first); ``reason``: the last fault, one line naming the URL.
    """

    state: StreamState
    frames: int
    dropped: int
    reconnects: int
    decode_errors: int
    last_frame_age_s: float | None
    reason: str | None


StateCallback = Callable[["LiveSource", StreamState, StreamState, "str | None"], None]


class _Abandoned(Exception):
    """The reader was closed or replaced: leave without touching the source's state."""


@dataclass(slots=True)
class _Outcome:
    reason: str
    permanent: bool = False
    end_of_input: bool = False
    had_frames: bool = False


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs. Never raises: it runs on every
    URL a user hands in, malformed ones included (a port that is not a number, an unclosed IPv6 bracket)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        # Unparsable (an unclosed IPv6 bracket): hide any user:password before the host all the same.
        scheme, sep, rest = url.partition("://")
        netloc, slash, path = rest.partition("/")
        if sep and "@" in netloc:
            return f"{scheme}://***@{netloc.rpartition('@')[2]}{slash}{path}"
        return url
    if "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    if not has_password:
        return url
    # The host and port exactly as written (IPv6 brackets kept; a bad port is shown, not parsed).
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def _default_stream_id(url: str) -> str:
    parts = urlsplit(url)
    name = parts.path.strip("/").rsplit("/", 1)[-1] if parts.path else ""
    if "." in name and not parts.scheme:
        name = name.rsplit(".", 1)[0]  # a file path: its stem
    return name or parts.hostname or url


class LiveSource:
    """Frames of one live stream. Iterate it (``for frame in source``), or call ``read(timeout_s)``.

    ``start()`` (called by iteration, ``read`` and ``with``) launches the reader; ``close()`` stops it. Iteration
    ends when the source is closed or its input ended, and raises ``SourceError`` (the one-line reason) when it
    failed. ``on_state(source, old, new, reason)`` is called on every state change, from the source's threads:
    keep it quick.

    Each ``Frame``: ``index`` counts every frame decoded since start, across reconnects (a gap means frames were
    dropped for a slow consumer); ``pts`` is the stream's media time in seconds, restarting with each connection,
    and None for the first frame of an RTSP session (FFmpeg has no RTP time for it yet); ``capture_time`` the wall
    clock when it was decoded; ``decode_ms`` the decode and BGR conversion alone, not the wait for data.

    The ingest pattern: one thread per stream runs ``for frame in source: ring.put(frame)``; a supervisor calls
    ``source.close()`` to stop it and reads ``source.stats()`` for health.
    """

    def __init__(
        self,
        url: str,
        *,
        stream_id: str | None = None,
        options: LiveOptions | None = None,
        on_state: StateCallback | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ValueError(f"LiveSource url must be a non-empty string, got {url!r}")
        self.url = url
        self.stream_id = stream_id if stream_id is not None else _default_stream_id(url)
        self.options = options if options is not None else LiveOptions()
        self._on_state = on_state
        is_url = urlsplit(url).scheme not in ("", "file")
        reconnect = self.options.reconnect_on_end
        self._reconnect_on_end = is_url if reconnect is None else reconnect

        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # frames pending, or the source finished
        self._notify_lock = threading.RLock()  # state changes and their callbacks, in order
        self._stop = threading.Event()
        self._pending: deque[Frame] = deque()
        self._state = StreamState.STARTING
        self._reason: str | None = None
        self._frames = self._dropped = self._reconnects = self._decode_errors = 0
        self._last_frame: float | None = None  # monotonic
        self._ever_live = False
        self._backoff = self.options.backoff_initial_s
        # Reader bookkeeping for the watchdog: which reader is current, what it is doing, since when.
        self._generation = 0
        self._phase = "idle"  # idle | connecting | reading | waiting
        self._progress = time.monotonic()
        self._reader: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._started = False

    # ------------------------------------------------------------------------------------ public API -----
    @property
    def state(self) -> StreamState:
        return self._state

    def stats(self) -> SourceStats:
        with self._lock:
            age = None if self._last_frame is None else time.monotonic() - self._last_frame
            return SourceStats(
                state=self._state,
                frames=self._frames,
                dropped=self._dropped,
                reconnects=self._reconnects,
                decode_errors=self._decode_errors,
                last_frame_age_s=age,
                reason=self._reason,
            )

    def start(self) -> "LiveSource":
        """Launch the reader and the watchdog (once; later calls do nothing)."""
        with self._lock:
            if self._started or self._stop.is_set():
                return self
            self._started = True
            self._generation += 1
            generation = self._generation
        self._reader = self._spawn_reader(generation, delay_s=0.0)
        self._watchdog = threading.Thread(target=self._watch, name=f"live-watchdog[{self.stream_id}]", daemon=True)
        self._watchdog.start()
        return self

    def read(self, timeout_s: float | None = None) -> Frame | None:
        """The oldest pending frame, waiting up to ``timeout_s`` (None: until one comes or the source finishes).

        Returns None on timeout and once the source has ended; raises ``SourceError`` once it failed."""
        self.start()
        with self._ready:
            self._ready.wait_for(lambda: self._pending or self._state in _FINAL or self._stop.is_set(), timeout_s)
            if self._pending:
                return self._pending.popleft()
            if self._state is StreamState.FAILED:
                raise SourceError(self._reason or f"{redact(self.url)}: failed")
            return None

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.read(None)
            if frame is None:
                return
            yield frame

    def close(self, join_timeout_s: float = 1.0) -> None:
        """Stop now: wakes any ``read``, ends the reader and the watchdog. Returns within about
        ``join_timeout_s`` even if the reader is blocked inside PyAV (it then finishes on its own)."""
        self._stop.set()
        with self._ready:
            self._pending.clear()
            self._ready.notify_all()
        self._set_state(StreamState.ENDED, None)
        deadline = time.monotonic() + join_timeout_s
        for thread in (self._watchdog, self._reader):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        reader = self._reader
        if reader is not None and reader.is_alive():
            log.info("%s: reader still inside PyAV at close; it exits when its call returns", redact(self.url))

    def __enter__(self) -> "LiveSource":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LiveSource({redact(self.url)!r}, stream_id={self.stream_id!r}, state={self._state.value})"

    # ------------------------------------------------------------------------------------ state ----------
    def _set_state(
        self,
        new: StreamState,
        reason: str | None,
        *,
        generation: int | None = None,
        still: Callable[[], bool] | None = None,
    ) -> bool:
        """Change state (never out of a final one); with ``generation``, only if that reader is still current;
        with ``still``, only if that condition (checked under the lock) holds."""
        with self._notify_lock:
            with self._ready:
                if generation is not None and (generation != self._generation or self._stop.is_set()):
                    return False
                if still is not None and not still():
                    return False
                old = self._state
                if reason is not None:
                    self._reason = reason
                if old is new or old in _FINAL:
                    return False
                self._state = new
                if new in _FINAL:
                    self._ready.notify_all()
            if reason is not None and new in (StreamState.RECONNECTING, StreamState.FAILED, StreamState.STALLED):
                log.warning("%s: %s -> %s: %s", self.stream_id, old.value, new.value, reason)
            else:
                log.info("%s: %s -> %s", self.stream_id, old.value, new.value)
            if self._on_state is not None:
                try:
                    self._on_state(self, old, new, reason)
                except Exception:  # a consumer's callback must not kill the reader or the watchdog
                    log.exception("%s: on_state callback failed", self.stream_id)
            return True

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self._stop.is_set()

    def _mark(self, generation: int, phase: str) -> None:
        with self._lock:
            if generation == self._generation:
                self._phase = phase
                self._progress = time.monotonic()

    # ------------------------------------------------------------------------------------ reader ---------
    def _spawn_reader(self, generation: int, delay_s: float) -> threading.Thread:
        thread = threading.Thread(
            target=self._run, args=(generation, delay_s), name=f"live-reader[{self.stream_id}]#{generation}", daemon=True
        )
        thread.start()
        return thread

    def _run(self, generation: int, delay_s: float) -> None:
        try:
            if delay_s > 0 and not self._backoff_wait(generation, delay_s):
                return
            while self._current(generation):
                outcome = self._connect_and_decode(generation)
                if not self._current(generation):
                    return
                if outcome.permanent and not self._ever_live:
                    self._set_state(StreamState.FAILED, outcome.reason, generation=generation)
                    return
                if outcome.end_of_input and not self._reconnect_on_end:
                    self._set_state(StreamState.ENDED, outcome.reason, generation=generation)
                    return
                with self._lock:
                    if outcome.had_frames:
                        self._backoff = self.options.backoff_initial_s
                    delay = self._backoff
                    self._backoff = min(self._backoff * 2.0, self.options.backoff_max_s)
                if not self._set_state(StreamState.RECONNECTING, outcome.reason, generation=generation):
                    log.info("%s: %s; retrying in %.1fs", self.stream_id, outcome.reason, delay)
                if not self._backoff_wait(generation, delay):
                    return
                with self._lock:
                    if generation != self._generation:
                        return
                    self._reconnects += 1
        except _Abandoned:
            return
        finally:
            self._mark(generation, "idle")

    def _backoff_wait(self, generation: int, delay_s: float) -> bool:
        self._mark(generation, "waiting")
        return not self._stop.wait(delay_s) and self._current(generation)

    def _connect_and_decode(self, generation: int) -> _Outcome:
        url, opts = self.url, self.options
        name = redact(url)
        self._mark(generation, "connecting")
        problem = _check_host(url)
        if problem is not None:
            return problem
        started = time.monotonic()
        try:
            container = av.open(url, mode="r", options=dict(opts.av_options),
                                timeout=(opts.open_timeout_s, opts.read_timeout_s))
        except (av.FFmpegError, OSError) as exc:
            return _classify_open_error(name, exc, time.monotonic() - started, opts.open_timeout_s)
        try:
            if not self._current(generation):
                raise _Abandoned
            if not container.streams.video:
                kinds = ", ".join(f"{s.type}/{s.codec_context.name}" for s in container.streams) or "none"
                return _Outcome(f"{name}: no video stream (streams: {kinds})", permanent=True)
            return self._decode(generation, container, name)
        finally:
            try:
                container.close()
            except (av.FFmpegError, OSError) as exc:  # closing a dead connection may fail; nothing to keep
                log.debug("%s: close: %s", name, exc)

    def _decode(self, generation: int, container: av.container.InputContainer, name: str) -> _Outcome:
        opts = self.options
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if opts.low_delay:
            stream.codec_context.flags |= int(av.codec.context.Flags.low_delay)
            # Packets may hold part of a picture: FFmpeg's RTP depacketiser hands a multi-slice H.264 frame over
            # in pieces, which the decoder otherwise takes for whole frames (green bands on every frame of /slices).
            stream.codec_context.flags2 |= int(av.codec.context.Flags2.chunks)
        codec = stream.codec_context
        packets = container.demux(stream)
        connected = time.monotonic()
        self._mark(generation, "reading")
        got = 0
        last_frame = connected
        while True:
            if not self._current(generation):
                raise _Abandoned
            try:
                packet = next(packets)
            except StopIteration:
                what = "stream ended (server closed the connection)" if self._reconnect_on_end else "end of input"
                return _Outcome(f"{name}: {what}", end_of_input=True, had_frames=got > 0)
            except (av.FFmpegError, OSError) as exc:
                if isinstance(exc, av.error.ExitError) and opts.read_timeout_s is not None:
                    reason = f"{name}: no data for {opts.read_timeout_s:g}s (read timeout)"
                else:
                    reason = f"{name}: read error: {_ffmpeg_reason(exc)}"
                return _Outcome(reason, had_frames=got > 0)
            self._mark(generation, "reading")
            start = time.perf_counter()
            try:
                vframes = codec.decode(packet)
            except (av.FFmpegError, ValueError) as exc:  # a corrupt packet: skip it, keep the connection
                with self._lock:
                    self._decode_errors += 1
                log.debug("%s: decode error: %s", name, exc)
                vframes = []
            delivered = 0
            for vframe in vframes:
                if vframe.is_corrupt:
                    with self._lock:
                        self._decode_errors += 1
                    continue
                image = _to_bgr(vframe)
                now = time.perf_counter()
                decode_ms = (now - start) * 1000.0
                start = now
                pts = float(vframe.pts * vframe.time_base) if vframe.pts is not None and vframe.time_base else None
                if not self._deliver(generation, image, pts, decode_ms):
                    raise _Abandoned
                delivered += 1
            if delivered:
                got += delivered
                last_frame = time.monotonic()
                # Progress counts from the frame, not only from its packet: a slow decode (a loaded CPU) must not
                # make the watchdog take this reader for stuck before the stream even counts as stalled.
                self._mark(generation, "reading")
                continue
            # Packets keep coming but nothing decodes: give this connection up before the watchdog has to.
            idle = time.monotonic() - last_frame
            if got == 0 and idle > opts.first_frame_timeout_s:
                return _Outcome(f"{name}: no frame decoded within {opts.first_frame_timeout_s:g}s of connecting")
            if got > 0 and idle > opts.stall_after_s:
                return _Outcome(f"{name}: packets but no decodable frame for {opts.stall_after_s:g}s", had_frames=True)

    def _deliver(self, generation: int, image, pts: float | None, decode_ms: float) -> bool:
        with self._ready:
            if generation != self._generation or self._stop.is_set():
                return False
            frame = Frame(
                stream_id=self.stream_id,
                index=self._frames,
                pts=pts,
                capture_time=time.time(),
                image_bgr=image,
                decode_ms=decode_ms,
            )
            self._frames += 1
            self._last_frame = time.monotonic()
            if len(self._pending) >= self.options.max_pending:
                self._pending.popleft()
                self._dropped += 1
            self._pending.append(frame)
            self._ready.notify()
            self._ever_live = True
            was = self._state
        if was is not StreamState.RUNNING:
            self._set_state(StreamState.RUNNING, None, generation=generation)
        return True

    # ------------------------------------------------------------------------------------ watchdog -------
    def _stuck_after_s(self, phase: str) -> float | None:
        """How long a reader may go without progress in ``phase`` before PyAV's own timeouts have failed."""
        opts = self.options
        if phase == "connecting":
            # avformat_open_input and find_stream_info each get open_timeout_s, plus our name lookup.
            return 2.0 * opts.open_timeout_s + opts.stall_after_s
        if phase == "reading":
            return (opts.read_timeout_s or 0.0) + opts.stall_after_s
        return None

    def _watch(self) -> None:
        tick = min(0.1, self.options.stall_after_s / 4.0)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                state, phase, progress = self._state, self._phase, self._progress
                age = None if self._last_frame is None else now - self._last_frame
                generation = self._generation
            if state in _FINAL:
                return
            stall_s = self.options.stall_after_s
            if state is StreamState.RUNNING and age is not None and age > stall_s:
                self._set_state(
                    StreamState.STALLED,
                    f"{redact(self.url)}: no frame for {stall_s:g}s (watchdog)",
                    # A frame may have come since the snapshot above.
                    still=lambda: self._state is StreamState.RUNNING and time.monotonic() - self._last_frame > stall_s,
                )
            limit = self._stuck_after_s(phase)
            if limit is not None and now - progress > limit:
                self._abandon_reader(generation, phase, now - progress)

    def _abandon_reader(self, generation: int, phase: str, waited_s: float) -> None:
        with self._lock:
            if generation != self._generation or self._stop.is_set():
                return
            self._generation += 1
            new_generation = self._generation
            self._phase = "waiting"
            self._progress = time.monotonic()
            self._reconnects += 1
            delay = self._backoff
            self._backoff = min(self._backoff * 2.0, self.options.backoff_max_s)
        reason = f"{redact(self.url)}: reader stuck {phase} for {waited_s:.1f}s; abandoned by the watchdog"
        self._set_state(StreamState.RECONNECTING, reason)
        self._reader = self._spawn_reader(new_generation, delay_s=delay)


def _check_host(url: str) -> _Outcome | None:
    """Resolve the URL's host ourselves: FFmpeg reports an unknown host as a bare EIO, like any I/O fault."""
    parts = urlsplit(url)
    host = parts.hostname
    if not parts.scheme or parts.scheme == "file" or not host:
        return None
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        permanent = exc.errno in _UNKNOWN_HOST
        kind = "unknown host" if permanent else "cannot resolve host"
        return _Outcome(f"{redact(url)}: {kind} {host!r} ({exc.strerror or exc})", permanent=permanent)
    return None


def _classify_open_error(name: str, exc: BaseException, elapsed_s: float, open_timeout_s: float) -> _Outcome:
    if isinstance(exc, av.error.ProtocolNotFoundError):
        scheme = urlsplit(name).scheme
        return _Outcome(f"{name}: unsupported URL scheme {scheme!r} (FFmpeg has no such protocol)", permanent=True)
    if isinstance(exc, _PERMANENT_ERRORS) or isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return _Outcome(f"{name}: {_ffmpeg_reason(exc)}", permanent=True)
    if isinstance(exc, av.error.ExitError) or elapsed_s >= open_timeout_s:
        # The interrupt callback fired; FFmpeg may report it as "Immediate exit" or as invalid data.
        return _Outcome(f"{name}: no answer within {open_timeout_s:g}s (open timeout)")
    return _Outcome(f"{name}: cannot open: {_ffmpeg_reason(exc)}")
