"""Annotated video output: each frame with its FrameResult's boxes drawn on, encoded to a file.

Unlike the other sinks this one needs the pictures, so it is fed with ``write_frame(image, result)``;
``write(result)`` alone cannot draw anything and says so. The file is written under
``<name>.partial`` and renamed to its final name only by ``close()``; ``abort()`` deletes it.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from stream.errors import SinkError
from stream.messages import FrameResult, ObjectResult

# Container by suffix: the temp file's ".partial" suffix would hide it from FFmpeg's guess.
_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}


# ---------------------------------------------------------------------------------------------- drawing

def color_key(obj: ObjectResult) -> str:
    """What an object's colour depends on: its gallery label, else its detector class."""
    if obj.label is not None:
        return obj.label
    return f"class:{obj.det_class}" if obj.det_class is not None else "unknown"


def color_for(key: str) -> tuple[int, int, int]:
    """A stable, saturated BGR colour for a label or class name.

    FNV-1a (32-bit) of the UTF-8 key picks the hue, so the same label has the same colour in every
    run, process and language (the overlay page can reimplement it in a few lines of JS):
    hue = hash % 360, saturation 0.85, value 0.95, HSV -> RGB as usual.
    """
    h = 0x811C9DC5
    for byte in key.encode("utf-8"):
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    hue = h % 360
    s, v = 0.85, 0.95
    c = v * s
    x = c * (1 - abs((hue / 60) % 2 - 1))
    m = v - c
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][hue // 60]
    return (round((b + m) * 255), round((g + m) * 255), round((r + m) * 255))


def label_text(obj: ObjectResult) -> str:
    """``label 0.87`` when recognised, else ``unknown <class> 0.54`` (the detector's score)."""
    if obj.label is not None:
        return f"{obj.label} {obj.score:.2f}"
    if obj.det_class is not None:
        return f"unknown {obj.det_class} {obj.det_score:.2f}"
    return "unknown"


def draw_results(image_bgr: np.ndarray, result: FrameResult) -> np.ndarray:
    """A copy of ``image_bgr`` with the result's boxes and labels drawn on.

    The whole-frame box PP-ShiTu always adds (``det_class`` None) is drawn only when the gallery
    recognised it, and then 1 px thin: unrecognised it would frame every picture and say nothing,
    while a whole-frame match (a close-up of one product) is exactly what the viewer wants to see.
    Hershey fonts are ASCII only: other characters in labels show as '?'.
    """
    out = image_bgr.copy()
    height, width = out.shape[:2]
    thickness = max(2, round(min(height, width) / 300))
    font_scale = max(0.4, min(height, width) / 900)
    for obj in result.objects:
        whole_frame = obj.det_class is None
        if whole_frame and obj.label is None:
            continue
        color = color_for(color_key(obj))
        x1, y1, x2, y2 = (int(round(v)) for v in obj.bbox)
        x1, x2 = sorted((min(max(x1, 0), width - 1), min(max(x2, 0), width - 1)))
        y1, y2 = sorted((min(max(y1, 0), height - 1), min(max(y2, 0), height - 1)))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 1 if whole_frame else thickness, cv2.LINE_AA)
        _draw_label(out, label_text(obj), (x1, y1), color, font_scale)
    return out


def _draw_label(image: np.ndarray, text: str, corner: tuple[int, int], color: tuple[int, int, int], scale: float) -> None:
    text = text.encode("ascii", "replace").decode("ascii")
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), baseline = cv2.getTextSize(text, font, scale, 1)
    x, y = corner
    # Above the box where there is room, else just inside its top edge.
    top = y - th - baseline - 2 if y - th - baseline - 2 >= 0 else y
    x = min(x, max(0, image.shape[1] - tw - 2))
    cv2.rectangle(image, (x, top), (x + tw + 2, top + th + baseline + 2), color, cv2.FILLED)
    # Dark text on light colours, white on dark (perceived luminance, BGR order).
    luma = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
    ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
    cv2.putText(image, text, (x + 1, top + th + 1), font, scale, ink, 1, cv2.LINE_AA)


# ---------------------------------------------------------------------------------------------- writer

def _pick_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


