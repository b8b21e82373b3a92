"""PicoDet-S COCO as a Paddle inference export (models/export/paddle_picodet.py) against the shared ONNX.

The export is built once per module through the model registry (``picodet_s_coco_paddle``) into a fresh
cache, from the real ONNX weights; the detector then runs it on Paddle Inference and must find the same
boxes as ONNX Runtime on the real photos, batch or not. Also: the weight loader's checks, the
``infer_cfg.yml`` op registry, and the RGB Preprocess list against the ONNX path's BGR preprocessing.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import yaml
from onnx import numpy_helper

from models.detector import PicoDetDetector, load_class_names
from models.errors import ModelError
from models.export.paddle_picodet import (
    WEIGHT_MAP_FILE,
    check_plan_covers,
    load_weight_map,
    plan_assignment,
    read_onnx_convs,
    run_export,
)
from models.nms import box_iou
from models.preprocess_det import (
    DET_OPS,
    det_normalize_image,
    det_pad,
    det_permute,
    det_resize,
    load_infer_cfg,
    preprocess_image,
    preprocess_with_cfg,
)
from models.resolve import resolve_model_dir
from models.runtime import RuntimeOptions

PHOTOS = ("bus.jpg", "dog.jpg", "zidane.jpg", "person.jpg")
PADDLE = RuntimeOptions(backend="paddle", num_threads=2)


def _read(photos_dir: Path, name: str) -> np.ndarray:
    image = cv2.imread(str(photos_dir / name))
    assert image is not None, f"cannot read {photos_dir / name}"
    return image


@pytest.fixture(scope="module")
def onnx_dir(model_dir: Path) -> Path:
    return model_dir / "picodet_s_coco"


@pytest.fixture(scope="module")
def paddle_dir(tmp_path_factory) -> Path:
    """The registry's picodet_s_coco_paddle, exported now into an empty cache (never a stale export)."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIDREC_CACHE_DIR", str(cache))
        folder = resolve_model_dir("picodet_s_coco_paddle", needed=("model.json", "model.pdiparams", "infer_cfg.yml"))
    assert folder.is_relative_to(cache)
    return folder


def _onnx_detector(onnx_dir: Path, size: int = 320, **kw) -> PicoDetDetector:
    kw = {"score_threshold": 0.5, "max_detections": 100, **kw}
    return PicoDetDetector.from_model_dir(onnx_dir, model_file=f"picodet_s_{size}_coco.onnx", **kw)


def _paddle_detector(folder: Path, **kw) -> PicoDetDetector:
    kw = {"score_threshold": 0.5, "max_detections": 100, **kw}
    return PicoDetDetector.from_model_dir(folder, runtime=PADDLE, **kw)


@pytest.fixture(scope="module")
def onnx_det(onnx_dir: Path) -> PicoDetDetector:
    return _onnx_detector(onnx_dir)


@pytest.fixture(scope="module")
def paddle_det(paddle_dir: Path) -> PicoDetDetector:
    return _paddle_detector(paddle_dir)


def _assert_same_detections(got, want, label: str) -> None:
    assert len(got) == len(want), f"{label}: {len(got)} boxes vs {len(want)}"
    assert got.class_id.tolist() == want.class_id.tolist(), f"{label}: classes {got.class_id} vs {want.class_id}"
    if len(want):
        iou = np.diag(box_iou(got.xyxy, want.xyxy))
        assert iou.min() > 0.99, f"{label}: IoU {iou}"
        assert np.abs(got.confidence - want.confidence).max() < 1e-3, f"{label}: scores {got.confidence} vs {want.confidence}"


# --- the export ------------------------------------------------------------------------------------------


def test_export_is_a_paddledetection_inference_folder(paddle_dir: Path, onnx_dir: Path, paddle_det) -> None:
    assert {"model.json", "model.pdiparams", "infer_cfg.yml"} <= {p.name for p in paddle_dir.iterdir()}
    cfg = yaml.safe_load((paddle_dir / "infer_cfg.yml").read_text())
    assert cfg["mode"] == "paddle" and cfg["arch"] == "PicoDet" and isinstance(cfg["min_subgraph_size"], int)
    assert [op["type"] for op in cfg["Preprocess"]] == ["Resize", "Pad", "NormalizeImage", "Permute"]
    assert cfg["label_list"] == load_class_names(onnx_dir / "coco.names")
    assert cfg["fpn_stride"] == [8, 16, 32, 64] and cfg["reg_max"] == 7
    # The 2x upsample is exported without nearest_interp (oneDNN in Paddle 3.3.1 rejects it).
    assert "nearest_interp" not in (paddle_dir / "model.json").read_text()
    assert paddle_det.input_size == 320 and paddle_det._batched
    assert paddle_det.class_names == cfg["label_list"]
    assert paddle_det.decoder.level_strides == [8, 16, 32, 64]


