"""Offline frame sources: a video file, a still image or a folder of images, as ``Frame``s.

``open_source`` opens eagerly, so a missing, empty, non-video or index-less file fails at once with a
``SourceError``; errors found while decoding (a corrupt packet, a file that ends far short of what its
header declares) are raised from the iteration. Every source is single-pass, stoppable at any frame
(``close()`` or leaving the ``with`` block releases the decoder) and closes itself when exhausted.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import av
import cv2
import numpy as np

from stream.errors import SourceError
from stream.frames import Frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

# A decode that stops below this share of what the header declares is called truncated. Not tighter:
# some declared figures legitimately overshoot what decodes (an AVI header counting dropped/null
# frames, a badly muxed file), and failing a job that produced 95 % of its frames costs more than a
# missing tail; shortfalls between this and _WARN_SHARE are only logged.
_TRUNCATED_SHARE = 0.90
_WARN_SHARE = 0.98

# Demuxers whose duration is read from an index written when the file was finalised (moov, Segment
# Info) and that honour edit lists: for them duration is the trustworthy "declared" length, while the
# sample count may include pre-roll frames an edit list hides (a `-c copy` cut). Elsewhere (AVI:
# FFmpeg re-derives the duration from the chunks actually present) the header's frame count is.
_DURATION_AUTHORITATIVE = ("mov", "matroska")

# FFmpeg demuxers that mean "a single picture", found by content when the suffix did not say so.
_IMAGE_FORMATS = ("image2", "_pipe")


class FrameSource(Protocol):
    """What ``open_source`` returns: an iterable of ``Frame`` that can be stopped."""

    stream_id: str
    frame_count: int | None
    fps: float | None

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "FrameSource": ...

    def __exit__(self, *exc_info: object) -> None: ...


def open_source(input: str | Path, *, stream_id: str | None = None, every_nth: int = 1) -> FrameSource:
    """Open a video file, a still image or a folder of images.

    ``every_nth`` > 1 yields only frames whose index is a multiple of it (all frames are still
    decoded, as inter-coded video needs them, but skipped ones are not converted to BGR).
    ``stream_id`` defaults to the file's stem or the folder's name.
    """
    if every_nth < 1:
        raise ValueError(f"every_nth must be >= 1, got {every_nth}")
    path = Path(input)
    if path.is_dir():
        sid = stream_id if stream_id is not None else (path.resolve().name or str(path))
        return ImageFolderSource(path, stream_id=sid, every_nth=every_nth)
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if not path.is_file():
        raise SourceError(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SourceError(f"{path}: cannot stat ({exc.strerror or exc})") from exc
    if size == 0:
        raise SourceError(f"{path}: file is empty (0 bytes), not a video or image")
    sid = stream_id if stream_id is not None else (path.stem or path.name)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return StillImageSource(path, stream_id=sid)
    return VideoFileSource(path, stream_id=sid, every_nth=every_nth)


class _SourceBase:
    """Single-pass iteration with a lock so that ``close()`` from another thread never frees the
    decoder while a frame is being decoded (it waits for that one frame)."""

    stream_id: str
    frame_count: int | None = None
    fps: float | None = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._iterated = False

    def __iter__(self) -> Iterator[Frame]:
        if self._iterated:
            raise RuntimeError(f"source {self.stream_id!r} is single-pass and was already iterated")
        self._iterated = True
        return self._frames()

    def _frames(self) -> Iterator[Frame]:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._release()

    def _release(self) -> None:
        """Free resources; called once, with the lock held."""

    def __enter__(self) -> "_SourceBase":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_image(path: Path) -> np.ndarray:
    """BGR uint8 of one picture file; cv2 sniffs the format by content, not by suffix."""
    try:
        # imdecode(fromfile) rather than imread: it reads non-ASCII paths on every platform.
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise SourceError(f"{path}: not a readable image (corrupt or unsupported format)")
    return image


def _frame_from_image(path: Path, stream_id: str, index: int) -> Frame:
    start = time.perf_counter()
    image = _read_image(path)
    decode_ms = (time.perf_counter() - start) * 1000.0
    return Frame(stream_id=stream_id, index=index, pts=None, capture_time=time.time(), image_bgr=image, decode_ms=decode_ms)


class StillImageSource(_SourceBase):
    """One picture as one frame (pts None). The image is decoded at open, so a bad file fails there."""

    def __init__(self, path: Path, *, stream_id: str) -> None:
        super().__init__()
        self.path = path
        self.stream_id = stream_id
        self.frame_count = 1
        self._frame: Frame | None = _frame_from_image(path, stream_id, 0)

    def _frames(self) -> Iterator[Frame]:
        with self._lock:
            frame, self._frame = self._frame, None
        if frame is not None and not self._closed:
            yield frame
        self.close()

    def _release(self) -> None:
        self._frame = None


class ImageFolderSource(_SourceBase):
    """The pictures directly in a folder, in name order (plain string sort, as ``ls`` shows them:
    zero-pad numbered names). Hidden files and sub-folders are ignored; frame i is the i-th file."""

    def __init__(self, path: Path, *, stream_id: str, every_nth: int = 1) -> None:
        super().__init__()
        self.path = path
        self.stream_id = stream_id
        self.every_nth = every_nth
        try:
            entries = [
                p for p in path.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
            ]
        except OSError as exc:
            raise SourceError(f"{path}: cannot list folder ({exc.strerror or exc})") from exc
        self.files = sorted(entries, key=lambda p: p.name)
        if not self.files:
            raise SourceError(f"{path}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.frame_count = -(-len(self.files) // every_nth)

    def _frames(self) -> Iterator[Frame]:
        for index in range(0, len(self.files), self.every_nth):
            with self._lock:
                if self._closed:
                    return
                frame = _frame_from_image(self.files[index], self.stream_id, index)
            yield frame
        self.close()


class VideoFileSource(_SourceBase):
    """A video file decoded with PyAV (first video stream, frame threading)."""

    def __init__(self, path: Path, *, stream_id: str, every_nth: int = 1) -> None:
        super().__init__()
        self.path = path
        self.stream_id = stream_id
        self.every_nth = every_nth
        self._still = False
        try:
            self._container = av.open(str(path), mode="r")
        except av.FFmpegError as exc:
            raise SourceError(_open_error_message(path, exc)) from exc
        except OSError as exc:
            raise SourceError(f"{path}: cannot open ({exc.strerror or exc})") from exc
        try:
            self._setup()
        except BaseException:
            self._container.close()
            raise

    def _setup(self) -> None:
        container = self._container
        if not container.streams.video:
            kinds = ", ".join(f"{s.type}/{s.codec_context.name}" for s in container.streams) or "none"
            raise SourceError(f"{self.path}: no video stream (streams: {kinds})")
        self._stream = stream = container.streams.video[0]
        # FFmpeg's default slice threading is effectively single-threaded for H.264: frame threads.
        stream.thread_type = "AUTO"
        fmt = container.format.name
        self._still = any(marker in fmt for marker in _IMAGE_FORMATS)
        if self._still:
            # A picture whose suffix did not say so: one frame, no media time.
            self.fps = None
            self.frame_count = 1
            self._declared_frames = self._declared_seconds = None
            return
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else None
        self._declared_frames = stream.frames if stream.frames and stream.frames > 0 else None
        seconds: float | None = None
        if stream.duration is not None and stream.time_base is not None:
            seconds = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            seconds = container.duration / av.time_base
        self._declared_seconds = seconds if seconds and seconds > 0 else None
        total = self._declared_frames
        if total is None and self._declared_seconds is not None and self.fps:
            total = round(self._declared_seconds * self.fps)
        self.frame_count = -(-total // self.every_nth) if total else None

    def _release(self) -> None:
        self._container.close()

    def _frames(self) -> Iterator[Frame]:
        decoder = self._container.decode(self._stream)
        index = 0
        first_pts: float | None = None
        last_end: float | None = None
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    start = time.perf_counter()
                    try:
                        vframe = next(decoder)
                    except StopIteration:
                        break
                    except (av.FFmpegError, OSError) as exc:
                        raise SourceError(
                            f"{self.path}: decode error at frame {index}: {_ffmpeg_reason(exc)}"
                        ) from exc
                    pts = self._pts_seconds(vframe, index)
                    if pts is not None and not self._still:
                        first_pts = pts if first_pts is None else first_pts
                        last_end = pts + (1.0 / self.fps if self.fps else 0.0)
                    frame: Frame | None = None
                    if index % self.every_nth == 0:
                        image = _to_bgr(vframe)
                        frame = Frame(
                            stream_id=self.stream_id,
                            index=index,
                            pts=None if self._still else pts,
                            capture_time=time.time(),
                            image_bgr=image,
                            decode_ms=(time.perf_counter() - start) * 1000.0,
                        )
                    index += 1
                if frame is not None:
                    yield frame
            self._check_complete(index, first_pts, last_end)
        finally:
            # Exhausted, failed or abandoned mid-way (generator closed): release the decoder now.
            decoder.close()
            self.close()

    def _pts_seconds(self, vframe: av.VideoFrame, index: int) -> float | None:
        if vframe.pts is not None and vframe.time_base is not None:
            return float(vframe.pts * vframe.time_base)
        if self.fps:
            return index / self.fps
        return None

    def _check_complete(self, decoded: int, first_pts: float | None, last_end: float | None) -> None:
        """Raise when decoding ended far short of the length the file declares.

        A truncated file whose index survives (MP4 with moov at the front, an AVI) demuxes without
        error up to where the data stops; only the header tells that more was promised.
        """
        if self._still:
            return
        if decoded == 0:
            raise SourceError(f"{self.path}: no frame could be decoded (truncated or corrupt?)")
        fmt = self._container.format.name
        use_duration = any(name in fmt for name in _DURATION_AUTHORITATIVE) or self._declared_frames is None
        if use_duration and self._declared_seconds and first_pts is not None and last_end is not None:
            got = last_end - min(first_pts, self._start_seconds())
            share = got / self._declared_seconds
            expected = round(self._declared_seconds * self.fps) if self.fps else None
            detail = f"{got:.2f}s of {self._declared_seconds:.2f}s"
        elif self._declared_frames:
            share = decoded / self._declared_frames
            expected = self._declared_frames
            detail = "by the header's frame count"
        else:
            return  # nothing declared (e.g. MPEG-TS): a short file cannot be told from a short video
        of = f"~{expected}" if expected is not None else "the declared"
        if share < _TRUNCATED_SHARE:
            raise SourceError(f"{self.path}: video ended after {decoded} of {of} frames ({detail}): truncated?")
        if share < _WARN_SHARE:
            log.warning("%s: video ended after %d of %s frames (%s): truncated?", self.path, decoded, of, detail)

    def _start_seconds(self) -> float:
        stream = self._stream
        if stream.start_time is not None and stream.time_base is not None:
            return float(stream.start_time * stream.time_base)
        return 0.0


def _to_bgr(vframe: av.VideoFrame) -> np.ndarray:
    # yuv420p plane copy + OpenCV's I420 conversion is ~1.6x faster than swscale's bgr24 here.
    # PyAV's yuv420p ndarray needs even dimensions; full-range (yuvj420p) and other formats go
    # through swscale, which knows their range.
    if vframe.format.name == "yuv420p" and vframe.width % 2 == 0 and vframe.height % 2 == 0:
        return cv2.cvtColor(vframe.to_ndarray(), cv2.COLOR_YUV2BGR_I420)
    return vframe.to_ndarray(format="bgr24")


def _ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's own words without the errno and the repeated file name."""
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _open_error_message(path: Path, exc: BaseException) -> str:
    reason = _ffmpeg_reason(exc)
    try:
        with path.open("rb") as fh:
            head = fh.read(12)
    except OSError:
        head = b""
    if head[4:8] == b"ftyp":
        # An MP4/MOV whose moov index is missing: with the usual layout (moov after the media data)
        # any truncation loses it, as does a recording that was never finalised.
        return f"{path}: MP4/MOV file without a readable index (moov atom missing): truncated or not finalised? ({reason})"
    if isinstance(exc, av.FileNotFoundError):
        return f"{path}: no such file or directory"
    if isinstance(exc, av.PermissionError):
        return f"{path}: permission denied"
    return f"{path}: not a video or image file FFmpeg can read ({reason})"
