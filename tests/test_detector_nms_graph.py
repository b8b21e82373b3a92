"""NMS-in-graph detector exports (PaddleDetection's default format, PP-ShiTu's mainbody detector) with real weights.

PP-ShiTu's own mainbody model cannot be downloaded here, so the shared raw PicoDet-S 320 ONNX is wrapped
(models/export/onnx_nms_wrap.py) into the same format: inputs ``image`` / ``im_shape`` / ``scale_factor``,
outputs boxes [M, 6] = (class, score, x1, y1, x2, y2) in original pixels over the whole batch and counts [N].
The detector must find the format by the outputs' shapes, feed the extra inputs, split the rows by the
counts, and agree with its own raw-head decoding of the same weights on the real photos.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper

from models.detector import PicoDetDetector, load_class_names
from models.detector_outputs import NMS_IN_GRAPH, RAW_HEADS
from models.errors import ModelError
from models.export.onnx_nms_wrap import (
    BOXES_OUTPUT,
    COUNTS_OUTPUT,
    KEEP_TOP_K,
    NMS_IOU,
    NMS_SCORE_THRESHOLD,
    wrap_picodet_with_nms,
)
from models.nms import batched_nms, box_iou
from models.preprocess_det import load_infer_cfg, preprocess_with_cfg
from models.raw_head_decoder import anchor_centres, decode_distances, distances_to_xyxy
from models.runtime import RuntimeOptions
from models.types import Detections

PHOTOS = ("bus.jpg", "dog.jpg", "zidane.jpg", "person.jpg")
ONNX = RuntimeOptions(backend="onnx")
RAW_FILE = "picodet_s_320_coco.onnx"


def _read(photos_dir: Path, name: str) -> np.ndarray:
    image = cv2.imread(str(photos_dir / name))
    assert image is not None, f"cannot read {photos_dir / name}"
    return image


@pytest.fixture(scope="module")
def coco_dir(model_dir: Path) -> Path:
    return model_dir / "picodet_s_coco"


@pytest.fixture(scope="module")
def coco_names(coco_dir: Path) -> list[str]:
    return load_class_names(coco_dir / "coco.names")


@pytest.fixture(scope="module")
def images(photos_dir: Path) -> list[np.ndarray]:
    return [_read(photos_dir, n) for n in PHOTOS]


@pytest.fixture(scope="module")
def nms_dir(coco_dir: Path, tmp_path_factory) -> Path:
    return wrap_picodet_with_nms(coco_dir / RAW_FILE, tmp_path_factory.mktemp("nms") / "picodet_nms", size=320)


def _graph_detector(folder: Path, **kw) -> PicoDetDetector:
    kw = {"score_threshold": 0.5, "max_detections": 100, "runtime": ONNX, **kw}
    return PicoDetDetector.from_model_dir(folder, model_file="model.onnx", **kw)


def _raw_detector(coco_dir: Path, **kw) -> PicoDetDetector:
    kw = {"score_threshold": 0.5, "max_detections": 100, "runtime": ONNX, **kw}
    return PicoDetDetector.from_model_dir(coco_dir, model_file=RAW_FILE, **kw)


def _assert_same(got: Detections, want: Detections, label: str) -> None:
    assert len(got) == len(want), f"{label}: {len(got)} boxes vs {len(want)}"
    assert got.class_id.tolist() == want.class_id.tolist(), f"{label}: classes {got.class_id} vs {want.class_id}"
    if len(want):
        iou = np.diag(box_iou(got.xyxy, want.xyxy))
        assert iou.min() > 0.99, f"{label}: IoU {iou}"
        assert np.abs(got.confidence - want.confidence).max() < 1e-3, f"{label}: scores {got.confidence} vs {want.confidence}"


def _assert_well_formed(det: Detections, image: np.ndarray) -> None:
    height, width = image.shape[:2]
    assert det.xyxy.dtype == np.float32 and det.confidence.dtype == np.float32 and det.class_id.dtype == np.int32
    assert np.all(det.xyxy[:, [0, 1]] >= 0) and np.all(det.xyxy[:, 2] <= width) and np.all(det.xyxy[:, 3] <= height)
    assert np.all(det.xyxy[:, 2] > det.xyxy[:, 0]) and np.all(det.xyxy[:, 3] > det.xyxy[:, 1])
    assert np.all(np.diff(det.confidence) <= 0), "detections must come best first"


def _run_wrapped(folder: Path, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The wrapped model's raw outputs for ``images`` in one run, and the tensor and scale_factor fed to it."""
    cfg = load_infer_cfg(folder / "infer_cfg.yml")
    tensor, scales = preprocess_with_cfg(images, cfg, size=320)
    scale_factor = np.ascontiguousarray(scales[:, ::-1])
    hw = np.array([im.shape[:2] for im in images], dtype=np.float32)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    rows, counts = session.run(
        [BOXES_OUTPUT, COUNTS_OUTPUT], {"image": tensor, "im_shape": np.round(hw * scale_factor), "scale_factor": scale_factor}
    )
    return rows, counts, tensor, scale_factor