class AnnotatedVideoWriter:
    """Encode annotated frames to ``path`` (H.264/yuv420p via libx264, MPEG-4 Part 2 where FFmpeg
    lacks x264), at a constant ``fps``: frame n gets time n/fps whatever its source pts was, so pass
    the rate of the frames you feed (source fps / every_nth).

    yuv420p needs even dimensions: an odd width or height is padded by one pixel that repeats the
    last column/row (no source pixel is lost, the picture is 1 px larger). The container follows the
    suffix (.mp4/.m4v/.mov/.mkv/.avi); MP4/MOV get the index up front (faststart) so that players and
    browsers can start before the whole file has arrived.
    """

    def __init__(self, path: Path, *, fps: float, width: int, height: int) -> None:
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"AnnotatedVideoWriter({self.path}): width/height must be positive, got {width}x{height}")
        if not fps or fps <= 0:
            raise ValueError(f"AnnotatedVideoWriter({self.path}): fps must be positive, got {fps}")
        self.fps = float(fps)
        self.partial_path = self.path.with_name(self.path.name + ".partial")
        self.frames_written = 0
        self._done = False
        fmt = _FORMATS.get(self.path.suffix.lower())
        if fmt is None:
            raise SinkError(f"{self.path}: unsupported video suffix (use one of {', '.join(sorted(_FORMATS))})")
        parent = self.path.parent
        if not parent.is_dir():
            raise SinkError(f"{self.path}: output folder {parent} does not exist or is not a folder")
        if self.path.is_dir():
            raise SinkError(f"{self.path}: is a folder, cannot write a video there")
        # Encoded size: even, padded up (see class doc).
        self.enc_width, self.enc_height = self.width + self.width % 2, self.height + self.height % 2
        options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
        try:
            self._container = av.open(str(self.partial_path), mode="w", format=fmt, options=options)
        except (av.FFmpegError, OSError) as exc:
            raise SinkError(f"{self.path}: cannot create {self.partial_path.name} ({_reason(exc)})") from exc
        codec = _pick_codec()
        try:
            rate = Fraction(self.fps).limit_denominator(1001)
            stream = self._container.add_stream(codec, rate=rate)
            stream.width, stream.height = self.enc_width, self.enc_height
            stream.pix_fmt = "yuv420p"
            # Frame times count in 1/fps; kept here because the muxer replaces stream.time_base
            # with its own (e.g. 1/12800 for MP4) once the header is written.
            self._time_base = Fraction(1, 1) / rate
            stream.time_base = self._time_base
            if codec == "libx264":
                # veryfast/crf 23: a watchable overlay at a fraction of medium's CPU on a 2-core box.
                stream.options = {"preset": "veryfast", "crf": "23"}
            else:
                stream.bit_rate = max(1_000_000, self.enc_width * self.enc_height * 4)
            self._stream = stream
        except (av.FFmpegError, OSError, ValueError) as exc:
            self._discard()
            raise SinkError(f"{self.path}: cannot set up {codec} encoder ({_reason(exc)})") from exc

    def write(self, result: FrameResult) -> None:
        raise TypeError(
            f"AnnotatedVideoWriter({self.path}) draws on the frames: call write_frame(image_bgr, result)"
        )

    def write_frame(self, image_bgr: np.ndarray, result: FrameResult) -> None:
        """Draw ``result`` on (a copy of) ``image_bgr`` and encode it as the next frame."""
        if self._done:
            raise SinkError(f"{self.path}: write_frame after close/abort")
        if image_bgr.shape[:2] != (self.height, self.width) or image_bgr.ndim != 3:
            raise ValueError(
                f"AnnotatedVideoWriter({self.path}) was opened for {self.width}x{self.height}, "
                f"got an image of shape {image_bgr.shape}"
            )
        drawn = draw_results(image_bgr, result)
        if (self.enc_width, self.enc_height) != (self.width, self.height):
            drawn = cv2.copyMakeBorder(
                drawn, 0, self.enc_height - self.height, 0, self.enc_width - self.width, cv2.BORDER_REPLICATE
            )
        # OpenCV's BGR->I420 and a planar frame: cheaper than letting swscale convert bgr24.
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(drawn, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
        frame.pts = self.frames_written
        frame.time_base = self._time_base
        try:
            self._container.mux(self._stream.encode(frame))
        except (av.FFmpegError, OSError) as exc:
            raise SinkError(f"{self.path}: encoding frame {self.frames_written} failed ({_reason(exc)})") from exc
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder, finish the file and give it its final name."""
        if self._done:
            return
        self._done = True
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            os.replace(self.partial_path, self.path)
        except (av.FFmpegError, OSError) as exc:
            self._discard()
            raise SinkError(f"{self.path}: finishing the video failed ({_reason(exc)})") from exc

    def abort(self) -> None:
        """Stop and delete the partial file: nothing is left that looks like a finished video."""
        if self._done:
            return
        self._done = True
        self._discard()

    def _discard(self) -> None:
        try:
            self._container.close()
        except (av.FFmpegError, OSError):
            pass  # already failing; the file is deleted next either way
        self.partial_path.unlink(missing_ok=True)

    def __enter__(self) -> "AnnotatedVideoWriter":
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _reason(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)
    return str(strerror) if strerror else (str(exc) or type(exc).__name__)
