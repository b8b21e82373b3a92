"""The colour-layout descriptor (models/colour_features.py): pure functions, checked with numbers."""
from __future__ import annotations

import numpy as np
import pytest

from models.colour_features import ColourSpec, colour_histograms, fuse

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def stripes(top: tuple, bottom: tuple, *, height: int = 96, width: int = 20) -> np.ndarray:
    """Two colours, top and bottom halves; 96 rows, the descriptor's own height, so no row is a blend."""
    image = np.zeros((height, width, 3), np.uint8)
    image[: height // 2] = top
    image[height // 2:] = bottom
    return image


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"bands": 0}, "bands must be an int from 1"),
    ({"bands": 97}, "bands must be an int from 1 to the height 96"),
    ({"bins": (8, 4)}, "bins must be three ints"),
    ({"bins": (8, 0, 4)}, "bins must be three ints"),
    ({"size": (32, 0)}, "size must be two positive ints"),
    ({"weight": 0.0}, "weight must be a positive number"),
    ({"weight": float("nan")}, "weight must be a positive number"),
])
def test_a_bad_spec_is_refused_naming_the_setting(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ColourSpec(**kwargs)


@pytest.mark.parametrize(("data", "message"), [
    ({"bands": 3, "colours": 8}, r"unknown keys \['colours'\]"),
    ({"bins": 8}, "bins must be a list"),
    ([3], "colour must be an object"),
])
def test_a_bad_recorded_spec_is_refused(data, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ColourSpec.from_json(data)


def test_a_spec_survives_its_json_and_says_what_it_is() -> None:
    spec = ColourSpec(bands=2, bins=(6, 3, 2), size=(16, 48), weight=0.5)
    assert ColourSpec.from_json(spec.to_json()) == spec
    assert spec.length == 2 * 6 * 3 * 2
    assert spec.describe() == "colour v1 (HSV 6x3x2 in 2 bands of 16x48, sqrt, weight 0.5)"


def test_one_colour_fills_one_bin_of_every_band() -> None:
    # pure red: OpenCV HSV (0, 255, 255) -> hue bin 0, saturation bin 3, value bin 3 of (8, 4, 4): index 15
    [row] = colour_histograms([np.full((30, 10, 3), RED, np.uint8)], ColourSpec())
    expected = np.zeros(3 * 128, np.float32)
    expected[[15, 128 + 15, 256 + 15]] = 1 / np.sqrt(3)
    np.testing.assert_allclose(row, expected, atol=1e-6)


def test_bands_tell_where_colours_sit() -> None:
    red_over_blue, blue_over_red = stripes(RED, BLUE), stripes(BLUE, RED)
    # two bands: top and bottom swap, nothing in common
    a, b = colour_histograms([red_over_blue, blue_over_red], ColourSpec(bands=2))
    assert a @ b == pytest.approx(0.0, abs=1e-6)
    # one band: the same colours, the same histogram (half red, half blue: sqrt(0.5) in two bins)
    a, b = colour_histograms([red_over_blue, blue_over_red], ColourSpec(bands=1))
    assert a @ b == pytest.approx(1.0, abs=1e-6)
    assert sorted(a[a > 0].tolist()) == pytest.approx([np.sqrt(0.5)] * 2, abs=1e-6)


def test_similar_colours_score_in_between() -> None:
    # three bands of 96 rows: the top band white, the rest red, against all red: 2 of 3 bands agree
    image = np.full((96, 20, 3), RED, np.uint8)
    image[:32] = WHITE
    a, b = colour_histograms([image, np.full((96, 20, 3), RED, np.uint8)], ColourSpec())
    assert a @ b == pytest.approx(2 / 3, abs=1e-6)


def test_a_bad_crop_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"crop 1: expected a non-empty H×W×3 RGB image, got shape \(0, 4, 3\)"):
        colour_histograms([np.zeros((4, 4, 3), np.uint8), np.zeros((0, 4, 3), np.uint8)], ColourSpec())


def test_fusion_weighs_the_two_similarities() -> None:
    # two network embeddings at cosine 0.6, two colour descriptors at cosine 0.0, weight 0.5:
    # the fused cosine is (0.6 + 0.25 * 0.0) / (1 + 0.25) = 0.48
    net = np.array([[1.0, 0.0], [0.6, 0.8]], np.float32)
    col = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    fused = fuse(net, col, 0.5)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, rtol=1e-6)
    assert fused[0] @ fused[1] == pytest.approx(0.48, abs=1e-6)
    with pytest.raises(ValueError, match="2 embeddings but 1 colour descriptors"):
        fuse(net, col[:1], 0.5)
