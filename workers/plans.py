"""A stream's plan: what the workers need to know about one input of `vidrec serve`, built from its
validated spec (config ``streams``, ``--stream`` or ``POST /streams``) in one place."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import ValidationError

from config.schema import StreamSpec
from stream.live import redact
from stream.states import StreamKind

# URL schemes that name a network source (decoded live); anything else is a path.
LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt", "rtp"})
# Network schemes whose URLs must name a host (udp://, tcp://, srt://, rtp:// may listen on a bare :port).
_HOST_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https"})


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """What the workers need to know about one stream (picklable)."""

    id: str
    url: str
    kind: StreamKind
    every_nth: int = 1
    clock_stamp: bool = False

    @property
    def display_url(self) -> str:
        return redact(self.url)

    @property
    def live(self) -> bool:
        return self.kind is StreamKind.LIVE


def resolve_kind(url: str, kind: str = "auto") -> StreamKind:
    """``live`` for a network URL, ``file`` for a path or file:// URL, unless ``kind`` says which.

    Raises ``ValueError`` (one line naming the URL, password hidden) for what no connection could fix and is
    known before any: a malformed URL, a port that is not a number in 0-65535, a camera URL without a host,
    and, with ``kind`` auto, a ``scheme://`` that is neither a camera's nor ``file://`` (``ftp://``, a typo such as
    ``rtps://``), which would otherwise be taken for a file path that does not exist.
    """
    if kind == StreamKind.FILE:
        return StreamKind.FILE
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # an unclosed IPv6 bracket
        raise ValueError(f"{redact(url)}: not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme in LIVE_SCHEMES:
        try:
            parts.port  # noqa: B018 - parsing it is the check
        except ValueError as exc:
            raise ValueError(f"{redact(url)}: bad port ({exc})") from None
        if scheme in _HOST_SCHEMES and not parts.hostname:
            raise ValueError(f"{redact(url)}: no host in the URL")
        return StreamKind.LIVE
    if kind == StreamKind.LIVE:
        return StreamKind.LIVE  # whatever FFmpeg makes of it (an unknown protocol fails the stream with one line)
    if scheme and scheme != "file" and url[len(scheme):].startswith("://"):
        raise ValueError(f"{redact(url)}: unsupported URL scheme {scheme!r} (cameras: "
                         f"{', '.join(sorted(LIVE_SCHEMES))}; files: a path or file://)")
    return StreamKind.FILE


def file_path(url: str) -> str:
    """The path of a file stream (``file://`` stripped)."""
    parts = urlsplit(url)
    return parts.path if parts.scheme == "file" else url


def plan_from_spec(spec: StreamSpec) -> StreamPlan:
    """A validated stream spec as the workers' plan; a file stream's path must exist."""
    kind = resolve_kind(spec.url, spec.kind)
    if kind is StreamKind.FILE and not Path(file_path(spec.url)).exists():
        raise ValueError(f"stream {spec.id!r}: {file_path(spec.url)}: no such file or directory")
    return StreamPlan(id=spec.id, url=spec.url, kind=kind, every_nth=spec.every_nth, clock_stamp=spec.clock_stamp)


def spec_error(exc: ValidationError) -> str:
    """A pydantic error on a stream spec as one line naming the field."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"]) or "stream"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = f"unknown field (allowed: {', '.join(StreamSpec.model_fields)})"
    elif error["type"] == "missing":
        message = "missing"
    return f"{where}: {message}"
