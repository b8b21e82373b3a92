"""A crop's colour layout: HSV histograms of its horizontal bands, fused with the network's embedding.

Why: an ImageNet network's pooled features say *what* an object is far better than *which one*. Two people
in dark coats, or two red mugs, land close together; what tells them apart at a glance is where which colours
sit: a light shirt over dark trousers, a blue cap on top. A histogram per horizontal band (top, middle,
bottom of the crop) holds exactly that, costs ~0.1 ms a crop, and is unaffected by the small shifts,
rotations and blur that move a network's features.

The descriptor: the crop resized to ``size`` (width, height), converted to HSV (OpenCV: H 0-180, S and V
0-256), cut into ``bands`` equal horizontal bands, a joint H×S×V histogram of ``bins`` per band, each band's
counts normalised to sum 1 and square-rooted (the Hellinger map: the dot product of two such vectors is the
Bhattacharyya coefficient of the two histograms, a proper similarity for distributions), all bands
concatenated and L2-normalised.

Fusion: ``L2(concat(network embedding, weight × colour))`` with both parts L2-normalised first, so the cosine
similarity of two fused embeddings is ``(s_network + weight² × s_colour) / (1 + weight²)``: ``weight`` sets the
colour's share of the score, whatever the network's width.

Measured (docs/benchmarks.md, "Colour layout in the embedding"): on the hard set and on vtest.avi's
pedestrians, with ``weight`` chosen on the tune splits only.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

# OpenCV's 8-bit HSV ranges: hue is 0..179 (degrees / 2), saturation and value 0..255.
_HSV_RANGES = [0, 180, 0, 256, 0, 256]


@dataclass(frozen=True)
class ColourSpec:
    """How the colour descriptor is made and weighed; a model folder's ``source.json`` records it."""

    bands: int = 3
    bins: tuple[int, int, int] = (8, 4, 4)  # hue, saturation, value
    size: tuple[int, int] = (32, 96)  # (width, height) the crop is resized to first: a person's proportions
    weight: float = 0.85  # chosen by bench/colour_weight.py on the tune splits (docs/benchmarks.md)

    def __post_init__(self) -> None:
        if len(self.size) != 2 or not all(isinstance(s, int) and s >= 1 for s in self.size):
            raise ValueError(f"colour size must be two positive ints (width, height), got {self.size!r}")
        if not (isinstance(self.bands, int) and 1 <= self.bands <= self.size[1]):
            raise ValueError(f"colour bands must be an int from 1 to the height {self.size[1]}, got {self.bands!r}")
        if len(self.bins) != 3 or not all(isinstance(b, int) and 1 <= b <= 256 for b in self.bins):
            raise ValueError(f"colour bins must be three ints from 1 to 256 (hue, saturation, value), got {self.bins!r}")
        if not (isinstance(self.weight, (int, float)) and np.isfinite(self.weight) and self.weight > 0):
            raise ValueError(f"colour weight must be a positive number, got {self.weight!r}")

    @property
    def length(self) -> int:
        return self.bands * int(np.prod(self.bins))

    def describe(self) -> str:
        """What galleries record of it (part of the recognizer's identity): any change makes other embeddings."""
        h, s, v = self.bins
        return (f"colour v1 (HSV {h}x{s}x{v} in {self.bands} bands of {self.size[0]}x{self.size[1]}, "
                f"sqrt, weight {self.weight:g})")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ColourSpec:
        """From ``source.json``'s ``colour`` object; unknown keys and bad values are a ValueError naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"colour must be an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"bands", "bins", "size", "weight"})
        if unknown:
            raise ValueError(f"colour: unknown keys {unknown}")
        kwargs: dict[str, Any] = dict(data)
        for key in ("bins", "size"):
            if key in kwargs:
                if not isinstance(kwargs[key], (list, tuple)):
                    raise ValueError(f"colour {key} must be a list, got {kwargs[key]!r}")
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def colour_histograms(crops_rgb: Sequence[np.ndarray], spec: ColourSpec) -> np.ndarray:
    """(n, spec.length) float32, each row L2-normalised (module docstring); RGB uint8 crops of any size."""
    width, height = spec.size
    rows = np.zeros((len(crops_rgb), spec.length), dtype=np.float32)
    per_band = spec.length // spec.bands
    for i, crop in enumerate(crops_rgb):
        if crop.ndim != 3 or crop.shape[2] != 3 or crop.shape[0] == 0 or crop.shape[1] == 0:
            raise ValueError(f"crop {i}: expected a non-empty H×W×3 RGB image, got shape {crop.shape}")
        hsv = cv2.cvtColor(cv2.resize(crop, (width, height)), cv2.COLOR_RGB2HSV)
        for band in range(spec.bands):
            part = hsv[band * height // spec.bands:(band + 1) * height // spec.bands]
            counts = cv2.calcHist([part], [0, 1, 2], None, list(spec.bins), _HSV_RANGES).ravel()
            rows[i, band * per_band:(band + 1) * per_band] = np.sqrt(counts / max(float(counts.sum()), 1.0))
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def fuse(embeddings: np.ndarray, colours: np.ndarray, weight: float) -> np.ndarray:
    """``L2(concat(embeddings, weight × colours))``, both given L2-normalised row by row (module docstring)."""
    if len(embeddings) != len(colours):
        raise ValueError(f"{len(embeddings)} embeddings but {len(colours)} colour descriptors")
    fused = np.concatenate([embeddings, weight * colours], axis=1)
    norms = np.linalg.norm(fused, axis=1, keepdims=True)
    return (fused / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
