#!/usr/bin/python3
"""A real RTSP server for vidrec's tests: GStreamer's gst-rtsp-server on loopback, run by Debian's Python.

    /usr/bin/python3 scripts/rtsp_server.py --port 18554            # serve until SIGTERM / SIGINT
    /usr/bin/python3 scripts/rtsp_server.py --describe rtsp://127.0.0.1:18554/clock   # readiness probe

Mounts (every video one H.264 over RTP, constrained baseline, x264 ``tune=zerolatency``, a keyframe a second,
SPS/PPS repeated before every keyframe so that a client joining late or reconnecting starts within ~1 s):

- ``/bikes``  samples/bikes.mp4 (640x272, 25 fps) decoded and re-encoded, looping forever.
- ``/vtest``  .cache/media/vtest.avi (768x576, 10 fps, MS-MPEG4v3) re-encoded, looping (skipped, with a
  warning, when the file is missing: ``scripts/fetch-media`` fetches it).
- ``/clock``  ``videotestsrc is-live=true pattern=ball`` 640x360 at 15 fps with the Unix time in ms stamped
  into the top rows of every frame just before it is encoded (``stream/clockcode.py``), so a client measures
  end-to-end delay from the pixels it decodes.
- ``/street720`` .cache/media/vtest.avi (real pedestrians) scaled to 1280x720 (stretched from 4:3) at 15 fps
  (frames repeated from its 10 fps), looping, with the /clock stamp in its top rows: a 720p camera for
  ``bench/live_latency.py``, whose delay a client measures from the pixels. Shared: N clients are N RTSP
  sessions of one encoder (one x264 720p encode whatever the client count, so the server's own CPU use does not
  grow with the benchmark's camera count), every client getting the same frames at the same instants.
- ``/slices`` /clock encoded as four slices a frame (cameras do this; FFmpeg hands such frames over in pieces).
- ``/stall``  the /clock picture for ``--stall-after-s`` seconds (2) per client session, then nothing while the
  session stays open: a camera that hangs. Not shared: every connection gets its own 2 s.
- ``/audio``  audio only (A-law sine), for "no video stream" errors.

The file and clock mounts are fed from Python through ``appsrc``: a small decode (or ``videotestsrc``)
pipeline per media ends in an ``appsink``, a thread paces its frames in real time and pushes them into the
served pipeline, whose ``appsrc`` is live and leaky (it never queues more than two frames, so a slow encoder
drops frames rather than adding delay). Looping a file is restarting its decode pipeline at EOS. A media exists
only while clients use it (shared between them, except /stall), so an idle server costs nothing.

Needs the Debian packages gir1.2-gst-rtsp-server-1.0 python3-gi python3-numpy gstreamer1.0-plugins-{base,good,
bad,ugly} gstreamer1.0-libav (``scripts/services deps`` installs them). Logs go to stderr.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger("rtsp_server")

CLOCK_WIDTH, CLOCK_HEIGHT, CLOCK_FPS = 640, 360, 15
STREET_WIDTH, STREET_HEIGHT, STREET_FPS = 1280, 720, 15


# ------------------------------------------------------------------------------------------------ probe ------
def describe(url: str, timeout_s: float) -> str | None:
    """Send one RTSP DESCRIBE; return None when it answers 200 with a video track, else why not (one line)."""
    parts = urlsplit(url)
    if parts.scheme != "rtsp" or not parts.hostname:
        return f"{url}: not an rtsp:// URL"
    request = (
        f"DESCRIBE {url} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\nUser-Agent: vidrec-probe\r\n\r\n"
    ).encode()
    try:
        with socket.create_connection((parts.hostname, parts.port or 554), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(request)
            data = b""
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if sep:
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    if len(body) >= length:
                        break
    except OSError as exc:
        return f"{url}: {exc.strerror or exc}"
    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200 " not in status + " ":
        return f"{url}: {status or 'no answer'}"
    if b"m=video" not in data:
        return f"{url}: DESCRIBE answered without a video track"
    return None


# ------------------------------------------------------------------------------------------------ serving ----
def main_serve(args: argparse.Namespace) -> int:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstApp", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    import numpy as np
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    clockcode = _load_clockcode()

    def check_elements(*names: str) -> None:
        missing = [n for n in names if Gst.ElementFactory.find(n) is None]
        if missing:
            raise SystemExit(f"rtsp_server: GStreamer elements missing: {', '.join(missing)} (run scripts/services deps)")

    check_elements("appsrc", "appsink", "videotestsrc", "videoconvert", "decodebin", "x264enc", "rtph264pay",
                   "qtdemux", "avidemux", "avdec_h264", "audiotestsrc", "alawenc", "rtppcmapay")

    class Producer:
        """Raw I420 frames from a small GStreamer pipeline ending in an appsink; builds it afresh at EOS (loops)."""

        def __init__(self, description: str, name: str) -> None:
            self.name = name
            self.description = description
            self._build()

        def _build(self) -> None:
            self.pipeline = Gst.parse_launch(self.description)
            self.sink = self.pipeline.get_by_name("sink")
            self.pipeline.set_state(Gst.State.PLAYING)

        def next(self, stop: threading.Event) -> Gst.Sample | None:
            while not stop.is_set():
                sample = self.sink.emit("try-pull-sample", 200 * Gst.MSECOND)
                if sample is not None:
                    return sample
                bus = self.pipeline.get_bus()
                msg = bus.pop_filtered(Gst.MessageType.ERROR)
                if msg is not None:
                    err, debug = msg.parse_error()
                    raise RuntimeError(f"{self.name}: {err.message} ({debug})")
                if self.sink.get_property("eos"):
                    # Loop: a new decode pipeline from the start of the file. Not the same pipeline set to NULL
                    # and back to PLAYING: parse_launch links decodebin's pad once, when it first appears, so
                    # the second run's new pad stayed unlinked and the demuxer stopped ("not-linked").
                    self.pipeline.set_state(Gst.State.NULL)
                    self._build()
            return None

        def close(self) -> None:
            self.pipeline.set_state(Gst.State.NULL)

    def file_producer(path: Path) -> Producer:
        location = str(path).replace("\\", "\\\\").replace('"', '\\"')
        return Producer(
            f'filesrc location="{location}" ! decodebin ! videoconvert ! video/x-raw,format=I420 '
            "! appsink name=sink sync=false max-buffers=2 emit-signals=false",
            name=str(path),
        )

    def scaled_file_producer(path: Path, width: int, height: int, fps: int) -> Producer:
        # videorate repeats (or drops) frames to reach ``fps``; the appsink's caps carry it, so the feeder paces
        # at that rate. Scaling ignores the aspect ratio (a camera's picture fills its frame).
        location = str(path).replace("\\", "\\\\").replace('"', '\\"')
        return Producer(
            f'filesrc location="{location}" ! decodebin ! videoconvert ! videoscale ! videorate '
            f"! video/x-raw,format=I420,width={width},height={height},framerate={fps}/1,pixel-aspect-ratio=1/1 "
            "! appsink name=sink sync=false max-buffers=2 emit-signals=false",
            name=f"{path} at {width}x{height}",
        )

    def clock_producer() -> Producer:
        return Producer(
            "videotestsrc is-live=true pattern=ball "
            f"! video/x-raw,format=I420,width={CLOCK_WIDTH},height={CLOCK_HEIGHT},framerate={CLOCK_FPS}/1 "
            "! appsink name=sink sync=false max-buffers=2 drop=true emit-signals=false",
            name="videotestsrc",
        )

    def stamp(data: bytes, width: int, height: int) -> bytes:
        frame = np.frombuffer(data, dtype=np.uint8).copy()
        luma = frame[: width * height].reshape(height, width)
        chroma = frame[width * height:].reshape(2, height // 2, width // 2)
        strip = clockcode.encode_clock(time.time_ns() // 1_000_000, width)
        luma[: strip.shape[0]] = strip
        chroma[:, : strip.shape[0] // 2] = 128  # neutral colour under the stamp: pure black and white
        return frame.tobytes()

    class Feeder(threading.Thread):
        """Feeds one served media's appsrc in real time until the media goes away."""

        def __init__(self, mount: str, appsrc: Gst.Element, make: Callable[[], Producer], stamped: bool,
                     paced: bool, live_for_s: float | None) -> None:
            super().__init__(name=f"feed{mount}", daemon=True)
            self.mount, self.appsrc, self.make = mount, appsrc, make
            self.stamped, self.paced, self.live_for_s = stamped, paced, live_for_s
            self.stop_event = threading.Event()

        def stop(self) -> None:
            self.stop_event.set()

        def run(self) -> None:
            producer: Producer | None = None
            try:
                producer = self.make()
                started: float | None = None
                flushing_since = 0.0
                pushed = 0
                due = time.monotonic()
                while not self.stop_event.is_set():
                    sample = producer.next(self.stop_event)
                    if sample is None:
                        break
                    caps = sample.get_caps()
                    st = caps.get_structure(0)
                    width, height = st.get_value("width"), st.get_value("height")
                    ok, num, den = st.get_fraction("framerate")
                    fps = num / den if ok and num > 0 and den > 0 else 25.0
                    if self.appsrc.get_property("caps") is None:
                        self.appsrc.set_property("caps", Gst.Caps.from_string(
                            f"video/x-raw,format=I420,width={width},height={height},framerate={num}/{den}"))
                    if self.paced:
                        # Real time for a file: one frame per 1/fps; after a stall, restart the schedule.
                        now = time.monotonic()
                        due = max(due + 1.0 / fps, now - 1.0 / fps)
                        if self.stop_event.wait(max(0.0, due - now)):
                            break
                    now = time.monotonic()
                    started = now if started is None else started
                    if self.live_for_s is not None and now - started > self.live_for_s:
                        log.info("%s: went silent after %.1fs (session kept open)", self.mount, self.live_for_s)
                        producer.close()  # nothing more to make; the session stays until the client leaves
                        self.stop_event.wait()
                        break
                    buf = sample.get_buffer()
                    data = buf.extract_dup(0, buf.get_size())
                    if self.stamped:
                        data = stamp(data, width, height)
                    ret = self.appsrc.emit("push-buffer", Gst.Buffer.new_wrapped(data))
                    if ret == Gst.FlowReturn.FLUSHING and not pushed:
                        # Not started yet: media-configure can come before the pipeline leaves NULL. Drop this
                        # frame and try the next; leaving would starve a media that is about to start, and its
                        # clients would wait for it until they time out.
                        if not flushing_since:
                            flushing_since = now
                            log.debug("%s: media not running yet; waiting", self.mount)
                        elif now - flushing_since > 30.0:
                            log.warning("%s: media not running after 30s; feeder stops", self.mount)
                            break
                        continue
                    if ret != Gst.FlowReturn.OK:
                        # FLUSHING after frames went out: the media is being torn down.
                        log.debug("%s: push-buffer %s: feeder stops", self.mount, ret.value_nick)
                        break
                    pushed += 1
            except Exception:  # a feeder dies alone; the media's clients see the stream end
                log.exception("%s: feeder failed", self.mount)
            finally:
                if producer is not None:
                    producer.close()
                feeders.discard(self)

    # threads=1: one slice per frame, the plain case, whatever the core count (tune=zerolatency otherwise picks
    # x264's sliced threads: one slice per thread). /slices sends four slices a frame on purpose: FFmpeg's RTP
    # depacketiser hands such frames over in pieces, which a client must decode as such.
    encode = (
        "videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast threads=1 key-int-max={gop}{x264} "
        "! video/x-h264,profile=constrained-baseline ! rtph264pay name=pay0 pt=96 config-interval=-1"
    )
    appsrc = ("appsrc name=src is-live=true format=time do-timestamp=true block=false "
              "max-buffers=2 leaky-type=downstream")

    def add_fed_mount(mounts, path: str, make: Callable[[], Producer], gop: int, *, stamped: bool, paced: bool,
                      shared: bool, live_for_s: float | None = None, x264: str = "") -> None:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(f"( {appsrc} ! {encode.format(gop=gop, x264=x264)} )")
        factory.set_shared(shared)

        def on_configure(_factory, media) -> None:
            src = media.get_element().get_by_name("src")
            feeder = Feeder(path, src, make, stamped, paced, live_for_s)
            media.connect("unprepared", lambda _m: feeder.stop())
            feeders.add(feeder)
            feeder.start()
            log.info("%s: media configured (%s)", path, "shared" if shared else "per session")

        factory.connect("media-configure", on_configure)
        mounts.add_factory(path, factory)

    feeders: set = set()
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()

    bikes = Path(args.bikes)
    if not bikes.is_file():
        raise SystemExit(f"rtsp_server: {bikes}: no such file (needed for /bikes)")
    add_fed_mount(mounts, "/bikes", lambda: file_producer(bikes), 25, stamped=False, paced=True, shared=True)
    vtest = Path(args.vtest)
    if vtest.is_file():
        add_fed_mount(mounts, "/vtest", lambda: file_producer(vtest), 10, stamped=False, paced=True, shared=True)
        add_fed_mount(mounts, "/street720",
                      lambda: scaled_file_producer(vtest, STREET_WIDTH, STREET_HEIGHT, STREET_FPS),
                      STREET_FPS, stamped=True, paced=True, shared=True)
    else:
        log.warning("%s missing (scripts/fetch-media fetches it): /vtest and /street720 not served", vtest)
    add_fed_mount(mounts, "/clock", clock_producer, CLOCK_FPS, stamped=True, paced=False, shared=True)
    add_fed_mount(mounts, "/slices", clock_producer, CLOCK_FPS, stamped=True, paced=False, shared=True,
                  x264=' option-string="slices=4"')
    add_fed_mount(mounts, "/stall", clock_producer, CLOCK_FPS, stamped=True, paced=False, shared=False,
                  live_for_s=args.stall_after_s)
    audio = GstRtspServer.RTSPMediaFactory()
    audio.set_launch("( audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample "
                     "! audio/x-raw,rate=8000,channels=1 ! alawenc ! rtppcmapay name=pay0 pt=8 )")
    audio.set_shared(True)
    mounts.add_factory("/audio", audio)

    if server.attach(None) == 0:
        raise SystemExit(f"rtsp_server: cannot listen on {args.host}:{args.port} (port taken?)")
    loop = GLib.MainLoop()
    # Sessions of clients that vanished without TEARDOWN are reaped every few seconds.
    GLib.timeout_add_seconds(2, lambda: (server.get_session_pool().cleanup(), True)[1])
    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, loop.quit)
    log.info("serving rtsp://%s:%d/{bikes,vtest,street720,clock,slices,stall,audio}", args.host, args.port)
    loop.run()
    log.info("stopping")
    for feeder in list(feeders):
        feeder.stop()
    return 0


def _load_clockcode():
    """stream/clockcode.py by path: the server shares the client's code without importing the vidrec package
    (whose other modules need the venv)."""
    spec = importlib.util.spec_from_file_location("vidrec_clockcode", REPO / "stream" / "clockcode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18554)
    parser.add_argument("--bikes", default=str(REPO / "samples" / "bikes.mp4"))
    parser.add_argument("--vtest", default=str(REPO / ".cache" / "media" / "vtest.avi"))
    parser.add_argument("--stall-after-s", type=float, default=2.0, help="how long /stall sends before going silent")
    parser.add_argument("--debug", action="store_true", help="log every feeder event")
    parser.add_argument("--describe", metavar="URL", help="probe: DESCRIBE URL, exit 0 when it serves video")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="probe timeout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s rtsp_server %(message)s")
    if args.describe:
        problem = describe(args.describe, args.timeout_s)
        if problem:
            print(f"rtsp_server: {problem}", file=sys.stderr)
            return 1
        return 0
    return main_serve(args)


if __name__ == "__main__":
    sys.exit(main())
