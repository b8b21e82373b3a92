"""PP-ShiTu's per-frame semantics, with numbers: whole-frame box, the acceptance rule (score_thres and
vidrec's margin_thres), NMS over recognised boxes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from models.shitu import ShituParams, accepted, assemble_frame, crop_boxes, label_margin, with_whole_frame
from models.types import Detections


def _dets(xyxy: list[list[float]], scores: list[float], classes: list[int]) -> Detections:
    return Detections(
        xyxy=np.array(xyxy, dtype=np.float32).reshape(-1, 4),
        confidence=np.array(scores, dtype=np.float32),
        class_id=np.array(classes, dtype=np.int32),
    )


def test_whole_frame_box_is_appended() -> None:
    xyxy, scores, classes = with_whole_frame(_dets([[10, 10, 50, 50]], [0.9], [2]), width=640, height=272)
    np.testing.assert_array_equal(xyxy[-1], [0, 0, 640, 272])
    assert scores.tolist() == pytest.approx([0.9, 1.0])
    assert classes.tolist() == [2, -1]


def test_whole_frame_box_alone_when_nothing_detected() -> None:
    xyxy, scores, classes = with_whole_frame(Detections.empty(), width=100, height=50)
    assert xyxy.shape == (1, 4) and classes.tolist() == [-1]


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        # every box recognised, no overlap between the two objects: both kept, ordered by rec score;
        # the whole-frame box overlaps both (IoU > 0.05) and has a lower score: suppressed
        (["cup", "dog", "scene"], [0.7, 0.9, 0.6], [("dog", 0.9), ("cup", 0.7)]),
        # score under score_thres: label dropped, detector box kept unnamed; whole frame (unnamed) dropped
        (["cup", "dog", "scene"], [0.4, 0.9, 0.3], [("dog", 0.9), (None, None)]),
        # the whole frame wins when it scores highest: it suppresses every overlapping named box
        (["cup", "dog", "scene"], [0.7, 0.9, 0.95], [("scene", 0.95)]),
        # gallery found nothing at all: detector boxes stay, unnamed, by detector score
        ([None, None, None], [0.0, 0.0, 0.0], [(None, None), (None, None)]),
    ],
)
def test_assemble_frame(labels: list[str | None], scores: list[float], expected: list[tuple[str | None, float | None]]) -> None:
    xyxy, det_scores, classes = with_whole_frame(
        _dets([[0, 0, 100, 100], [200, 0, 300, 100]], [0.8, 0.6], [41, 16]), width=400, height=200
    )
    boxes = assemble_frame(
        xyxy=xyxy, det_scores=det_scores, class_ids=classes, labels=labels, scores=np.array(scores),
        params=ShituParams(rec_nms_thresold=0.05, score_thres=0.5),
    )
    assert [(b.label, None if b.score is None else round(b.score, 3)) for b in boxes] == expected
    for box in boxes:
        if box.label is None:
            assert box.det_class_id >= 0  # the whole-frame box is never output unnamed


def test_same_label_overlapping_boxes_keep_the_best() -> None:
    xyxy = np.array([[0, 0, 100, 100], [10, 10, 110, 110], [0, 0, 500, 500]], dtype=np.float32)
    boxes = assemble_frame(
        xyxy=xyxy, det_scores=np.array([0.9, 0.8, 1.0]), class_ids=np.array([0, 0, -1]),
        labels=["bob", "bob", None], scores=np.array([0.6, 0.8, 0.1]),
        params=ShituParams(rec_nms_thresold=0.5, score_thres=0.5),
    )
    assert [(b.label, b.xyxy[0]) for b in boxes] == [("bob", 10.0)]


def test_crop_boxes_clip_and_never_empty() -> None:
    image = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    crops = crop_boxes(image, np.array([[2.4, 3.6, 7.2, 8.0], [-5, -5, 100, 100], [19.5, 9.5, 19.6, 9.6]]))
    assert crops[0].shape == (5, 6, 3)  # rows floor(3.6)=3..8, columns floor(2.4)=2..ceil(7.2)=8
    np.testing.assert_array_equal(crops[0], image[3:8, 2:8])
    assert crops[1].shape == (10, 20, 3)
    assert crops[2].shape == (1, 1, 3)


INF = math.inf


@pytest.mark.parametrize(("labels", "scores", "margin"), [
    # the best other label is second: the gap to it
    (["cup", "dog", "cup"], [0.8, 0.5, 0.4], 0.3),
    # the top label holds the next entries too: the gap to the first entry of another label
    (["cup", "cup", "dog"], [0.8, 0.75, 0.6], 0.2),
    # every returned hit is the top label: the last score bounds the others (a lower bound)
    (["cup", "cup", "cup"], [0.8, 0.7, 0.65], 0.15),
    # the gallery ran out before another label came: no other label exists
    (["cup", "cup", None], [0.8, 0.7, -INF], INF),
    # a gallery of one entry, searched for one hit: nothing to confuse it with
    (["cup"], [0.8], INF),
    # no hit at all (empty gallery)
    ([None], [-INF], -INF),
])
def test_label_margin(labels, scores, margin) -> None:
    assert label_margin(labels, scores) == pytest.approx(margin)


@pytest.mark.parametrize(("score", "margin", "score_thres", "margin_thres", "expected"), [
    (0.60, 0.20, 0.45, 0.08, True),    # both clear: named
    (0.44, 0.30, 0.45, 0.08, False),   # too far from every gallery entry: unknown
    (0.90, 0.05, 0.45, 0.08, False),   # close to two labels at once: unknown (the case a score cannot reject)
    (0.45, 0.08, 0.45, 0.08, True),    # on both thresholds: named (>=, as PP-ShiTu's score_thres)
    (0.90, 0.00, 0.45, 0.00, True),    # margin_thres 0: PP-ShiTu's score-only rule
    (0.50, INF, 0.45, 0.08, True),     # no other label exists: the margin cannot reject
])
def test_accepted(score, margin, score_thres, margin_thres, expected) -> None:
    assert accepted(score, margin, score_thres=score_thres, margin_thres=margin_thres) is expected


def test_assemble_frame_drops_a_label_under_the_margin() -> None:
    xyxy, det_scores, classes = with_whole_frame(
        _dets([[0, 0, 100, 100], [200, 0, 300, 100]], [0.8, 0.6], [41, 16]), width=400, height=200
    )
    boxes = assemble_frame(
        xyxy=xyxy, det_scores=det_scores, class_ids=classes, labels=["cup", "dog", None],
        scores=np.array([0.7, 0.9, 0.0]), margins=np.array([0.2, 0.03, -INF]),
        params=ShituParams(rec_nms_thresold=0.05, score_thres=0.5, margin_thres=0.08),
    )
    # the dog's answer beats the next label by 0.03 only: its box stays, unnamed
    assert [(b.label, b.det_class_id) for b in boxes] == [("cup", 41), (None, 16)]