# --- the wrapped model and its format ----------------------------------------------------------------------


def test_wrapped_folder_is_a_paddledetection_nms_export(nms_dir: Path, coco_dir: Path, coco_names) -> None:
    cfg = yaml.safe_load((nms_dir / "infer_cfg.yml").read_text())
    assert cfg["mode"] == "paddle" and cfg["arch"] == "PicoDet"
    assert [op["type"] for op in cfg["Preprocess"]] == ["Resize", "Pad", "NormalizeImage", "Permute"]
    assert cfg["label_list"] == coco_names
    model = onnx.load(str(nms_dir / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["im_shape", "image", "scale_factor"]
    ops = {n.op_type for n in model.graph.node}
    assert "NonMaxSuppression" in ops
    det = _graph_detector(nms_dir)
    assert det.output_format == NMS_IN_GRAPH and det._batched and det.input_size == 320
    assert det._aux_inputs == ("im_shape", "scale_factor")
    assert det.class_names == coco_names
    assert _raw_detector(coco_dir).output_format == RAW_HEADS


def test_outputs_are_paddledetection_layout(nms_dir: Path, images) -> None:
    """[M, 6] rows image after image, best first within an image, at most KEEP_TOP_K each; int32 counts [N]."""
    blank = np.zeros((240, 320, 3), dtype=np.uint8)  # nothing to find: a zero count in the middle of the batch
    batch = [images[0], blank, images[1], images[2]]
    rows, counts, _, _ = _run_wrapped(nms_dir, batch)
    assert counts.dtype == np.int32 and counts.shape == (4,)
    assert rows.dtype == np.float32 and rows.shape == (int(counts.sum()), 6)
    assert counts[1] == 0 and min(counts[[0, 2, 3]]) > 0 and counts.max() <= KEEP_TOP_K
    for image_rows, image in zip(np.split(rows, np.cumsum(counts)[:-1]), batch):
        assert np.all(np.diff(image_rows[:, 1]) <= 0)
        assert np.all(image_rows[:, 1] > NMS_SCORE_THRESHOLD)
        assert np.all(image_rows[:, 0] == np.rint(image_rows[:, 0])) and np.all((image_rows[:, 0] >= 0) & (image_rows[:, 0] < 80))
        height, width = image.shape[:2]
        assert np.all(image_rows[:, 2:4] >= 0) and np.all(image_rows[:, [4, 5]] <= [width, height])


def test_graph_decode_and_nms_equal_numpy_on_the_raw_outputs(nms_dir: Path, coco_dir: Path, images) -> None:
    """The appended graph against models/detector.py's decode helpers + per-class NMS on the raw model's maps.

    PaddleDetection's MultiClassNMS (and ONNX NonMaxSuppression) treat every (anchor, class) pair above the
    threshold as a candidate, not only each anchor's best class: the reference does the same.
    """
    rows, counts, tensor, scale_factor = _run_wrapped(nms_dir, images)
    raw = ort.InferenceSession(str(coco_dir / RAW_FILE), providers=["CPUExecutionProvider"])
    grids = [(40, 8), (20, 16), (10, 32), (5, 64)]
    centres = np.concatenate([anchor_centres(grid_h=g, grid_w=g, stride=s) for g, s in grids])
    strides = np.concatenate([np.full(g * g, s, np.float32) for g, s in grids])
    for k, (image, image_rows) in enumerate(zip(images, np.split(rows, np.cumsum(counts)[:-1]))):
        # The wrapped model takes RGB (PaddleDetection's decode); the raw graph inside it takes BGR.
        outputs = raw.run(None, {"image": np.ascontiguousarray(tensor[k : k + 1, ::-1])})
        scores = np.concatenate(outputs[:4], axis=1)[0]
        dists = np.concatenate(outputs[4:], axis=1)[0]
        boxes = distances_to_xyxy(centres, decode_distances(dists, stride=strides))
        boxes /= np.tile(scale_factor[k, ::-1], 2)
        height, width = image.shape[:2]
        np.clip(boxes, 0, [width, height, width, height], out=boxes)
        anchor, cls = np.nonzero(scores > NMS_SCORE_THRESHOLD)
        keep = batched_nms(boxes[anchor], scores[anchor, cls], cls, NMS_IOU)[:KEEP_TOP_K]
        want_boxes, want_scores, want_cls = boxes[anchor][keep], scores[anchor, cls][keep], cls[keep]
        name = PHOTOS[k]
        assert len(image_rows) == len(keep) > 0, f"{name}: {len(image_rows)} rows vs {len(keep)}"
        assert image_rows[:, 0].astype(int).tolist() == want_cls.tolist(), name
        np.testing.assert_allclose(image_rows[:, 1], want_scores, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(image_rows[:, 2:], want_boxes, atol=0.05, err_msg=name)


# --- through PicoDetDetector ---------------------------------------------------------------------------------


def test_bus_photo(nms_dir: Path, coco_names, photos_dir: Path) -> None:
    image = _read(photos_dir, "bus.jpg")
    det = _graph_detector(nms_dir).detect([image])[0]
    _assert_well_formed(det, image)
    names = [coco_names[c] for c in det.class_id]
    assert names.count("person") >= 3
    bus = det[np.array(names) == "bus"]
    assert len(bus) == 1 and bus.confidence[0] > 0.8
    x1, y1, x2, y2 = bus.xyxy[0]
    assert x1 < 60 and x2 > 780 and 180 < y1 < 280 and 650 < y2 < 800


@pytest.mark.parametrize("threshold", [0.3, 0.5])
def test_mainbody_agrees_with_the_raw_head_detector(threshold: float, nms_dir: Path, coco_dir: Path, images) -> None:
    """Class-agnostic (mainbody) NMS on both: the same boxes on the 4 photos, whatever per-class NMS kept first.

    Measured: IoU >= 0.999999, scores within 6e-7, coordinates within 1.3e-4 px.
    """
    graph = _graph_detector(nms_dir, score_threshold=threshold, mainbody=True)
    raw = _raw_detector(coco_dir, score_threshold=threshold, mainbody=True)
    for name, got, want in zip(PHOTOS, graph.detect(images), raw.detect(images)):
        assert len(want) >= 2, f"{name}: the raw model should find something"
        _assert_same(got, want, f"{name} at {threshold}")


def test_per_class_results_contain_the_raw_head_detections(nms_dir: Path, coco_dir: Path, images) -> None:
    """mainbody=False: every raw-head box (its anchor's best class) is among the in-graph NMS boxes.

    The graph may keep more: a second class at the same anchor (dog.jpg: the dog also scores as a cat), which the
    raw-head decoding (best class per anchor) never proposes.
    """
    graph = _graph_detector(nms_dir, score_threshold=0.3, mainbody=False)
    raw = _raw_detector(coco_dir, score_threshold=0.3, mainbody=False)
    extra_total = 0
    for name, got, want in zip(PHOTOS, graph.detect(images), raw.detect(images)):
        assert len(got) >= len(want) >= 2, name
        iou = box_iou(want.xyxy, got.xyxy)
        same_class = want.class_id[:, None] == got.class_id[None, :]
        match = np.where(same_class, iou, 0).argmax(axis=1)
        assert np.all(same_class[np.arange(len(want)), match]), name
        assert iou[np.arange(len(want)), match].min() > 0.99, name
        assert np.abs(got.confidence[match] - want.confidence).max() < 1e-3, name
        extra = np.setdiff1d(np.arange(len(got)), match)
        extra_total += len(extra)
        for e in extra:  # each extra box sits on a raw box of another class that scores higher
            overlap = box_iou(got.xyxy[e : e + 1], want.xyxy)[0]
            best = overlap.argmax()
            assert overlap[best] > 0.9 and want.class_id[best] != got.class_id[e] and want.confidence[best] >= got.confidence[e], name
    assert extra_total > 0, "the photos should show a second class at some anchor (dog.jpg: cat)"


def test_batch_of_four_in_one_run_equals_four_single_runs(nms_dir: Path, images) -> None:
    det = _graph_detector(nms_dir, score_threshold=0.3, mainbody=False)
    together = det.detect(images)
    for name, image, got in zip(PHOTOS, images, together):
        _assert_same(got, det.detect([image])[0], f"{name} batch vs single")


def test_images_with_nothing_come_back_empty(nms_dir: Path, images) -> None:
    blank = np.full((200, 300, 3), 127, dtype=np.uint8)
    det = _graph_detector(nms_dir)
    alone = det.detect([blank, blank])
    assert [len(d) for d in alone] == [0, 0]
    mixed = det.detect([blank, images[0], blank])
    assert len(mixed[0]) == 0 and len(mixed[2]) == 0 and len(mixed[1]) >= 4


def test_threshold_and_max_detections(nms_dir: Path, images) -> None:
    det = _graph_detector(nms_dir, score_threshold=0.3, max_detections=2, mainbody=False)
    got = det.detect([images[0]])[0]
    assert len(got) == 2 and got.confidence[0] > 0.8
    high = _graph_detector(nms_dir, score_threshold=0.85).detect([images[0]])[0]
    assert len(high) >= 1 and high.confidence.min() >= 0.85


def test_ppshitu_mainbody_preprocess_list_drives_the_model(nms_dir: Path, coco_dir: Path, tmp_path: Path, images) -> None:
    """PP-ShiTu's mainbody infer_cfg.yml layout (stretch resize, interp 2, 0–1 ImageNet normalisation) at 320.

    (x / 255 - 0.485) / 0.229 is (x - 123.675) / 58.395: the raw model's normalisation, so only the resize
    differs — a stretch, so scale_y and scale_x differ and must both reach the graph (and be kept apart).
    """
    folder = tmp_path / "stretch"
    folder.mkdir()
    (folder / "model.onnx").symlink_to(nms_dir / "model.onnx")
    cfg = {
        "mode": "paddle",
        "draw_threshold": 0.5,
        "metric": "COCO",
        "use_dynamic_shape": False,
        "arch": "PicoDet",
        "min_subgraph_size": 3,
        "Preprocess": [
            {"interp": 2, "keep_ratio": False, "target_size": [320, 320], "type": "Resize"},
            {"is_scale": True, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "type": "NormalizeImage"},
            {"type": "Permute"},
        ],
        "label_list": yaml.safe_load((nms_dir / "infer_cfg.yml").read_text())["label_list"],
    }
    (folder / "infer_cfg.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    stretch = _graph_detector(folder, score_threshold=0.5)
    letterbox = _raw_detector(coco_dir, score_threshold=0.5)
    for name, image, got, want in zip(PHOTOS, images, stretch.detect(images), letterbox.detect(images)):
        _assert_well_formed(got, image)
        # A different input image, so not the same numbers: the same objects in about the same places (measured
        # IoU 0.78–0.97; zidane.jpg, squeezed 2.25x horizontally, is the worst). With scale_y and scale_x swapped,
        # zidane's boxes would come out 1.8x too wide or too tall.
        for box, cls in zip(want.xyxy[want.confidence > 0.7], want.class_id[want.confidence > 0.7]):
            same = got.class_id == cls
            assert same.any() and box_iou(box[None], got.xyxy[same]).max() > 0.7, f"{name}: class {cls} at {box}"


# --- label_list ------------------------------------------------------------------------------------------------


def _one_class_raw(coco_dir: Path, out: Path) -> Path:
    """The raw model with each score map reduced to its best class: a 1-class 'foreground' detector."""
    model = onnx.load(str(coco_dir / RAW_FILE))
    graph = model.graph
    outputs = list(graph.output)
    del graph.output[:]
    for out_info in outputs:
        dims = [d.dim_value for d in out_info.type.tensor_type.shape.dim]
        if dims[2] == 80:
            name = f"{out_info.name}_foreground"
            graph.node.append(helper.make_node("ReduceMax", [out_info.name], [name], axes=[2], keepdims=1))
            graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [dims[0], dims[1], 1]))
        else:
            graph.output.append(out_info)
    onnx.save(model, str(out))
    return out


def test_label_list_foreground_with_a_one_class_model(coco_dir: Path, tmp_path: Path, images) -> None:
    """infer_cfg.yml's ``label_list: [foreground]`` names a 1-class model's boxes, as PP-ShiTu's mainbody model.

    Foreground = the best class's score at each anchor, so after class-agnostic NMS it must find exactly what the
    80-class raw-head detector finds in mainbody mode, labelled class 0.
    """
    raw1 = _one_class_raw(coco_dir, tmp_path / "foreground_raw.onnx")
    folder = wrap_picodet_with_nms(raw1, tmp_path / "foreground", size=320, labels=["foreground"])
    assert yaml.safe_load((folder / "infer_cfg.yml").read_text())["label_list"] == ["foreground"]
    det = _graph_detector(folder, score_threshold=0.5, mainbody=True)
    assert det.output_format == NMS_IN_GRAPH and det.class_names == ["foreground"]
    raw = _raw_detector(coco_dir, score_threshold=0.5, mainbody=True)
    for name, got, want in zip(PHOTOS, det.detect(images), raw.detect(images)):
        assert set(got.class_id.tolist()) <= {0}
        want = Detections(xyxy=want.xyxy, confidence=want.confidence, class_id=np.zeros(len(want), np.int32))
        _assert_same(got, want, name)
    with pytest.raises(ModelError, match=r"2 labels were given"):
        wrap_picodet_with_nms(raw1, tmp_path / "bad", size=320, labels=["foreground", "background"])


def test_label_list_shorter_than_the_class_ids_is_a_model_error(nms_dir: Path, tmp_path: Path, images) -> None:
    folder = tmp_path / "short_labels"
    folder.mkdir()
    (folder / "model.onnx").symlink_to(nms_dir / "model.onnx")
    cfg = yaml.safe_load((nms_dir / "infer_cfg.yml").read_text())
    cfg["label_list"] = ["foreground"]
    (folder / "infer_cfg.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    det = _graph_detector(folder)
    with pytest.raises(ModelError, match=r"short_labels/model\.onnx gives class id 5 but has 1 class names"):
        det.detect([images[0]])  # bus.jpg: the bus (class 5) is the highest class id found


# --- neither format ----------------------------------------------------------------------------------------------


def _tiny_model(path: Path, outputs: dict[str, list]) -> Path:
    """An image input and outputs of the given shapes (each a Constant of zeros): no detector either way."""
    nodes, infos = [], []
    for name, shape in outputs.items():
        concrete = [1 if isinstance(d, str) else d for d in shape]
        nodes.append(helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", TensorProto.FLOAT, concrete, np.zeros(concrete).ravel().tolist())))
        infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])
    graph = helper.make_graph(nodes, "tiny", [image], infos)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=7), str(path))
    return path


