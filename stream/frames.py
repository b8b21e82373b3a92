"""The decoded frame, as it travels from a source to inference."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded picture of one stream.

    ``image_bgr`` is HxWx3 uint8 in OpenCV's BGR order. ``pts`` is media time in seconds
    (None where the container gives none, e.g. a still image). ``capture_time`` is the
    wall-clock time (Unix seconds) at which the frame was decoded; ``decode_ms`` how long
    decoding took, so every result can carry its stage times.
    """

    stream_id: str
    index: int
    pts: float | None
    capture_time: float
    image_bgr: np.ndarray
    decode_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.image_bgr.ndim != 3 or self.image_bgr.shape[2] != 3 or self.image_bgr.dtype != np.uint8:
            raise ValueError(
                f"Frame.image_bgr must be HxWx3 uint8, got shape {self.image_bgr.shape} dtype {self.image_bgr.dtype}"
            )

    @property
    def width(self) -> int:
        return int(self.image_bgr.shape[1])

    @property
    def height(self) -> int:
        return int(self.image_bgr.shape[0])
