"""models/hard_views.py: each alteration checked with numbers on small arrays and a real photo."""
from __future__ import annotations

import numpy as np
import pytest

from models import hard_views as hv


def _ramp(h: int = 60, w: int = 80) -> np.ndarray:
    """A smooth colour ramp: every pixel different, so that geometry shows in the values."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 3, y * 4, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("area", [
    0.45,  # the issue's smallest crop
    0.70,  # its largest
    1.0,   # the whole image
])
def test_crop_keeps_the_asked_area(area: float) -> None:
    image = _ramp(300, 400)
    for seed in range(5):
        out = hv.crop(image, area=area, rng=np.random.default_rng(seed))
        kept = out.shape[0] * out.shape[1] / (300 * 400)
        # The aspect may stretch by up to 1.33, and a side clipped to the image loses area: within 15 %.
        assert area * 0.85 <= kept <= area * 1.02, (seed, kept)
        # It is a window of the image: its top-left pixel occurs in the image with the same neighbours.
        ys, xs = np.nonzero((image == out[0, 0]).all(axis=-1))
        assert any(np.array_equal(image[y:y + out.shape[0], x:x + out.shape[1]], out) for y, x in zip(ys, xs))


@pytest.mark.parametrize("kwargs, error", [
    ({"area": 0.0}, "crop area"),   # nothing to keep
    ({"area": 1.5}, "crop area"),   # more than the image
])
def test_crop_rejects_bad_areas(kwargs, error) -> None:
    with pytest.raises(ValueError, match=error):
        hv.crop(_ramp(), rng=np.random.default_rng(0), **kwargs)


def test_rotate_zero_is_identity_and_180_is_a_flip() -> None:
    image = _ramp(61, 81)  # odd sides: the centre is a pixel, so 180 degrees maps pixels onto pixels
    assert np.array_equal(hv.rotate(image, degrees=0.0), image)
    turned = hv.rotate(image, degrees=180.0)
    assert np.abs(turned.astype(int) - image[::-1, ::-1].astype(int)).max() <= 1


def test_tilt_zero_is_identity_and_a_tilt_moves_pixels() -> None:
    image = _ramp()
    assert np.array_equal(hv.tilt(image, strength=0.0, rng=np.random.default_rng(0)), image)
    tilted = hv.tilt(image, strength=0.12, rng=np.random.default_rng(0))
    assert tilted.shape == image.shape
    assert np.abs(tilted.astype(int) - image.astype(int)).mean() > 5


@pytest.mark.parametrize("sigma, low, high", [
    (0.0, 1.0, 1.0),   # no blur: the image itself
    (1.5, 0.2, 0.8),   # the set's mildest blur removes much of a checkerboard's contrast
    (3.0, 0.0, 0.3),   # its strongest removes most of it
])
def test_blur_lowers_contrast_of_fine_detail(sigma: float, low: float, high: float) -> None:
    board = ((np.indices((224, 224)).sum(axis=0) // 4) % 2 * 255).astype(np.uint8)
    image = np.repeat(board[:, :, None], 3, axis=2)
    ratio = hv.blur(image, sigma=sigma).std() / image.std()
    assert low <= ratio <= high


def test_jpeg_q25_loses_detail_but_keeps_the_picture(photos) -> None:
    image = np.ascontiguousarray(photos["zidane"][:256, :256])
    out = hv.jpeg(image, quality=25)
    mse = np.mean((out.astype(float) - image.astype(float)) ** 2)
    psnr = 10 * np.log10(255 ** 2 / mse)
    assert 22 < psnr < 40  # measured ~31 dB: visibly blocky, still the same picture
    with pytest.raises(ValueError, match="JPEG quality"):
        hv.jpeg(image, quality=0)


@pytest.mark.parametrize("factor, expected_mean", [
    (1.0, 100.0),   # unchanged
    (0.5, 50.0),    # darker
    (1.5, 150.0),   # lighter
    (3.0, 255.0),   # clipped at white
])
def test_light_scales_pixel_values(factor: float, expected_mean: float) -> None:
    image = np.full((10, 10, 3), 100, np.uint8)
    assert hv.light(image, factor=factor).mean() == pytest.approx(expected_mean)


@pytest.mark.parametrize("area", [
    0.0,   # no patch
    0.08,  # the set's smallest
    0.2,   # the issue's largest: a fifth
])
def test_patch_covers_the_asked_area(area: float) -> None:
    image = np.zeros((200, 300, 3), np.uint8)
    other = np.full((50, 50, 3), 255, np.uint8)
    out = hv.patch(image, other=other, area=area, rng=np.random.default_rng(3))
    covered = (out == 255).all(axis=-1).mean()
    assert covered == pytest.approx(area, abs=0.01)


def test_hard_view_is_seeded_and_within_the_issues_bounds(photos) -> None:
    image = np.ascontiguousarray(photos["dog"])
    other = np.ascontiguousarray(photos["bus"])
    a, params = hv.hard_view(image, other=other, rng=np.random.default_rng(7))
    b, _ = hv.hard_view(image, other=other, rng=np.random.default_rng(7))
    c, _ = hv.hard_view(image, other=other, rng=np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    for seed in range(50):
        p = hv.draw_params(np.random.default_rng(seed))
        assert 0.45 <= p.crop_area <= 0.70
        assert abs(p.rotation_deg) <= 25
        assert (p.blur_sigma is None) != (p.jpeg_quality is None)
        assert p.jpeg_quality in (None, 25)
        assert 0.55 <= p.light_factor <= 0.8 or 1.25 <= p.light_factor <= 1.5
        assert p.patch_area <= 0.2
    assert "rotate" in params.text()