@pytest.mark.parametrize(
    "outputs",
    [
        {"det_boxes": ["M", 5], "det_num": ["N"]},  # 5 columns, not 6
        {"heatmap": [1, 10, 10, 80]},
        {"bbox": ["M", 6], "bbox_num": ["N"], "bbox_extra": ["N"]},  # two rank-1 outputs: which are the counts?
    ],
)
def test_model_of_neither_format_is_a_model_error_listing_its_outputs(tmp_path: Path, outputs: dict) -> None:
    path = _tiny_model(tmp_path / "odd_model.onnx", outputs)
    with pytest.raises(ModelError) as info:
        PicoDetDetector(model_path=path, class_names=["a"], score_threshold=0.5, max_detections=10, runtime=ONNX)
    message = str(info.value)
    assert "odd_model.onnx" in message and "neither" in message
    for name in outputs:
        assert re.search(rf"\b{name}\b", message), f"{name} not listed in: {message}"


def test_raw_model_missing_its_box_maps_is_neither_format(coco_dir: Path, tmp_path: Path) -> None:
    model = onnx.load(str(coco_dir / RAW_FILE))
    kept = list(model.graph.output)[:4]  # the score maps only
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(tmp_path / "scores_only.onnx"))
    with pytest.raises(ModelError, match=r"scores_only\.onnx: outputs .*save_infer_model/scale_0\.tmp_1 \[1, 1600, 80\].* are neither"):
        PicoDetDetector(model_path=tmp_path / "scores_only.onnx", class_names=["a"] * 80, score_threshold=0.5, max_detections=10)
