"""LiveSource against a real RTSP server (gst-rtsp-server, started by ``scripts/services up``), and the clock
stamp that measures end-to-end delay from decoded pixels.

The server (scripts/rtsp_server.py) serves /bikes and /vtest (real footage, looping), /clock (a test pattern with
the Unix time in ms stamped into its pixels), /stall (2 s of /clock per session, then silence with the session
open) and /audio (no video). One test stops and restarts the server with ``scripts/services stop|start rtsp``.
"""
from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from stream.clockcode import MIN_WIDTH, clock_rows, decode_clock, encode_clock
from stream.errors import SourceError
from stream.frames import Frame
from stream.live import LiveOptions, LiveSource, StreamState
from stream.sources import open_source
from tests.polling import wait_for
from tests.serve_helpers import free_port, services

NOW_MS = 1_764_000_000_123  # late 2025, a realistic stamp


# ---------------------------------------------------------------------------------------------- helpers -------
def take(source: LiveSource, count: int, timeout_s: float = 20.0) -> list[Frame]:
    frames: list[Frame] = []
    deadline = time.monotonic() + timeout_s
    while len(frames) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"{source.url}: {len(frames)} of {count} frames within {timeout_s:g}s ({source.stats()})")
        frame = source.read(timeout_s=left)
        if frame is not None:
            frames.append(frame)
    return frames


