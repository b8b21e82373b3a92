"""How a live source connects, waits and retries: ``LiveOptions``, its defaults and checks, in one place.

Kept apart from stream/live.py (which loads PyAV) so that the config (``Service.live``, config/schema.py) takes
its defaults and checks from here without loading a decoder.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Open options measured against gst-rtsp-server over loopback: interleaved TCP (no UDP loss, one port) and no
# stream probing. probesize=32 (FFmpeg's minimum) opens in ~0.1 s on /clock, /bikes and /vtest and still knows
# size and pixel format (from the SDP's sprop-parameter-sets); 32768 and the default spend 0.2-3 s probing.
# Deliberately without fflags=nobuffer: with probing this small it made no difference to the steady delay
# (71 ms either way on /clock) but threw away the packets read while opening, the server's first keyframe among
# them: the first frame came ~1 s later (the next keyframe), a multi-slice stream decoded garbage for its whole
# first GOP, and a file lost its first 30 frames.
LOW_DELAY_OPTIONS: Mapping[str, str] = MappingProxyType({
    "rtsp_transport": "tcp",
    "flags": "low_delay",
    "analyzeduration": "0",
    "probesize": "32",
})


@dataclass(frozen=True, slots=True)
class LiveOptions:
    """How a ``LiveSource`` connects, waits and retries. Seconds throughout."""

    open_timeout_s: float = 5.0
    read_timeout_s: float | None = 3.0  # None: no PyAV read timeout, the watchdog alone guards reads
    stall_after_s: float = 2.0
    first_frame_timeout_s: float = 5.0  # per connection; covers a keyframe interval of a few seconds
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 5.0
    max_pending: int = 2
    low_delay: bool = True
    reconnect_on_end: bool | None = None  # None: yes for URLs (rtsp://, http://, ...), no for file paths
    av_options: Mapping[str, str] = field(default_factory=lambda: LOW_DELAY_OPTIONS)  # passed to av.open

    def __post_init__(self) -> None:
        for name in ("open_timeout_s", "stall_after_s", "first_frame_timeout_s", "backoff_initial_s", "backoff_max_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"LiveOptions.{name} must be > 0, got {value!r}")
        if self.read_timeout_s is not None and not self.read_timeout_s > 0:
            raise ValueError(f"LiveOptions.read_timeout_s must be > 0 or None, got {self.read_timeout_s!r}")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"LiveOptions.backoff_max_s ({self.backoff_max_s}) must be >= backoff_initial_s ({self.backoff_initial_s})"
            )
        if self.max_pending < 1:
            raise ValueError(f"LiveOptions.max_pending must be >= 1, got {self.max_pending}")
