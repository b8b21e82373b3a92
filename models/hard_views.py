"""Hard views of a photo: the changes a camera, a hand and a bad link make, one pure function each.

Each alteration takes an RGB ``uint8`` image (H, W, 3) and returns a new one; randomness comes only from
the ``numpy.random.Generator`` passed in, so a seed gives the same view on every machine. ``hard_view``
chains all of them the way issue 13's hard set does (a person still names every such view at a glance):
a 45–70 % crop (of the area), a rotation of up to 25°, a perspective tilt, a blur or a JPEG save at quality
25, lighter or darker, and a patch of another photo over up to a fifth of the view.

Geometry fills what the image does not cover by reflecting it (``BORDER_REFLECT_101``): a constant border
would be a cue a query never has in a real crop.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CROP_AREA = (0.45, 0.70)  # fraction of the image's area the crop keeps
MAX_ROTATION_DEG = 25.0
MAX_TILT = 0.12  # each corner moves up to this fraction of the side, inwards or outwards
BLUR_SIGMA = (1.5, 3.0)  # Gaussian sigma, pixels at 224 px on the short side (scaled with the image)
JPEG_QUALITY = 25
LIGHT_FACTORS = ((0.55, 0.8), (1.25, 1.5))  # darker or lighter: pixel values times this
MAX_PATCH_AREA = 0.2


def _check_rgb(image: np.ndarray) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}")


def crop(image: np.ndarray, *, area: float, rng: np.random.Generator) -> np.ndarray:
    """A crop keeping ``area`` of the image's area, at a random place, with an aspect ratio within
    [0.75, 1.33] of the image's own (a hand-held re-framing, not a sliver)."""
    _check_rgb(image)
    if not 0.0 < area <= 1.0:
        raise ValueError(f"crop area must be in (0, 1], got {area}")
    h, w = image.shape[:2]
    stretch = float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))
    cw = min(w, max(1, round(w * np.sqrt(area * stretch))))
    ch = min(h, max(1, round(h * w * area / cw)))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    return image[y0:y0 + ch, x0:x0 + cw].copy()


def rotate(image: np.ndarray, *, degrees: float) -> np.ndarray:
    """Rotated about the centre by ``degrees`` (counter-clockwise), same size."""
    _check_rgb(image)
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def tilt(image: np.ndarray, *, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A perspective view: each corner moved by up to ``strength`` × the side, then warped back to the
    same size (the object seen from a little aside)."""
    _check_rgb(image)
    h, w = image.shape[:2]
    src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
    jitter = rng.uniform(-strength, strength, size=(4, 2)) * np.float32([w, h])
    matrix = cv2.getPerspectiveTransform(src, (src + jitter).astype(np.float32))
    return cv2.warpPerspective(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def blur(image: np.ndarray, *, sigma: float) -> np.ndarray:
    """Gaussian blur of ``sigma`` pixels at 224 px on the short side, scaled to the image (defocus or
    motion blur reads the same at every size)."""
    _check_rgb(image)
    scaled = sigma * min(image.shape[:2]) / 224.0
    if scaled <= 0:
        return image.copy()
    return cv2.GaussianBlur(image, (0, 0), sigmaX=scaled, borderType=cv2.BORDER_REFLECT_101)


def jpeg(image: np.ndarray, *, quality: int) -> np.ndarray:
    """Saved as JPEG at ``quality`` (1–100) and read back: blocks and ringing of a starved link."""
    _check_rgb(image)
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1..100, got {quality}")
    ok, data = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[:, :, ::-1])


def light(image: np.ndarray, *, factor: float) -> np.ndarray:
    """Pixel values times ``factor`` (< 1 darker, > 1 lighter), clipped to 0..255."""
    _check_rgb(image)
    if factor < 0:
        raise ValueError(f"light factor must be >= 0, got {factor}")
    return np.clip(np.rint(image.astype(np.float32) * factor), 0, 255).astype(np.uint8)


def patch(image: np.ndarray, *, other: np.ndarray, area: float, rng: np.random.Generator) -> np.ndarray:
    """A rectangle of ``other`` (resized) pasted over ``area`` of the image at a random place: a hand,
    a sign or another object in front of it."""
    _check_rgb(image)
    _check_rgb(other)
    if not 0.0 <= area <= 1.0:
        raise ValueError(f"patch area must be in [0, 1], got {area}")
    h, w = image.shape[:2]
    out = image.copy()
    if area == 0.0:
        return out
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    pw = min(w, max(1, round(np.sqrt(area * h * w * aspect))))
    ph = min(h, max(1, round(area * h * w / pw)))
    x0 = int(rng.integers(0, w - pw + 1))
    y0 = int(rng.integers(0, h - ph + 1))
    out[y0:y0 + ph, x0:x0 + pw] = cv2.resize(other, (pw, ph), interpolation=cv2.INTER_AREA)
    return out


@dataclass(frozen=True)
class HardViewParams:
    """What one hard view did, so that a list file can say it and a test can check it."""

    crop_area: float
    rotation_deg: float
    tilt: float
    blur_sigma: float | None  # None: saved as JPEG instead
    jpeg_quality: int | None  # None: blurred instead
    light_factor: float
    patch_area: float

    def text(self) -> str:
        spoil = f"blur {self.blur_sigma:.1f}" if self.blur_sigma is not None else f"jpeg q{self.jpeg_quality}"
        return (f"crop {self.crop_area:.2f}, rotate {self.rotation_deg:+.0f} deg, tilt {self.tilt:.2f}, "
                f"{spoil}, light x{self.light_factor:.2f}, patch {self.patch_area:.2f}")


def draw_params(rng: np.random.Generator) -> HardViewParams:
    """One draw of every alteration's strength, within the bounds above."""
    use_blur = bool(rng.random() < 0.5)
    darker = bool(rng.random() < 0.5)
    low, high = LIGHT_FACTORS[0] if darker else LIGHT_FACTORS[1]
    return HardViewParams(
        crop_area=float(rng.uniform(*CROP_AREA)),
        rotation_deg=float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)),
        tilt=float(rng.uniform(0.04, MAX_TILT)),
        blur_sigma=float(rng.uniform(*BLUR_SIGMA)) if use_blur else None,
        jpeg_quality=None if use_blur else JPEG_QUALITY,
        light_factor=float(rng.uniform(low, high)),
        patch_area=float(rng.uniform(0.08, MAX_PATCH_AREA)),
    )


def hard_view(image: np.ndarray, *, other: np.ndarray, rng: np.random.Generator,
              params: HardViewParams | None = None) -> tuple[np.ndarray, HardViewParams]:
    """Every alteration in turn (crop, rotate, tilt, blur or JPEG, light, patch of ``other``), with
    strengths drawn from ``rng`` unless ``params`` are given. Returns the view and what was done."""
    params = params or draw_params(rng)
    view = crop(image, area=params.crop_area, rng=rng)
    view = rotate(view, degrees=params.rotation_deg)
    view = tilt(view, strength=params.tilt, rng=rng)
    if params.blur_sigma is not None:
        view = blur(view, sigma=params.blur_sigma)
    view = light(view, factor=params.light_factor)
    view = patch(view, other=other, area=params.patch_area, rng=rng)
    if params.jpeg_quality is not None:
        # Last, as a link would: the blocks fall on the patch's edges too.
        view = jpeg(view, quality=params.jpeg_quality)
    return view, params