class StateLog:
    """Collects ``on_state`` calls, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.changes: list[tuple[StreamState, StreamState, str | None]] = []

    def __call__(self, source: LiveSource, old: StreamState, new: StreamState, reason: str | None) -> None:
        with self._lock:
            self.changes.append((old, new, reason))

    def states(self) -> list[StreamState]:
        with self._lock:
            return [new for _, new, _ in self.changes]

    def reason_of(self, state: StreamState) -> str | None:
        with self._lock:
            return next((reason for _, new, reason in self.changes if new is state), None)


def median_step(values: list[float]) -> float:
    return float(np.median(np.diff(values)))


# ---------------------------------------------------------------------------------------------- clock code ----
@pytest.mark.parametrize(
    "ms, width",
    [
        (0, 640),                    # the smallest stamp
        (NOW_MS, 640),               # the /clock width
        (NOW_MS, 1280),              # 720p
        (NOW_MS + 1, 768),           # vtest's width: cells of 12 px
        (2**48 - 1, 1920),           # the largest stamp
        (123_456_789, MIN_WIDTH),    # two pixels a cell
        (NOW_MS, 641),               # odd width: cells of unequal size
    ],
)
def test_clock_round_trip(ms: int, width: int) -> None:
    strip = encode_clock(ms, width)
    assert strip.shape == (clock_rows(width), width) and strip.dtype == np.uint8
    assert set(np.unique(strip).tolist()) <= {0, 255}
    frame = np.full((clock_rows(width) + 40, width, 3), 90, np.uint8)
    frame[: strip.shape[0]] = strip[:, :, np.newaxis]
    assert decode_clock(frame) == ms
    assert decode_clock(frame[:, :, 0]) == ms  # a grey image too


def _stamped_bikes_frame(bikes_mp4: Path, ms: int) -> np.ndarray:
    with open_source(bikes_mp4) as src:
        image = next(iter(src)).image_bgr.copy()
    strip = encode_clock(ms, image.shape[1])
    image[: strip.shape[0]] = strip[:, :, np.newaxis]
    return image


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda im: cv2.imdecode(cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 20])[1], 1), id="jpeg-q20"),
        pytest.param(lambda im: np.clip(im + np.random.default_rng(0).normal(0, 25, im.shape), 0, 255).astype(np.uint8),
                     id="noise-sigma25"),
        pytest.param(lambda im: cv2.GaussianBlur(im, (5, 5), 0), id="blur"),
        pytest.param(lambda im: cv2.resize(im, (1280, 544), interpolation=cv2.INTER_LINEAR), id="upscaled-2x"),
        pytest.param(lambda im: (im * 0.6 + 40).astype(np.uint8), id="low-contrast"),
    ],
)
def test_clock_survives_damage(bikes_mp4: Path, damage) -> None:
    assert decode_clock(damage(_stamped_bikes_frame(bikes_mp4, NOW_MS))) == NOW_MS


def test_clock_survives_h264(tmp_path: Path, bikes_mp4: Path) -> None:
    # A real encoder at a low quality (CRF 35), stamps changing every frame as on /clock.
    path = tmp_path / "stamped.mp4"
    base = _stamped_bikes_frame(bikes_mp4, 0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=15, options={"crf": "35", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = base.shape[1], base.shape[0], "yuv420p"
        for i in range(30):
            image = base.copy()
            strip = encode_clock(NOW_MS + 67 * i, image.shape[1])
            image[: strip.shape[0]] = strip[:, :, np.newaxis]
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        out.mux(stream.encode(None))
    with open_source(path) as src:
        got = [decode_clock(frame.image_bgr) for frame in src]
    assert got == [NOW_MS + 67 * i for i in range(30)]


def _flip_cell(image: np.ndarray, cell: int) -> np.ndarray:
    out = image.copy()
    width = out.shape[1]
    x0, x1 = round(cell * width / 64), round((cell + 1) * width / 64)
    out[: clock_rows(width), x0:x1] = 255 - out[: clock_rows(width), x0:x1]
    return out


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda st: np.zeros((360, 640, 3), np.uint8), id="black"),
        pytest.param(lambda st: np.full((360, 640, 3), 255, np.uint8), id="white"),
        pytest.param(lambda st: np.random.default_rng(1).integers(0, 256, (360, 640, 3), dtype=np.uint8), id="noise"),
        pytest.param(lambda st: _flip_cell(st, 30), id="one-ms-bit-flipped"),      # the CRC catches it
        pytest.param(lambda st: _flip_cell(st, 60), id="one-crc-bit-flipped"),
        pytest.param(lambda st: _flip_cell(st, 1), id="marker-broken"),
        pytest.param(lambda st: st[: clock_rows(640) - 1], id="cut-short"),
        pytest.param(lambda st: st[:, :100], id="too-narrow"),
        pytest.param(lambda st: (st * 0.25 + 96).astype(np.uint8), id="washed-out"),  # too little contrast to trust
    ],
)
def test_clock_rejects(make) -> None:
    stamped = np.repeat(np.pad(encode_clock(NOW_MS, 640), ((0, 100), (0, 0)), constant_values=128)[:, :, None], 3, 2)
    assert decode_clock(stamped) == NOW_MS
    assert decode_clock(make(stamped)) is None


@pytest.mark.parametrize(
    "ms, width, error",
    [
        (-1, 640, ValueError),          # before the epoch
        (2**48, 640, ValueError),       # past 48 bits
        (NOW_MS, MIN_WIDTH - 1, ValueError),  # cells under two pixels
        (1.5, 640, TypeError),          # not an int
        (True, 640, TypeError),         # bool is not a time
    ],
)
def test_clock_encode_rejects(ms, width: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_clock(ms, width)


# ---------------------------------------------------------------------------------------------- live ----------
@pytest.mark.parametrize(
    "mount",
    [
        "clock",    # one slice a frame
        "slices",   # four slices a frame: FFmpeg hands each frame over in pieces (green bands before flags2=chunks)
    ],
)
def test_clock_stream_rate_and_delay_from_pixels(rtsp_base: str, mount: str) -> None:
    url = f"{rtsp_base}/{mount}"
    with LiveSource(url, options=LiveOptions(max_pending=256)) as source:
        frames = take(source, 45)
    stats = source.stats()
    assert stats.state is StreamState.ENDED and stats.dropped == 0 and stats.reconnects == 0
    assert [f.index for f in frames] == list(range(45))
    assert all(f.stream_id == mount and f.image_bgr.shape == (360, 640, 3) for f in frames)
    assert all(f.decode_ms >= 0 for f in frames)
    # FFmpeg gives the first frame of an RTSP session no time (the RTP clock is not anchored yet); then it counts.
    pts = [f.pts for f in frames[1:]]
    assert all(p is not None for p in pts) and pts == sorted(pts)
    assert median_step(pts) == pytest.approx(1 / 15, rel=0.15), "media time should advance at the source's 15 fps"
    stamps = [decode_clock(f.image_bgr) for f in frames]
    decoded = [(f, ms) for f, ms in zip(frames, stamps) if ms is not None]
    assert len(decoded) >= 0.95 * len(frames), f"only {len(decoded)} of {len(frames)} stamps readable"
    assert [ms for _, ms in decoded] == sorted(ms for _, ms in decoded)
    delays_ms = np.array([f.capture_time * 1000.0 - ms for f, ms in decoded])
    assert (delays_ms > 0).all() and (delays_ms < 5000).all(), f"implausible delays {delays_ms}"
    wall_fps = (len(frames) - 1) / (frames[-1].capture_time - frames[0].capture_time)
    print(f"\n/{mount}: {wall_fps:.1f} frames/s by wall clock; end-to-end delay from pixels: median "
          f"{np.median(delays_ms):.0f} ms, p90 {np.percentile(delays_ms, 90):.0f} ms, max {delays_ms.max():.0f} ms; "
          f"decode {np.median([f.decode_ms for f in frames]):.1f} ms")


@pytest.mark.parametrize(
    "mount, shape, fps",
    [
        ("bikes", (272, 640, 3), 25),   # samples/bikes.mp4, looping
        ("vtest", (576, 768, 3), 10),   # .cache/media/vtest.avi (scripts/fetch-media) re-encoded to H.264
    ],
)
def test_real_footage_streams(rtsp_base: str, mount: str, shape: tuple[int, int, int], fps: int) -> None:
    with LiveSource(f"{rtsp_base}/{mount}", options=LiveOptions(max_pending=256)) as source:
        frames = take(source, 30)
    assert all(f.image_bgr.shape == shape and f.stream_id == mount for f in frames)
    assert median_step([f.pts for f in frames[1:]]) == pytest.approx(1 / fps, rel=0.15)
    assert all(f.image_bgr.std() > 20 for f in frames), "real footage, not a flat picture"
    motion = [float(cv2.absdiff(a.image_bgr, b.image_bgr).mean()) for a, b in zip(frames, frames[1:])]
    assert max(motion) > 1.0, "consecutive frames should differ (people and bikes move)"
    assert all(decode_clock(f.image_bgr) is None for f in frames), "no clock stamp read out of real footage"


def test_server_stop_and_start_reconnects(rtsp_base: str) -> None:
    status = services("status")
    assert f"RTSP_BASE={rtsp_base}" in status.splitlines(), (
        f"RTSP_BASE={rtsp_base} is not the server scripts/services runs ({status!r})")
    log = StateLog()
    source = LiveSource(f"{rtsp_base}/clock", options=LiveOptions(max_pending=256), on_state=log)
    try:
        before = take(source, 5)
        services("stop", "rtsp")
        try:
            # Server gone: PyAV's loop ends without an exception; then connections are refused while it is down.
            wait_for(lambda: source.state is StreamState.RECONNECTING, 15, "reconnecting state after the server stopped")
            wait_for(lambda: source.stats().reconnects >= 1, 15, "retry while the server is down")
            assert source.state is StreamState.RECONNECTING
        finally:
            services("start", "rtsp")
        back_at = time.monotonic()
        wait_for(lambda: source.state is StreamState.RUNNING, 30, "live state after the server came back")
        print(f"\nlive again {time.monotonic() - back_at:.1f}s after `scripts/services start rtsp` returned "
              f"({source.stats().reconnects} reconnect attempts)")
        after = take(source, 5)
    finally:
        source.close()
    assert after[0].index > before[-1].index, "the frame index keeps counting across reconnects"
    assert any(decode_clock(f.image_bgr) is not None for f in after)
    states = log.states()
    assert states[:2] == [StreamState.RUNNING, StreamState.RECONNECTING] or states[:3] == [
        StreamState.RUNNING, StreamState.STALLED, StreamState.RECONNECTING], states
    assert StreamState.RUNNING in states[2:] and states[-1] is StreamState.ENDED, states
    reason = log.reason_of(StreamState.RECONNECTING)
    assert reason and reason.startswith(f"{rtsp_base}/clock: ") and "\n" not in reason


@pytest.mark.parametrize(
    "read_timeout_s, reconnect_reason",
    [
        (3.0, "no data for 3s (read timeout)"),     # PyAV's read timeout ends the hung connection
        (None, "abandoned by the watchdog"),        # no read timeout: PyAV would block; the watchdog moves on
    ],
)
def test_silent_server_is_stalled_then_reconnected(rtsp_base: str, read_timeout_s, reconnect_reason: str) -> None:
    log = StateLog()
    options = LiveOptions(stall_after_s=1.0, read_timeout_s=read_timeout_s)
    with LiveSource(f"{rtsp_base}/stall", options=options, on_state=log) as source:
        take(source, 1)
        wait_for(lambda: StreamState.STALLED in log.states(), 15, "stalled state once /stall went silent")
        wait_for(lambda: StreamState.RECONNECTING in log.states(), 15, "reconnect of the silent stream")
        # A fresh /stall session sends again: the source recovers by itself.
        wait_for(lambda: log.states().count(StreamState.RUNNING) >= 2 and source.state is StreamState.RUNNING, 30,
                 "live state after reconnecting")
    states = log.states()
    assert states.index(StreamState.STALLED) < states.index(StreamState.RECONNECTING), states
    assert "(watchdog)" in log.reason_of(StreamState.STALLED)
    assert reconnect_reason in log.reason_of(StreamState.RECONNECTING)


@pytest.mark.parametrize(
    "make_url, expected",
    [
        (lambda base: base.replace("rtsp://", "rtspx://") + "/clock", "unsupported URL scheme 'rtspx'"),
        (lambda base: "rtsp://no-such-host.invalid:8554/cam", "unknown host 'no-such-host.invalid'"),
        (lambda base: f"{base}/no-such-mount", "404 Not Found"),
        (lambda base: f"{base}/audio", "no video stream (streams: audio/pcm_alaw)"),
    ],
    ids=["wrong-scheme", "unknown-host", "unknown-mount", "audio-only"],
)
def test_permanent_errors_fail_once_with_one_line(rtsp_base: str, make_url, expected: str) -> None:
    url = make_url(rtsp_base)
    log = StateLog()
    source = LiveSource(url, on_state=log)
    with source:
        with pytest.raises(SourceError) as raised:
            for _ in source:
                pytest.fail("no frame expected")
        stats = source.stats()
    assert stats.state is StreamState.FAILED and stats.reconnects == 0 and stats.frames == 0
    assert log.states() == [StreamState.FAILED], "no retry for a permanent error"
    message = str(raised.value)
    assert message == stats.reason and "\n" not in message
    assert message.startswith(f"{url}: ") and expected in message


def test_password_never_in_messages() -> None:
    source = LiveSource("rtsp://admin:s3cret@no-such-host.invalid/cam")
    with source:
        with pytest.raises(SourceError, match=r"rtsp://admin:\*\*\*@no-such-host\.invalid/cam: unknown host"):
            source.read(timeout_s=10)
    assert "s3cret" not in str(source.stats()) and "s3cret" not in repr(source)


def test_refused_connection_is_retried_not_failed() -> None:
    url = f"rtsp://127.0.0.1:{free_port()}/cam"
    options = LiveOptions(backoff_initial_s=0.05, backoff_max_s=0.2)
    with LiveSource(url, options=options) as source:
        wait_for(lambda: source.stats().reconnects >= 3, 15, "three retries of a refused connection")
    stats = source.stats()
    assert stats.state is StreamState.ENDED  # closed by us, never failed
    assert stats.reason == f"{url}: cannot open: Connection refused"


@pytest.mark.timeout(20)  # the bound: the open timeout below is 60 s
def test_close_while_connecting_to_a_blackhole() -> None:
    # A port whose listener never accepts: the kernel completes the handshake, nobody answers RTSP OPTIONS.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"rtsp://127.0.0.1:{listener.getsockname()[1]}/cam"
        source = LiveSource(url, options=LiveOptions(open_timeout_s=60.0)).start()
        wait_for(lambda: select.select([listener], [], [], 0)[0], 10, "PyAV connecting to the blackhole")
        assert source.state is StreamState.STARTING
        source.close()
        assert source.state is StreamState.ENDED
        assert source.read(timeout_s=None) is None  # a finished source never blocks a reader


@pytest.mark.timeout(30)
def test_close_wakes_a_consumer_blocked_on_a_silent_stream(rtsp_base: str) -> None:
    # A long read timeout and stall bound: the reader is blocked inside PyAV when close() comes (and leaves by
    # itself when its read times out, after the test).
    options = LiveOptions(read_timeout_s=20.0, stall_after_s=60.0)
    source = LiveSource(f"{rtsp_base}/stall", options=options).start()
    got: list[Frame] = []
    consumer = threading.Thread(target=lambda: got.extend(source), daemon=True)
    consumer.start()
    wait_for(lambda: got, 15, "a first frame")
    wait_for(lambda: source.stats().last_frame_age_s > 1.0, 15, "/stall to go silent")
    source.close()
    consumer.join(10)
    assert not consumer.is_alive(), "iteration must end when the source is closed"
    assert source.state is StreamState.ENDED


def test_file_path_decodes_to_the_end_and_ends(bikes_mp4: Path) -> None:
    log = StateLog()
    with LiveSource(str(bikes_mp4), options=LiveOptions(max_pending=300), on_state=log) as source:
        frames = list(source)
        stats = source.stats()
    assert [f.index for f in frames] == list(range(250)) and stats.dropped == 0
    assert frames[0].stream_id == "bikes" and frames[0].image_bgr.shape == (272, 640, 3)
    assert log.states() == [StreamState.RUNNING, StreamState.ENDED]
    assert stats.reason == f"{bikes_mp4}: end of input"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"open_timeout_s": 0}, "open_timeout_s must be > 0"),
        ({"read_timeout_s": -1.0}, "read_timeout_s must be > 0 or None"),
        ({"stall_after_s": 0}, "stall_after_s must be > 0"),
        ({"backoff_initial_s": 2.0, "backoff_max_s": 1.0}, "backoff_max_s (1.0) must be >= backoff_initial_s (2.0)"),
        ({"max_pending": 0}, "max_pending must be >= 1"),
    ],
)
def test_options_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^LiveOptions.{message}".replace("(", r"\(").replace(")", r"\)")):
        LiveOptions(**kwargs)


def test_url_must_be_given() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        LiveSource("  ")


def test_stream_id_from_url() -> None:
    assert LiveSource("rtsp://127.0.0.1:8554/cams/door").stream_id == "door"
    assert LiveSource("rtsp://camera.local").stream_id == "camera.local"
    assert LiveSource("rtsp://h/x", stream_id="front").stream_id == "front"
