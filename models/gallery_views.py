"""Views of a gallery image that are averaged into its one gallery embedding.

A query is usually part of the object (a detector box, a hand-held re-framing), seen from a little aside;
the gallery image is the whole object. Embedding the whole image and a 3×3 grid of crops that each keep
0.77 of the sides (~60 % of the area), and storing the mean of the ten L2-normalised embeddings, puts the
gallery entry where partial views of the object fall. It costs ten recognizer runs per gallery image at
build time and nothing per query; the gallery keeps one entry per image. Measured on the hard set
(bench/retrieval_variants.py, docs/benchmarks.md): the tune split's recall@1 rises with it for every
embedding tried.

An image whose short side is under ``GRID_MIN_SIDE`` (half the recognizer's 224 px input) is embedded alone:
its crops would be upscaled well over 2× into blurred parts that look like every object of their kind.
Measured on pedestrians enrolled from one vtest.avi detector box (~30×80 px, tests/test_retrieval_quality.py):
with grid views of such boxes, nearly every passer-by took one of their names (precision ~0.3 at any
threshold); alone, precision 0.71 at recall 0.68.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

GalleryAugment = Literal["none", "grid9"]
GRID_SIDE = 0.77
GRID_MIN_SIDE = 112


def gallery_views(image_rgb: np.ndarray, augment: GalleryAugment) -> list[np.ndarray]:
    """The image itself, then (``grid9``, for an image whose short side is at least ``GRID_MIN_SIDE``) nine
    crops on a 3×3 grid of positions: corners, edges, centre."""
    if augment not in ("none", "grid9"):
        raise ValueError(f"gallery augment must be 'none' or 'grid9', got {augment!r}")
    h, w = image_rgb.shape[:2]
    if augment == "none" or min(h, w) < GRID_MIN_SIDE:
        return [image_rgb]
    ch, cw = max(1, int(h * GRID_SIDE)), max(1, int(w * GRID_SIDE))
    views = [image_rgb]
    for y in (0, (h - ch) // 2, h - ch):
        for x in (0, (w - cw) // 2, w - cw):
            views.append(image_rgb[y:y + ch, x:x + cw])
    return views


def mean_embedding(embeddings: np.ndarray) -> np.ndarray:
    """(V, D) L2-normalised view embeddings → their L2-normalised mean (D,)."""
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise ValueError(f"expected (V, D) embeddings with V >= 1, got {embeddings.shape}")
    mean = embeddings.mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
