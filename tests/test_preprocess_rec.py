"""PP-ShiTu RecPreProcess ops: exact numbers, config parsing, and errors that name the op."""
from __future__ import annotations

import numpy as np
import pytest

from models.preprocess_rec import build_rec_preprocess, parse_scale, preprocess_batch

LITE0_NORMALIZE = {"NormalizeImage": {"scale": 1.0, "mean": [127, 127, 127], "std": [128, 128, 128], "order": "hwc"}}


def test_normalize_127_128_exact_values() -> None:
    img = np.array([[[0, 127, 255], [1, 128, 254]], [[63, 191, 31], [255, 0, 127]]], dtype=np.uint8)
    out = build_rec_preprocess([LITE0_NORMALIZE, {"ToCHWImage": None}])(img)
    assert out.dtype == np.float32 and out.shape == (3, 2, 2)
    # Every value (v - 127) / 128 is a multiple of 1/128, exact in float32.
    expected = ((img.astype(np.float64) - 127.0) / 128.0).transpose(2, 0, 1)
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    assert out[0, 0, 0] == -127 / 128 and out[2, 0, 0] == 1.0 and out[1, 0, 0] == 0.0


def test_imagenet_normalize_with_string_scale() -> None:
    img = np.full((2, 2, 3), 255, dtype=np.uint8)
    # As inference_general.yaml writes it (order '' means hwc), plus PaddleClas's default-valued options.
    ops = [{"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "order": "", "channel_num": 3}}]
    out = build_rec_preprocess(ops)(img)
    assert out.shape == (2, 2, 3)  # no ToCHWImage: still HWC
    np.testing.assert_allclose(out[0, 0], (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=1e-6)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1.0/255.0", 1 / 255), ("1/255", 1 / 255), (" 0.5 ", 0.5), ("2e-1", 0.2), (1, 1.0), (0.00392156862745098, 1 / 255)],
)
def test_parse_scale(text: object, value: float) -> None:
    assert parse_scale(text) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("bad", ["__import__('os')", "1/0", "1.0/255.0/2", "", "-1", True, [1]])
def test_parse_scale_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="NormalizeImage"):
        parse_scale(bad)


def test_resize_crop_and_shapes() -> None:
    img = np.zeros((100, 300, 3), dtype=np.uint8)
    assert build_rec_preprocess([{"ResizeImage": {"size": 224}}])(img).shape == (224, 224, 3)
    assert build_rec_preprocess([{"ResizeImage": {"size": [64, 32]}}])(img).shape == (32, 64, 3)  # [w, h]
    short = build_rec_preprocess([{"ResizeImage": {"resize_short": 50, "interpolation": "bicubic"}}])(img)
    assert short.shape == (50, 150, 3)
    cropped = build_rec_preprocess([{"ResizeImage": {"resize_short": 50}}, {"CropImage": {"size": 50}}, {"ToCHWImage": None}])(img)
    assert cropped.shape == (3, 50, 50)


def test_centre_crop_takes_the_middle() -> None:
    img = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    out = build_rec_preprocess([{"CropImage": {"size": 3}}])(img)
    np.testing.assert_array_equal(out, img[1:4, 1:4].astype(np.float32))


def test_unknown_op_names_it_and_lists_allowed() -> None:
    with pytest.raises(ValueError, match=r"unknown op 'RandomFlip'.*allowed.*NormalizeImage.*ResizeImage"):
        build_rec_preprocess([{"ResizeImage": {"size": 224}}, {"RandomFlip": None}])


@pytest.mark.parametrize(
    ("ops", "message"),
    [
        ([{"ResizeImage": {"size": 224, "keep_ratio": True}}], r"ResizeImage: unknown argument\(s\) \['keep_ratio'\]"),
        ([{"ResizeImage": {}}], r"ResizeImage: give exactly one of size"),
        ([{"ResizeImage": {"size": 0}}], r"ResizeImage: size must be positive"),
        ([{"ResizeImage": {"size": 224, "interpolation": "SMOOTH"}}], r"ResizeImage: interpolation 'SMOOTH' not one of"),
        ([{"CropImage": None}], r"CropImage: size .* is required"),
        ([{"NormalizeImage": {"mean": [1, 2]}}], r"NormalizeImage: mean must be a list of 3 numbers"),
        ([{"NormalizeImage": {"std": [1, 0, 1]}}], r"NormalizeImage: std must not contain 0"),
        ([{"NormalizeImage": {"order": "nhwc"}}], r"NormalizeImage: order must be"),
        ([{"ToCHWImage": {"x": 1}}], r"ToCHWImage: unknown argument"),
        ([{"NormalizeImage": {"channel_num": 4}}], r"NormalizeImage: channel_num is only supported as 3"),
        ([{"ResizeImage": {"size": 1}, "ToCHWImage": None}], r"one-key dict"),
        ([], r"non-empty list"),
    ],
)
def test_bad_arguments_name_the_op(ops: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_rec_preprocess(ops)


def test_preprocess_batch_stacks_and_checks() -> None:
    pipeline = build_rec_preprocess([{"ResizeImage": {"size": 8}}, LITE0_NORMALIZE, {"ToCHWImage": None}])
    images = [np.full((h, w, 3), v, dtype=np.uint8) for h, w, v in [(10, 20, 127), (5, 3, 255), (30, 30, 0)]]
    batch = preprocess_batch(images, pipeline)
    assert batch.shape == (3, 3, 8, 8) and batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_array_equal(batch[:, 0, 0, 0], np.array([0.0, 1.0, -127 / 128], dtype=np.float32))
    with pytest.raises(ValueError, match="different shapes"):
        preprocess_batch(images, build_rec_preprocess([{"ToCHWImage": None}]))
    with pytest.raises(ValueError, match="RGB HxWx3"):
        pipeline(np.zeros((4, 4), dtype=np.uint8))


@pytest.mark.parametrize("ops", [
    [{"ResizeImage": {"size": 224}}, LITE0_NORMALIZE, {"ToCHWImage": None}],  # vidrec's default: (x - 127) / 128
    # PP-ShiTu's: ImageNet mean/std on x / 255
    [{"ResizeImage": {"size": [224, 160]}},
     {"NormalizeImage": {"scale": "1.0/255.0", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "order": "hwc"}},
     {"ToCHWImage": None}],
])
def test_batch_fast_path_matches_the_ops(ops: list) -> None:
    """The one-call batch path gives what the ops give one image at a time (float32 rounding apart)."""
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    crops = [frame[10:200, 20:90], frame[0:7, 0:300], frame, frame[::-1][5:50, 5:50]]  # views, one negatively strided
    pipeline = build_rec_preprocess(ops)
    assert pipeline.blob is not None
    fast = preprocess_batch(crops, pipeline)
    slow = np.stack([pipeline(crop) for crop in crops])
    assert fast.shape == slow.shape and fast.dtype == np.float32
    np.testing.assert_allclose(fast, slow, atol=2e-5 * max(1.0, float(np.abs(slow).max())))


def test_other_op_lists_take_the_per_op_path() -> None:
    pipeline = build_rec_preprocess([{"ResizeImage": {"resize_short": 256}}, {"CropImage": {"size": 224}},
                                     {"NormalizeImage": {}}, {"ToCHWImage": None}])
    assert pipeline.blob is None
    assert preprocess_batch([np.zeros((300, 260, 3), np.uint8)], pipeline).shape == (1, 3, 224, 224)