@pytest.mark.parametrize("photo", PHOTOS)
def test_paddle_finds_the_onnx_boxes(photo: str, onnx_det, paddle_det, photos_dir) -> None:
    image = _read(photos_dir, photo)
    want = onnx_det.detect([image])[0]
    got = paddle_det.detect([image])[0]
    assert len(want) >= 2, f"{photo}: the ONNX model should find something"
    _assert_same_detections(got, want, photo)


def test_batch_of_four_in_one_run_equals_four_single_runs(paddle_det, onnx_det, photos_dir) -> None:
    images = [_read(photos_dir, n) for n in PHOTOS]
    # Raw outputs: one run of the 4-image batch vs 4 runs of one image, anchor by anchor.
    tensor, _ = preprocess_with_cfg(images, paddle_det.infer_cfg, size=320)
    model = paddle_det._model
    together = model.run({paddle_det._input_name: tensor})
    assert together[0].shape[0] == 4
    for i in range(4):
        alone = model.run({paddle_det._input_name: tensor[i : i + 1]})
        for k, (t, a) in enumerate(zip(together, alone)):
            np.testing.assert_allclose(t[i : i + 1], a, atol=1e-4, err_msg=f"image {i}, output {k}")
    # And through detect(): the batch gives each photo its own (ONNX-equal) detections.
    batched = paddle_det.detect(images)
    for name, image, got in zip(PHOTOS, images, batched):
        _assert_same_detections(got, paddle_det.detect([image])[0], f"{name} batch vs single")
        _assert_same_detections(got, onnx_det.detect([image])[0], f"{name} batch vs ONNX")


def test_416_export_finds_the_onnx_boxes(onnx_dir: Path, photos_dir, tmp_path) -> None:
    from models.export.paddle_picodet import export_picodet_s_paddle

    folder = export_picodet_s_paddle(tmp_path / "picodet416", size=416)
    paddle416 = _paddle_detector(folder)
    onnx416 = _onnx_detector(onnx_dir, 416)
    assert paddle416.input_size == 416
    images = [_read(photos_dir, n) for n in ("dog.jpg", "bus.jpg")]
    for name, got, want in zip(("dog.jpg", "bus.jpg"), paddle416.detect(images), onnx416.detect(images)):
        _assert_same_detections(got, want, f"{name} at 416")


# --- weight loading checks ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def convs_and_slots(onnx_dir: Path, paddle_dir: Path):
    convs, shape = read_onnx_convs(onnx_dir / "picodet_s_320_coco.onnx")
    assert shape == (1, 3, 320, 320)
    return convs, load_weight_map(paddle_dir / WEIGHT_MAP_FILE)


def test_weight_plan_assigns_every_onnx_conv_once(convs_and_slots) -> None:
    convs, slots = convs_and_slots
    assert len(convs) == len(slots) == 133
    plan = plan_assignment(slots, convs)
    folded = sum(1 for s in slots if s.bn)
    assert len(plan) == len(slots) + sum(1 for s in slots if s.has_bias) + 4 * folded
    # The image conv's input channels are reversed: the Paddle model takes RGB, the ONNX BGR.
    first = slots[0]
    assert convs[0].reads_image and first.conv == "backbone._conv1._conv"
    np.testing.assert_array_equal(plan[f"{first.conv}.weight"], convs[0].weight[:, ::-1])
    np.testing.assert_array_equal(plan[f"{first.bn}.bias"], convs[0].bias)


