"""Detector preprocessing checked with numbers: sizes, scales, normalised pixel and padding values."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.preprocess_det import DET_MEAN_BGR, DET_STD_BGR, letterbox_size, preprocess_batch, preprocess_image

MEAN = np.array(DET_MEAN_BGR, dtype=np.float32)
STD = np.array(DET_STD_BGR, dtype=np.float32)


@pytest.mark.parametrize(
    ("height", "width", "size", "expected"),
    [
        (1080, 810, 320, (320, 240, 240 / 810, 320 / 1080)),  # bus.jpg: portrait, height limits
        (272, 640, 320, (136, 320, 0.5, 0.5)),  # bikes.mp4 frame: landscape, width limits
        (576, 768, 416, (312, 416, 416 / 768, 312 / 576)),  # dog.jpg on the 416 model
        (100, 100, 320, (320, 320, 3.2, 3.2)),  # small square images are enlarged
        (1000, 3, 320, (320, 1, 1 / 3, 0.32)),  # a sliver keeps at least one pixel
    ],
)
def test_letterbox_size(height: int, width: int, size: int, expected: tuple[int, int, float, float]) -> None:
    new_h, new_w, sx, sy = letterbox_size(height=height, width=width, size=size)
    assert (new_h, new_w) == expected[:2]
    assert sx == pytest.approx(expected[2]) and sy == pytest.approx(expected[3])


def test_preprocess_image_shape_values_and_padding() -> None:
    image = np.empty((272, 640, 3), dtype=np.uint8)
    image[:] = (10, 20, 30)  # B, G, R
    tensor, scale = preprocess_image(image, size=320)
    assert tensor.shape == (3, 320, 320) and tensor.dtype == np.float32
    np.testing.assert_allclose(scale, [0.5, 0.5])
    # Content (rows 0..135) holds the normalised colour, channels kept in BGR order.
    expected_pixel = (np.array([10, 20, 30], dtype=np.float32) - MEAN) / STD
    np.testing.assert_allclose(tensor[:, 0, 0], expected_pixel, atol=1e-5)
    np.testing.assert_allclose(tensor[:, 135, 319], expected_pixel, atol=1e-5)
    assert tensor[0, 0, 0] == pytest.approx((10 - 103.53) / 57.375, abs=1e-5)
    # Padding (rows 136..319) is pixel value 0 before normalisation: -mean/std after it.
    padding = tensor[:, 136:, :]
    np.testing.assert_allclose(padding, np.broadcast_to((-MEAN / STD)[:, None, None], padding.shape), atol=1e-5)
    assert tensor[2, 319, 0] == pytest.approx(-123.675 / 58.395, abs=1e-5)


def test_preprocess_image_without_resize_is_exact_per_pixel() -> None:
    # An image already S wide is not resampled, so every tensor value is exactly (x - mean) / std.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(160, 320, 3), dtype=np.uint8)
    tensor, scale = preprocess_image(image, size=320)
    np.testing.assert_allclose(scale, [1.0, 1.0])
    expected = ((image.astype(np.float32) - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_allclose(tensor[:, :160, :], expected, atol=1e-5)
    assert tensor[1, 17, 42] == pytest.approx((float(image[17, 42, 1]) - 116.28) / 57.12, abs=1e-5)


def test_preprocess_image_rejects_non_bgr_uint8() -> None:
    with pytest.raises(ValueError, match=r"BGR uint8.*\(10, 10\)"):
        preprocess_image(np.zeros((10, 10), dtype=np.uint8), size=320)
    with pytest.raises(ValueError, match=r"float32"):
        preprocess_image(np.zeros((10, 10, 3), dtype=np.float32), size=320)


def test_preprocess_batch_matches_single_images(photos_dir) -> None:
    images = [cv2.imread(str(photos_dir / name)) for name in ("bus.jpg", "dog.jpg", "zidane.jpg")]
    batch, scales = preprocess_batch(images, size=416)
    assert batch.shape == (3, 3, 416, 416) and batch.dtype == np.float32
    assert scales.shape == (3, 2) and scales.dtype == np.float32
    for i, image in enumerate(images):
        single, scale = preprocess_image(image, size=416)
        np.testing.assert_array_equal(batch[i], single)
        np.testing.assert_array_equal(scales[i], scale)
    # zidane.jpg (720x1280) → 416x234: scales map the resized width/height back exactly.
    np.testing.assert_allclose(scales[2], [416 / 1280, 234 / 720], rtol=1e-6)


def test_preprocess_batch_empty() -> None:
    batch, scales = preprocess_batch([], size=320)
    assert batch.shape == (0, 3, 320, 320) and scales.shape == (0, 2)
