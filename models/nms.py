"""Box overlap and non-maximum suppression in plain numpy (no torch/torchvision in this service)."""
from __future__ import annotations

import numpy as np


def _check_boxes(name: str, boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (n, 4) in xyxy, got {boxes.shape}")
    return boxes


def box_area(boxes_xyxy: np.ndarray) -> np.ndarray:
    """Area of each xyxy box; inverted boxes count as empty rather than negative."""
    boxes = _check_boxes("boxes_xyxy", boxes_xyxy)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def box_iou(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` (n, 4) with every box in ``b`` (m, 4) → (n, m) float32.

    Two empty boxes have IoU 0 (not NaN), so degenerate boxes never suppress anything.
    """
    a = _check_boxes("a_xyxy", a_xyxy)
    b = _check_boxes("b_xyxy", b_xyxy)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    iou = np.zeros_like(inter)
    np.divide(inter, union, out=iou, where=union > 0)
    return iou


def nms_xyxy(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices (int64) of the kept boxes, highest score first.

    A box is suppressed when its IoU with an already kept, higher-scoring box is strictly greater than
    ``iou_threshold``. Ties in score keep input order (stable sort), so results are reproducible.
    """
    boxes = _check_boxes("boxes", boxes)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape ({boxes.shape[0]},) to match boxes, got {scores.shape}")
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    # One vectorised IoU row per kept box: the loop runs over survivors, not over all candidates.
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        if not rest.size:
            break
        iou = box_iou(boxes[best : best + 1], boxes[rest])[0]
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Per-class NMS: boxes only suppress boxes of the same class. Kept indices, highest score first."""
    boxes = _check_boxes("boxes", boxes)
    scores = np.asarray(scores, dtype=np.float32)
    class_ids = np.asarray(class_ids)
    n = boxes.shape[0]
    if scores.shape != (n,) or class_ids.shape != (n,):
        raise ValueError(
            f"scores and class_ids must have shape ({n},) to match boxes, got {scores.shape} and {class_ids.shape}"
        )
    # One NMS per class present (a handful per frame) is exact, unlike the coordinate-offset trick,
    # which loses float32 precision on large offsets.
    kept = [np.flatnonzero(class_ids == c)[nms_xyxy(boxes[class_ids == c], scores[class_ids == c], iou_threshold)]
            for c in np.unique(class_ids)]
    if not kept:
        return np.zeros((0,), dtype=np.int64)
    keep = np.concatenate(kept)
    return keep[np.argsort(-scores[keep], kind="stable")].astype(np.int64)
