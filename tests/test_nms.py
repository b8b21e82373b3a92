"""box_iou / nms_xyxy / batched_nms against hand-computed numbers."""
from __future__ import annotations

import numpy as np
import pytest

from models.nms import batched_nms, box_iou, nms_xyxy


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([0, 0, 2, 2], [0, 0, 2, 2], 1.0),  # identical
        ([0, 0, 2, 2], [1, 0, 3, 2], 2 / 6),  # half overlap: inter 2, union 4 + 4 - 2
        ([0, 0, 4, 4], [1, 1, 3, 3], 4 / 16),  # b inside a
        ([0, 0, 2, 2], [2, 0, 4, 2], 0.0),  # touching edges
        ([0, 0, 2, 2], [5, 5, 6, 6], 0.0),  # disjoint
        ([0, 0, 10, 10], [5, 5, 15, 15], 25 / 175),  # corner overlap
        ([1, 1, 1, 1], [1, 1, 1, 1], 0.0),  # two empty boxes: 0, not NaN
    ],
)
def test_box_iou_known_values(a: list[float], b: list[float], expected: float) -> None:
    iou = box_iou(np.array([a], dtype=np.float32), np.array([b], dtype=np.float32))
    assert iou.shape == (1, 1)
    assert iou[0, 0] == pytest.approx(expected, abs=1e-6)


def test_box_iou_is_pairwise_n_by_m() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 4, 4]], dtype=np.float32)
    b = np.array([[0, 0, 2, 2], [1, 0, 3, 2], [10, 10, 11, 11]], dtype=np.float32)
    expected = np.array([[1.0, 1 / 3, 0.0], [4 / 16, 4 / 16, 0.0]])
    np.testing.assert_allclose(box_iou(a, b), expected, atol=1e-6)
    np.testing.assert_allclose(box_iou(b, a), expected.T, atol=1e-6)


def test_box_iou_rejects_wrong_shape_naming_it() -> None:
    with pytest.raises(ValueError, match=r"b_xyxy must have shape \(n, 4\).*\(3,\)"):
        box_iou(np.zeros((1, 4)), np.zeros(3))


@pytest.mark.parametrize(
    ("boxes", "scores", "iou_threshold", "expected_keep"),
    [
        # two near-duplicates (IoU 0.81) and a far box: the weaker duplicate goes
        ([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.9, 0.8, 0.7], 0.5, [0, 2]),
        # same boxes, threshold above their IoU: nothing suppressed, order by score
        ([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], [0.7, 0.8, 0.9], 0.9, [2, 1, 0]),
        # order follows score, not input position; the higher-scoring duplicate survives
        ([[1, 1, 11, 11], [0, 0, 10, 10]], [0.3, 0.6], 0.5, [1]),
        # IoU exactly 0.25 (contained box): kept at threshold 0.25 (suppress only above) ...
        ([[0, 0, 4, 4], [1, 1, 3, 3]], [0.9, 0.8], 0.25, [0, 1]),
        # ... suppressed just below it
        ([[0, 0, 4, 4], [1, 1, 3, 3]], [0.9, 0.8], 0.24, [0]),
        # chain A-B-C: B is suppressed by A, so B cannot suppress C (IoU(A, C) = 0)
        ([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], [0.9, 0.8, 0.7], 0.3, [0, 2]),
        # equal scores: input order decides (stable)
        ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.5], 0.5, [0]),
    ],
)
def test_nms_keeps_and_suppresses(
    boxes: list[list[float]], scores: list[float], iou_threshold: float, expected_keep: list[int]
) -> None:
    keep = nms_xyxy(np.array(boxes, dtype=np.float32), np.array(scores, dtype=np.float32), iou_threshold)
    assert keep.dtype == np.int64
    assert keep.tolist() == expected_keep


def test_nms_empty_input() -> None:
    keep = nms_xyxy(np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64


def test_nms_rejects_mismatched_scores() -> None:
    with pytest.raises(ValueError, match=r"scores must have shape \(2,\).*\(3,\)"):
        nms_xyxy(np.zeros((2, 4)), np.zeros(3), 0.5)


@pytest.mark.parametrize(
    ("class_ids", "expected_keep"),
    [
        ([0, 0, 0], [0, 2]),  # one class: plain NMS
        ([0, 1, 0], [0, 1, 2]),  # the duplicate belongs to another class: it survives
        ([3, 3, 7], [0, 2]),
    ],
)
def test_batched_nms_only_suppresses_within_a_class(class_ids: list[int], expected_keep: list[int]) -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    keep = batched_nms(boxes, scores, np.array(class_ids), 0.5)
    assert keep.tolist() == expected_keep


def test_batched_nms_orders_by_score_across_classes() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=np.float32)
    scores = np.array([0.2, 0.9, 0.5], dtype=np.float32)
    keep = batched_nms(boxes, scores, np.array([1, 0, 1]), 0.5)
    assert keep.tolist() == [1, 2, 0]


def test_batched_nms_empty_input() -> None:
    keep = batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int32), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64
