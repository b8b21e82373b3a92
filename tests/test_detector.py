"""PicoDetDetector on the real PicoDet-S COCO exports and real photos; decode helpers with numbers."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models.detector import PicoDetDetector, load_class_names
from models.raw_head_decoder import anchor_centres, decode_distances, distances_to_xyxy, select_detections
from models.errors import ModelError
from models.nms import box_iou
from models.types import Detections


@pytest.fixture(scope="module")
def coco_dir(model_dir: Path) -> Path:
    return model_dir / "picodet_s_coco"


@pytest.fixture(scope="module")
def coco_names(coco_dir: Path) -> list[str]:
    return load_class_names(coco_dir / "coco.names")


def _detector(coco_dir: Path, names: list[str], size: int, **overrides) -> PicoDetDetector:
    kwargs = dict(score_threshold=0.5, max_detections=100)
    kwargs.update(overrides)
    return PicoDetDetector(model_path=coco_dir / f"picodet_s_{size}_coco.onnx", class_names=names, **kwargs)


@pytest.fixture(scope="module")
def det320(coco_dir: Path, coco_names: list[str]) -> PicoDetDetector:
    return _detector(coco_dir, coco_names, 320)


@pytest.fixture(scope="module")
def det416(coco_dir: Path, coco_names: list[str]) -> PicoDetDetector:
    return _detector(coco_dir, coco_names, 416)


def _read(photos_dir: Path, name: str) -> np.ndarray:
    image = cv2.imread(str(photos_dir / name))
    assert image is not None, f"cannot read {photos_dir / name}"
    return image


def _named(det: Detections, names: list[str]) -> list[str]:
    return [names[c] for c in det.class_id]


def _assert_well_formed(det: Detections, image: np.ndarray) -> None:
    height, width = image.shape[:2]
    assert det.xyxy.dtype == np.float32 and det.confidence.dtype == np.float32 and det.class_id.dtype == np.int32
    assert np.all(det.xyxy[:, [0, 1]] >= 0) and np.all(det.xyxy[:, 2] <= width) and np.all(det.xyxy[:, 3] <= height)
    assert np.all(det.xyxy[:, 2] > det.xyxy[:, 0]) and np.all(det.xyxy[:, 3] > det.xyxy[:, 1])
    assert np.all(np.diff(det.confidence) <= 0), "detections must come best first"


# --- model facts -------------------------------------------------------------------------------------


def test_input_size_and_class_names_come_from_the_model(det320, det416, coco_names) -> None:
    assert det320.input_size == 320 and det416.input_size == 416
    assert det320.class_names == coco_names and len(coco_names) == 80
    assert coco_names[0] == "person" and coco_names[5] == "bus"


# --- real photos -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [320, 416])
def test_bus_photo(size: int, det320, det416, coco_names, photos_dir) -> None:
    image = _read(photos_dir, "bus.jpg")  # 810 x 1080, the bus across the middle, people in front
    det = {320: det320, 416: det416}[size].detect([image])[0]
    _assert_well_formed(det, image)
    names = _named(det, coco_names)
    assert names.count("person") >= 3
    bus = det[np.array(names) == "bus"]
    assert len(bus) == 1 and bus.confidence[0] > 0.8
    x1, y1, x2, y2 = bus.xyxy[0]
    # Measured: [18, 223, 809, 738] at 320, [16, 225, 809, 702] at 416 — the bus spans the frame's width.
    assert x1 < 60 and x2 > 780
    assert 180 < y1 < 280 and 650 < y2 < 800


def test_dog_photo_416(det416, coco_names, photos_dir) -> None:
    image = _read(photos_dir, "dog.jpg")  # 768 x 576
    det = det416.detect([image])[0]
    _assert_well_formed(det, image)
    by_name = {coco_names[c]: (s, b) for b, s, c in zip(det.xyxy, det.confidence, det.class_id)}
    assert {"dog", "bicycle", "car"} <= set(by_name)
    # Measured boxes: dog [128, 211, 312, 543], bicycle [121, 141, 570, 418], car [463, 75, 680, 167].
    expected = {"dog": [128, 211, 312, 543], "bicycle": [121, 141, 570, 418], "car": [463, 75, 680, 167]}
    for name, box in expected.items():
        iou = box_iou(by_name[name][1][None], np.array([box], dtype=np.float32))[0, 0]
        assert iou > 0.8, f"{name}: box {by_name[name][1]} vs expected {box} (IoU {iou:.2f})"


def test_anchor_centres_at_half_a_stride(det320, det416, photos_dir) -> None:
    """Flip a square photo left-right: with the right anchor-centre convention the boxes flip too.

    Anchors at i * stride instead of (i + 0.5) * stride shift every box right by about half a stride on
    each side, so a flipped image's boxes, mirrored back, would sit 13–40 input px to the right.
    """
    for det in (det320, det416):
        size = det.input_size
        for name in ("bus.jpg", "person.jpg"):
            image = _read(photos_dir, name)
            side = min(image.shape[:2])
            square = cv2.resize(image[:side, :side], (size, size), interpolation=cv2.INTER_AREA)
            plain, flipped = det.detect([square, np.ascontiguousarray(square[:, ::-1])])
            mirrored = flipped.xyxy.copy()
            mirrored[:, [0, 2]] = size - flipped.xyxy[:, [2, 0]]
            iou = box_iou(plain.xyxy, mirrored)
            matched = iou.max(axis=1) > 0.5
            assert matched.sum() >= 2, f"{name}: too few boxes found in both the photo and its mirror"
            partner = mirrored[iou.argmax(axis=1)][matched]
            centre_shift = ((partner[:, 0] + partner[:, 2]) - (plain.xyxy[matched, 0] + plain.xyxy[matched, 2])) / 2
            assert abs(float(centre_shift.mean())) < 4.0, f"{name} at {size}: mean centre shift {centre_shift}"


def test_batch_equals_one_by_one(det320, photos_dir) -> None:
    images = [_read(photos_dir, n) for n in ("bus.jpg", "dog.jpg", "zidane.jpg")]
    together = det320.detect(images)
    assert len(together) == 3
    for image, det in zip(images, together):
        alone = det320.detect([image])[0]
        np.testing.assert_array_equal(det.xyxy, alone.xyxy)
        np.testing.assert_array_equal(det.class_id, alone.class_id)


def test_video_frame_size(det320, bikes_mp4) -> None:
    capture = cv2.VideoCapture(str(bikes_mp4))
    frames = []
    while len(frames) < 30:
        ok, frame = capture.read()
        assert ok, f"cannot read 30 frames from {bikes_mp4}"
        frames.append(frame)
    capture.release()
    assert frames[0].shape == (272, 640, 3)
    results = det320.detect(frames)
    assert len(results) == 30
    for frame, det in zip(frames, results):
        _assert_well_formed(det, frame)
    assert sum(len(d) for d in results) > 0, "street footage should show something in 30 frames"


def test_empty_input_and_max_detections(coco_dir, coco_names, photos_dir) -> None:
    det = _detector(coco_dir, coco_names, 320, score_threshold=0.2, max_detections=2)
    assert det.detect([]) == []
    found = det.detect([_read(photos_dir, "bus.jpg")])[0]
    assert len(found) == 2
    assert found.confidence[0] > 0.8


def test_mainbody_merges_overlapping_classes_per_class_keeps_them(coco_dir, coco_names, photos_dir) -> None:
    # Measured on dog.jpg at 416, threshold 0.4: the car also scores as a truck (0.44) on nearly the same
    # box. Per-class NMS keeps both; class-agnostic (mainbody) NMS keeps only the car.
    image = _read(photos_dir, "dog.jpg")
    agnostic = _detector(coco_dir, coco_names, 416, score_threshold=0.4, mainbody=True).detect([image])[0]
    per_class = _detector(coco_dir, coco_names, 416, score_threshold=0.4, mainbody=False).detect([image])[0]
    assert "truck" in _named(per_class, coco_names)
    assert "truck" not in _named(agnostic, coco_names)
    truck = per_class[np.array(_named(per_class, coco_names)) == "truck"]
    car = per_class[np.array(_named(per_class, coco_names)) == "car"]
    assert box_iou(truck.xyxy, car.xyxy).max() > 0.6
    assert set(_named(agnostic, coco_names)) == {"dog", "bicycle", "car"}


def _dynamic_batch_copy(model_path: Path, out_path: Path) -> Path:
    """The real model with a symbolic batch dimension (its Reshapes copy dim 0 instead of fixing it at 1)."""
    model = onnx.load(str(model_path))
    for value in [model.graph.input[0], *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    initializers = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] in initializers:
            shape = numpy_helper.to_array(initializers[node.input[1]]).copy()
            if shape[0] == 1:
                shape[0] = 0  # 0 = copy the input's dimension
                initializers[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    onnx.save(model, str(out_path))
    return out_path


def test_dynamic_batch_model_runs_the_list_at_once(coco_dir, coco_names, det320, photos_dir, tmp_path) -> None:
    path = _dynamic_batch_copy(coco_dir / "picodet_s_320_coco.onnx", tmp_path / "dynamic.onnx")
    dynamic = PicoDetDetector(model_path=path, class_names=coco_names, score_threshold=0.5, max_detections=100)
    assert dynamic._batched
    images = [_read(photos_dir, n) for n in ("bus.jpg", "dog.jpg", "person.jpg")]
    for got, want in zip(dynamic.detect(images), det320.detect(images)):
        assert got.class_id.tolist() == want.class_id.tolist()
        np.testing.assert_allclose(got.xyxy, want.xyxy, atol=0.1)
        np.testing.assert_allclose(got.confidence, want.confidence, atol=1e-4)


# --- errors -------------------------------------------------------------------------------------------


def test_missing_model_is_a_model_error_naming_it(coco_names, tmp_path) -> None:
    missing = tmp_path / "nowhere" / "picodet.onnx"
    with pytest.raises(ModelError, match="nowhere/picodet.onnx"):
        PicoDetDetector(model_path=missing, class_names=coco_names, score_threshold=0.5, max_detections=10)


def test_corrupt_model_is_a_model_error_naming_it(coco_names, tmp_path) -> None:
    corrupt = tmp_path / "x.onnx"
    corrupt.write_bytes(b"\x00garbage, not a protobuf\xff" * 10)
    with pytest.raises(ModelError, match="x.onnx"):
        PicoDetDetector(model_path=corrupt, class_names=coco_names, score_threshold=0.5, max_detections=10)


def test_class_names_file_with_wrong_count_names_the_file(coco_dir, tmp_path) -> None:
    names_file = tmp_path / "short.names"
    names_file.write_text("\n".join(f"class{i}" for i in range(79)) + "\n")
    with pytest.raises(ModelError, match=r"short\.names has 79 names but model .*predicts 80 classes"):
        _detector(coco_dir, names_file, 320)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match=r"class_names has 3 names but model .*picodet_s_320_coco.onnx predicts 80"):
        _detector(coco_dir, ["a", "b", "c"], 320)


def test_class_names_file_given_as_path_loads(coco_dir) -> None:
    det = _detector(coco_dir, coco_dir / "coco.names", 320)  # type: ignore[arg-type]
    assert det.class_names[-1] == "toothbrush"


@pytest.mark.parametrize("content", [None, "", "\n \n"])
def test_load_class_names_missing_or_empty_names_the_file(tmp_path, content: str | None) -> None:
    path = tmp_path / "labels.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ModelError, match="labels.txt"):
        load_class_names(path)


def test_load_class_names_strips_lines(tmp_path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("person\r\n traffic light \n\nbus\n")
    assert load_class_names(path) == ["person", "traffic light", "bus"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(score_threshold=1.5), "score_threshold"),
        (dict(max_detections=0), "max_detections"),
        (dict(nms_iou=0.0), "nms_iou"),
    ],
)
def test_bad_settings_are_value_errors(coco_dir, coco_names, overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _detector(coco_dir, coco_names, 320, **overrides)


# --- decode helpers with numbers -------------------------------------------------------------------------


def test_anchor_centres_row_major_at_cell_centres() -> None:
    centres = anchor_centres(grid_h=2, grid_w=3, stride=8)
    expected = [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    np.testing.assert_array_equal(centres, np.array(expected, dtype=np.float32))


def test_decode_distances_is_softmax_expectation_times_stride() -> None:
    logits = np.full((2, 32), -50.0, dtype=np.float32)
    logits[0, [2, 8 + 0, 16 + 7, 24 + 3]] = 50.0  # one-hot bins: l=2, t=0, r=7, b=3
    logits[1, :] = 0.0  # uniform over 0..7: expectation 3.5 on every side
    distances = decode_distances(logits, stride=np.array([8.0, 32.0]))
    np.testing.assert_allclose(distances, [[16, 0, 56, 24], [112, 112, 112, 112]], atol=1e-4)
    # Two equal bins 1 and 2: expectation 1.5
    two = np.full((1, 32), -50.0, dtype=np.float32)
    two[0, [1, 2, 9, 10, 17, 18, 25, 26]] = 3.0
    np.testing.assert_allclose(decode_distances(two, stride=16.0), [[24, 24, 24, 24]], atol=1e-4)


def test_distances_to_xyxy() -> None:
    boxes = distances_to_xyxy(np.array([[100, 50]], dtype=np.float32), np.array([[10, 20, 30, 40]], dtype=np.float32))
    np.testing.assert_array_equal(boxes, [[90, 30, 130, 90]])


def test_select_detections_agnostic_vs_per_class() -> None:
    boxes = np.array([[0, 0, 100, 100], [2, 2, 102, 102], [200, 0, 300, 100]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    class_ids = np.array([2, 7, 2])  # a car and a truck on the same spot, another car elsewhere
    agnostic = select_detections(boxes, scores, class_ids, nms_iou=0.6, max_detections=10, class_agnostic=True)
    per_class = select_detections(boxes, scores, class_ids, nms_iou=0.6, max_detections=10, class_agnostic=False)
    assert agnostic.tolist() == [0, 2]
    assert per_class.tolist() == [0, 1, 2]
    top1 = select_detections(boxes, scores, class_ids, nms_iou=0.6, max_detections=1, class_agnostic=False)
    assert top1.tolist() == [0]


# --- Detections container ---------------------------------------------------------------------------------


def _three() -> Detections:
    return Detections(
        xyxy=np.array([[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]], dtype=np.float64),
        confidence=[0.9, 0.5, 0.1],
        class_id=np.array([0, 5, 2], dtype=np.int64),
    )


def test_detections_coerces_dtypes_and_selects() -> None:
    det = _three()
    assert len(det) == 3
    assert det.xyxy.dtype == np.float32 and det.confidence.dtype == np.float32 and det.class_id.dtype == np.int32
    kept = det[det.confidence > 0.3]
    assert len(kept) == 2 and kept.class_id.tolist() == [0, 5]
    picked = det[np.array([2, 0])]
    assert picked.confidence.tolist() == pytest.approx([0.1, 0.9])
    one = det[1]
    assert isinstance(one, Detections) and one.xyxy.shape == (1, 4) and one.class_id.tolist() == [5]
    assert len(det[np.array([], dtype=np.int64)]) == 0 and len(det[[]]) == 0
    assert len(det[1:]) == 2


def test_detections_empty() -> None:
    empty = Detections.empty()
    assert len(empty) == 0 and empty.xyxy.shape == (0, 4)
    assert len(empty[np.zeros(0, dtype=bool)]) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(xyxy=np.zeros((2, 3)), confidence=np.zeros(2), class_id=np.zeros(2, int)), r"xyxy .*\(n, 4\), got \(2, 3\)"),
        (dict(xyxy=np.zeros((2, 4)), confidence=np.zeros(3), class_id=np.zeros(2, int)), r"confidence .*\(2,\).*\(3,\)"),
        (dict(xyxy=np.zeros((2, 4)), confidence=np.zeros(2), class_id=np.zeros((2, 1), int)), r"class_id .*\(2, 1\)"),
        (dict(xyxy=np.zeros((1, 4)), confidence=np.zeros(1), class_id=np.array([1.5])), r"class_id must hold integers"),
    ],
)
def test_detections_validation_names_expected_and_actual(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Detections(**kwargs)


def test_detections_mask_of_wrong_length() -> None:
    with pytest.raises(IndexError, match=r"\(3,\), got \(2,\)"):
        _three()[np.array([True, False])]