def test_shape_mismatched_weight_names_the_parameter(convs_and_slots) -> None:
    convs, slots = convs_and_slots
    k = 60
    bad = list(convs)
    bad[k] = dataclasses.replace(convs[k], weight=convs[k].weight[:-1])  # one output channel short
    with pytest.raises(ModelError, match=re.escape(f"parameter {slots[k].conv}.weight has shape {list(slots[k].weight_shape)}")):
        plan_assignment(slots, bad)
    bad = list(convs)
    bad[k] = dataclasses.replace(convs[k], bias=convs[k].bias[:-2])
    target = f"{slots[k].bn}.bias" if slots[k].bn else f"{slots[k].conv}.bias"
    with pytest.raises(ModelError, match=rf"parameter {target} has shape"):
        plan_assignment(slots, bad)
    with pytest.raises(ModelError, match=rf"parameter {slots[-1].conv}\.weight has no ONNX Conv left"):
        plan_assignment(slots, convs[:-1])
    plan = plan_assignment(slots, convs)
    shapes = {name: value.shape for name, value in plan.items()}
    missing = next(iter(plan))
    del plan[missing]
    with pytest.raises(ModelError, match=rf"parameter {missing} .*not assigned"):
        check_plan_covers(plan, shapes)


def test_export_from_a_corrupt_onnx_names_the_parameter(onnx_dir: Path, paddle_dir: Path, tmp_path) -> None:
    """The whole exporter (subprocess in the export environment) on a file with one wrong weight."""
    slots = load_weight_map(paddle_dir / WEIGHT_MAP_FILE)
    model = onnx.load(str(onnx_dir / "picodet_s_320_coco.onnx"))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    k = 100
    weight = next(t for t in model.graph.initializer if t.name == convs[k].input[1])
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight)[:-1], weight.name))
    corrupt = tmp_path / "picodet_s_320_coco.onnx"
    onnx.save(model, str(corrupt))
    with pytest.raises(ModelError, match=rf"parameter {slots[k].conv}\.weight has shape"):
        run_export(corrupt, tmp_path / "out", size=320)
    assert not (tmp_path / "out" / "model.json").exists()


# --- infer_cfg.yml ---------------------------------------------------------------------------------------------


def _write_cfg(paddle_dir: Path, folder: Path, edit) -> Path:
    folder.mkdir()
    cfg = yaml.safe_load((paddle_dir / "infer_cfg.yml").read_text())
    edit(cfg)
    (folder / "infer_cfg.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for name in ("model.json", "model.pdiparams"):
        shutil.copy(paddle_dir / name, folder / name)
    return folder


def test_unknown_preprocess_op_is_a_model_error_naming_it(paddle_dir: Path, tmp_path) -> None:
    folder = _write_cfg(paddle_dir, tmp_path / "m", lambda c: c["Preprocess"].insert(1, {"type": "GridMask", "prob": 0.5}))
    with pytest.raises(ModelError, match=r"m/infer_cfg\.yml: Preprocess op 'GridMask' \(entry 1\) is not supported"):
        _paddle_detector(folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["Preprocess"][0].update(keep_ratios=True), r"Preprocess op Resize \(entry 0\): .*keep_ratios"),
        (lambda c: c["Preprocess"][2].update(mean=[1.0, 2.0]), r"Preprocess op NormalizeImage \(entry 2\): .*mean must list 3"),
        (lambda c: c["Preprocess"][1].update(size=[100, 100]), r"Preprocess op Pad \(entry 1\): .*smaller than the image \[320, 320\]"),
        (lambda c: (c["Preprocess"][0].update(target_size=[256, 256]), c["Preprocess"][1].update(size=[256, 256])), r"Preprocess gives an array of shape \[3, 256, 256\], the model takes \[3, 320, 320\]"),
        (lambda c: c.update(label_list=["person"]), r"class_names has 1 names but model .*model\.json predicts 80"),
        (lambda c: c.update(fpn_stride=[8, 16, 32]), r"fpn_stride \[8, 16, 32\] but model .* stride \[8, 16, 32, 64\]"),
        (lambda c: c.pop("Preprocess"), r"Preprocess must be a non-empty list"),
    ],
)
def test_bad_infer_cfg_is_a_model_error(paddle_dir: Path, tmp_path, edit, message: str, photos_dir) -> None:
    folder = _write_cfg(paddle_dir, tmp_path / "m", edit)
    with pytest.raises(ModelError, match=message):
        _paddle_detector(folder).detect([_read(photos_dir, "bus.jpg")])


