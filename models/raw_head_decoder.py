"""Raw PicoDet heads → Detections: Generalized Focal Loss box decoding, then NMS in numpy.

The graph stops before box decoding and NMS. It yields, for each of 4 feature levels (strides 8, 16, 32, 64),
a sigmoid class-score map [B, N_l, C] and a box-distribution map [B, N_l, 4 × (REG_MAX + 1)] of raw logits.
Each anchor keeps its best class; anchors above the score threshold are decoded (softmax over each side's
bins, expectation, times the stride), mapped back to original pixels, and NMSed (class-agnostic in mainbody
mode).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.detector_outputs import RAW_HEADS, DecodeOptions, RawHeadLayout
from models.errors import ModelError
from models.nms import batched_nms, nms_xyxy
from models.types import Detections

# Anchor centres sit at (i + CELL_OFFSET) * stride. Measured on the real photos (tests/test_detector.py):
# with 0.5 the boxes of a horizontally flipped square image mirror the original's to ~1 px; with 0 every
# box drifts right by 13–40 input px (about half a stride on each side).
CELL_OFFSET = 0.5
# Strides a PicoDet level can have; the level's stride is the one whose grid matches its anchor count.
CANDIDATE_STRIDES = (4, 8, 16, 32, 64, 128)
# Bound the greedy NMS work when a low threshold lets thousands of anchors through
# (PaddleDetection's MultiClassNMS uses nms_top_k = 1000 as well).
PRE_NMS_TOP_K = 1000


def anchor_centres(*, grid_h: int, grid_w: int, stride: int, offset: float = CELL_OFFSET) -> np.ndarray:
    """Centres (grid_h * grid_w, 2) as (x, y) input pixels, row-major like the model's flattened maps."""
    ys, xs = np.meshgrid(np.arange(grid_h, dtype=np.float32), np.arange(grid_w, dtype=np.float32), indexing="ij")
    return (np.stack([xs.ravel(), ys.ravel()], axis=1) + offset) * stride


def decode_distances(dist_logits: np.ndarray, *, stride: np.ndarray | float) -> np.ndarray:
    """GFL box logits (k, 4 * bins) → distances (k, 4) to left, top, right, bottom in input pixels.

    Softmax over each side's bins, expectation over bin indices, times the anchor's stride.
    """
    k = dist_logits.shape[0]
    logits = dist_logits.reshape(k, 4, -1).astype(np.float32, copy=False)
    logits = logits - logits.max(axis=2, keepdims=True)  # stable softmax
    prob = np.exp(logits)
    prob /= prob.sum(axis=2, keepdims=True)
    expectation = prob @ np.arange(prob.shape[2], dtype=np.float32)
    return expectation * np.reshape(stride, (-1, 1)).astype(np.float32)


def distances_to_xyxy(centres: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Anchor centres (k, 2) and ltrb distances (k, 4) → boxes (k, 4) xyxy."""
    return np.concatenate([centres - distances[:, :2], centres + distances[:, 2:]], axis=1)


def select_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    *,
    nms_iou: float,
    max_detections: int,
    class_agnostic: bool,
) -> np.ndarray:
    """Indices of the boxes to keep after NMS (class-agnostic or per class), best first, at most ``max_detections``."""
    if class_agnostic:
        keep = nms_xyxy(boxes, scores, nms_iou)
    else:
        keep = batched_nms(boxes, scores, class_ids, nms_iou)
    return keep[:max_detections]


def level_stride(num_anchors: int, size: int) -> tuple[int, int]:
    """(grid side, stride) of a level with ``num_anchors`` anchors on a square ``size`` input."""
    side = math.isqrt(num_anchors)
    if side * side == num_anchors:
        for stride in CANDIDATE_STRIDES:
            if math.ceil(size / stride) == side:
                return side, stride
    raise ModelError(f"no stride gives {num_anchors} anchors on a {size}x{size} input")


def anchor_grid(anchors_per_level: Sequence[int], *, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres (A, 2) and strides (A,) of all levels, concatenated in the given level order."""
    centres, strides = [], []
    for num_anchors in anchors_per_level:
        side, stride = level_stride(num_anchors, input_size)
        centres.append(anchor_centres(grid_h=side, grid_w=side, stride=stride))
        strides.append(np.full(num_anchors, stride, dtype=np.float32))
    return np.concatenate(centres), np.concatenate(strides)


class RawHeadDecoder:
    """One run's raw score and box maps → one Detections per image, boxes in original pixels, best first."""

    output_format = RAW_HEADS

    def __init__(self, layout: RawHeadLayout, *, input_size: int, options: DecodeOptions, model_path: Path) -> None:
        self.layout = layout
        self.options = options
        self.model_path = model_path
        try:
            self.centres, self.strides = anchor_grid(layout.anchors_per_level, input_size=input_size)
        except ModelError as exc:
            raise ModelError(f"{model_path}: {exc}") from None

    @property
    def level_strides(self) -> list[int]:
        """The levels' strides, ascending (what infer_cfg.yml's ``fpn_stride`` lists)."""
        return sorted({int(s) for s in self.strides})

    def decode(
        self, outputs: Sequence[np.ndarray], *, scales_xy: np.ndarray, images_hw: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        """``outputs`` of one run over ``len(images_hw)`` images; ``scales_xy`` (n, 2) input px per original px."""
        scores = np.concatenate([outputs[i] for i in self.layout.score_indices], axis=1)
        dists = np.concatenate([outputs[i] for i in self.layout.dist_indices], axis=1)
        if scores.shape[0] != len(images_hw):
            raise ModelError(f"{self.model_path}: score maps for {scores.shape[0]} images from a batch of {len(images_hw)}")
        return [self._one_image(scores[b], dists[b], scales_xy[b], images_hw[b]) for b in range(len(images_hw))]

    def _one_image(self, scores: np.ndarray, dists: np.ndarray, scale_xy: np.ndarray, image_hw: tuple[int, int]) -> Detections:
        """Scores (A, C) and distribution logits (A, 4 × bins) of one image → its Detections."""
        class_ids = scores.argmax(axis=1)
        best = scores[np.arange(scores.shape[0]), class_ids]
        candidates = np.flatnonzero(best > self.options.score_threshold)
        if candidates.size > PRE_NMS_TOP_K:
            candidates = candidates[np.argpartition(-best[candidates], PRE_NMS_TOP_K)[:PRE_NMS_TOP_K]]
        if candidates.size == 0:
            return Detections.empty()
        # Decode only the anchors that passed the threshold: a few dozen out of ~2100 (320) or ~3600 (416).
        distances = decode_distances(dists[candidates], stride=self.strides[candidates])
        boxes = distances_to_xyxy(self.centres[candidates], distances)
        boxes /= np.tile(scale_xy, 2)  # input pixels → original pixels (top-left letterbox: no offset)
        height, width = image_hw
        np.clip(boxes, 0, [width, height, width, height], out=boxes)
        keep = select_detections(
            boxes,
            best[candidates],
            class_ids[candidates],
            nms_iou=self.options.nms_iou,
            max_detections=self.options.max_detections,
            class_agnostic=self.options.mainbody,
        )
        return Detections(xyxy=boxes[keep], confidence=best[candidates][keep], class_id=class_ids[candidates][keep])
