"""NMS-in-graph outputs → Detections (PaddleDetection's default export, PP-ShiTu's mainbody detector).

The graph yields one [M, 6] output of (class_id, score, x1, y1, x2, y2) rows in original-image pixels, the
kept boxes of the whole batch image after image, and one [N] output of box counts per image. The rows are
split by the counts, kept when ``score >= score_threshold`` and, as for raw heads, NMSed class-agnostically in
mainbody mode (the graph's NMS is per class) and capped at ``max_detections``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.detector_outputs import NMS_IN_GRAPH, DecodeOptions, GraphNmsLayout
from models.errors import ModelError
from models.nms import nms_xyxy
from models.types import Detections


class GraphNmsDecoder:
    """One run's kept-box rows and counts → one Detections per image, best score first."""

    output_format = NMS_IN_GRAPH

    def __init__(self, layout: GraphNmsLayout, *, class_names: Sequence[str], options: DecodeOptions, model_path: Path) -> None:
        # The class count is not in the outputs' shapes: class ids are checked against the names on each run.
        self.layout = layout
        self.num_classes = len(class_names)
        self.options = options
        self.model_path = model_path

    def decode(
        self, outputs: Sequence[np.ndarray], *, scales_xy: np.ndarray, images_hw: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        """``outputs`` of one run over ``len(images_hw)`` images (rows are in original pixels: no ``scales_xy``)."""
        rows, counts = outputs[self.layout.boxes_index], outputs[self.layout.counts_index]
        if rows.ndim != 2 or rows.shape[1] != 6 or not np.issubdtype(rows.dtype, np.floating):
            raise ModelError(f"{self.model_path}: box output is {rows.dtype} {list(rows.shape)}, expected float [M, 6]")
        if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer) or np.any(counts < 0):
            raise ModelError(f"{self.model_path}: count output is {counts.dtype} {counts.tolist()}, expected non-negative integers [N]")
        if counts.shape[0] != len(images_hw):
            raise ModelError(f"{self.model_path}: {counts.shape[0]} box counts for a batch of {len(images_hw)} images")
        total = int(counts.sum())
        if total == 0:
            # Nothing kept in the whole batch: PaddleDetection may still emit a placeholder row (class -1).
            return [Detections.empty() for _ in images_hw]
        if total != rows.shape[0]:
            raise ModelError(f"{self.model_path}: box counts {counts.tolist()} add up to {total}, but {rows.shape[0]} boxes came out")
        per_image = np.split(rows, np.cumsum(counts)[:-1])
        return [self._one_image(image_rows, image_hw) for image_rows, image_hw in zip(per_image, images_hw)]

    def _one_image(self, rows: np.ndarray, image_hw: tuple[int, int]) -> Detections:
        """One image's (class_id, score, x1, y1, x2, y2) rows → its Detections, best score first."""
        # class -1: PaddleDetection's "no detection" placeholder row (counted as a box in some versions).
        rows = rows[(rows[:, 0] >= 0) & (rows[:, 1] >= self.options.score_threshold)]
        if rows.shape[0] == 0:
            return Detections.empty()
        class_ids = np.rint(rows[:, 0]).astype(np.int64)
        if class_ids.max() >= self.num_classes:
            raise ModelError(
                f"model {self.model_path} gives class id {int(class_ids.max())} but has {self.num_classes} class names"
            )
        scores = rows[:, 1].astype(np.float32)
        boxes = rows[:, 2:6].astype(np.float32)  # a copy: the clip below must not write into the model's output
        height, width = image_hw
        np.clip(boxes, 0, [width, height, width, height], out=boxes)
        if self.options.mainbody:
            keep = nms_xyxy(boxes, scores, self.options.nms_iou)[: self.options.max_detections]
        else:
            # The graph's NMS was per class already: only order and cap here.
            keep = np.argsort(-scores, kind="stable")[: self.options.max_detections]
        return Detections(xyxy=boxes[keep], confidence=scores[keep], class_id=class_ids[keep])