def test_labels_file_overrides_label_list(paddle_dir: Path, onnx_dir: Path, tmp_path) -> None:
    folder = _write_cfg(paddle_dir, tmp_path / "m", lambda c: c.pop("label_list"))
    with pytest.raises(ModelError, match=r"has no label_list"):
        _paddle_detector(folder)
    shutil.copy(onnx_dir / "coco.names", folder / "names.txt")
    assert _paddle_detector(folder, labels_file="names.txt").class_names[5] == "bus"


def test_onnx_folder_needs_its_model_file_named(onnx_dir: Path) -> None:
    with pytest.raises(ModelError, match=r"picodet_s_coco has no infer_cfg\.yml: name its model file"):
        PicoDetDetector.from_model_dir(onnx_dir, score_threshold=0.5, max_detections=10)
    det = _onnx_detector(onnx_dir)
    assert det.infer_cfg is None and det.class_names[-1] == "toothbrush"


# --- Preprocess ops with numbers -------------------------------------------------------------------------------


def _info(h: int, w: int) -> dict:
    return {"im_shape": np.array([h, w], np.float32), "scale_factor": np.ones(2, np.float32)}


def test_resize_keep_ratio_and_scale_factor() -> None:
    im = np.zeros((1080, 810, 3), np.uint8)
    out, info = det_resize(im, _info(1080, 810), target_size=[320, 320], keep_ratio=True, interp=1)
    assert out.shape == (320, 240, 3)
    np.testing.assert_allclose(info["scale_factor"], [320 / 1080, 240 / 810], rtol=1e-6)  # [sy, sx]
    np.testing.assert_array_equal(info["im_shape"], [320, 240])
    # PaddleDetection's rule for a non-square target: short side to the short target unless the long overflows.
    out, info = det_resize(np.zeros((720, 1280, 3), np.uint8), _info(720, 1280), target_size=[608, 1088], keep_ratio=True)
    assert out.shape == (608, 1081, 3)  # 608 / 720 * 1280 = 1080.9 fits 1088
    out, info = det_resize(im, _info(1080, 810), target_size=320, keep_ratio=False)
    assert out.shape == (320, 320, 3)
    np.testing.assert_allclose(info["scale_factor"], [320 / 1080, 320 / 810], rtol=1e-6)


def test_pad_normalize_permute() -> None:
    im = np.full((2, 3, 3), 100, np.uint8)
    padded, info = det_pad(im, _info(2, 3), size=[4, 5], fill_value=[0, 0, 0])
    assert padded.shape == (4, 5, 3) and padded.dtype == np.float32
    assert padded[1, 2].tolist() == [100, 100, 100] and padded[3, 4].tolist() == [0, 0, 0] and padded[0, 3].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="smaller than the image"):
        det_pad(im, info, size=[1, 5])
    normed, _ = det_normalize_image(padded, info, mean=[10, 20, 30], std=[2, 4, 5], is_scale=False)
    np.testing.assert_allclose(normed[0, 0], [45, 20, 14])
    np.testing.assert_allclose(normed[3, 4], [-5, -5, -6])
    scaled, _ = det_normalize_image(np.full((1, 1, 3), 255, np.uint8), info, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])
    np.testing.assert_allclose(scaled[0, 0], [1, 1, 1], atol=1e-6)
    chw, _ = det_permute(normed, info)
    assert chw.shape == (3, 4, 5) and chw.flags.c_contiguous
    np.testing.assert_array_equal(chw[:, 0, 0], normed[0, 0])
    assert set(DET_OPS) == {"Resize", "Pad", "NormalizeImage", "Permute"}


def test_rgb_preprocess_list_equals_onnx_bgr_preprocessing_reversed(paddle_dir: Path, photos_dir) -> None:
    """The export's Preprocess (from RGB, RGB-ordered mean/std) gives the ONNX tensor with channels reversed."""
    cfg = load_infer_cfg(paddle_dir / "infer_cfg.yml")
    for name in ("bus.jpg", "zidane.jpg"):
        image = _read(photos_dir, name)
        tensor, scales = preprocess_with_cfg([image], cfg, size=320)
        bgr, scale = preprocess_image(image, size=320)
        np.testing.assert_allclose(tensor[0], bgr[::-1], atol=1e-5)
        np.testing.assert_allclose(scales[0], scale, rtol=1e-6)
