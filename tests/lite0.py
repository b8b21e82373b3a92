"""EfficientNet-Lite0, the recognizer the model tests run: its preprocessing, as PP-ShiTu's config lists it."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# ResizeImage to 224, then (x - 127) / 128 per channel: what the ImageNet-trained Lite0 weights expect.
LITE0_OPS = [
    {"ResizeImage": {"size": 224}},
    {"NormalizeImage": {"scale": 1.0, "mean": [127, 127, 127], "std": [128, 128, 128], "order": "hwc"}},
    {"ToCHWImage": None},
]


def read_rgb(path: Path) -> np.ndarray:
    """A photo as the recognizer takes it (RGB, HWC, uint8); fails naming the file it cannot read."""
    bgr = cv2.imread(str(path))
    assert bgr is not None, f"cannot read {path}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
