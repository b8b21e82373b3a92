"""What a detector model's outputs are, read from their shapes alone (never their names), and how to decode them.

Two layouts, each decoded by its own class (``models/raw_head_decoder.py``, ``models/graph_nms_decoder.py``):

* raw heads (the shared ONNX exports): for each feature level, a class-score map [B, N_l, C] and a GFL
  box-distribution map [B, N_l, 4 × (REG_MAX + 1)], paired by their anchor count N_l;
* NMS in the graph (PaddleDetection's default export): one [M, 6] output of kept boxes and one [N] output
  of box counts per image.

``read_output_layout`` is pure (it sees ``TensorInfo`` only), so the choice is tested with plain tables.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from models.errors import ModelError
from models.runtime import TensorInfo

# PicoDet-S distributes each box side over REG_MAX + 1 = 8 bins.
REG_MAX = 7
DIST_DIM = 4 * (REG_MAX + 1)
# The two layouts' names, as ``PicoDetDetector.output_format`` reports them.
RAW_HEADS = "raw_heads"
NMS_IN_GRAPH = "nms_in_graph"


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """What both decoders keep: score threshold, NMS IoU, a cap per image, and class-agnostic (mainbody) NMS."""

    score_threshold: float
    max_detections: int
    nms_iou: float = 0.6
    mainbody: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")
        if self.max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {self.max_detections}")


@dataclass(frozen=True, slots=True)
class RawHeadLayout:
    """Output indices of the score and box maps, paired per level, finest stride (most anchors) first."""

    score_indices: tuple[int, ...]
    dist_indices: tuple[int, ...]
    anchors_per_level: tuple[int, ...]
    num_classes: int


@dataclass(frozen=True, slots=True)
class GraphNmsLayout:
    """Output indices of the kept boxes [M, 6] = (class_id, score, x1, y1, x2, y2) and the counts [N]."""

    boxes_index: int
    counts_index: int


def describe_outputs(outputs: Sequence[TensorInfo]) -> str:
    """``name [d, ...]`` for each output, ``?`` for a dynamic dimension: what an error shows of the model."""
    return ", ".join(f"{o.name} {['?' if d is None else d for d in o.shape]}" for o in outputs)


def read_output_layout(outputs: Sequence[TensorInfo], *, model_path: Path) -> RawHeadLayout | GraphNmsLayout:
    """The layout these outputs have; neither is a one-line ModelError naming the model file and its outputs."""
    graph_nms = _graph_nms_layout(outputs)
    if graph_nms is not None:
        return graph_nms
    try:
        return _raw_head_layout(outputs)
    except ModelError as exc:
        raise ModelError(
            f"{model_path}: outputs {describe_outputs(outputs)} are neither raw PicoDet heads (score maps "
            f"[B, N, C] paired with [B, N, {DIST_DIM}] box maps) nor NMS-in-graph results (boxes [M, 6] "
            f"+ counts [N]): {exc}"
        ) from None


def _graph_nms_layout(outputs: Sequence[TensorInfo]) -> GraphNmsLayout | None:
    """Exactly one rank-2 output whose last dimension is 6 (or unknown) and exactly one rank-1 output, else None.

    The dtypes (float rows, integer counts) are not in a ``TensorInfo``: the decoder checks them on each run.
    """
    boxes = [k for k, o in enumerate(outputs) if len(o.shape) == 2 and o.shape[1] in (6, None)]
    counts = [k for k, o in enumerate(outputs) if len(o.shape) == 1]
    if len(boxes) == 1 and len(counts) == 1:
        return GraphNmsLayout(boxes_index=boxes[0], counts_index=counts[0])
    return None


def _raw_head_layout(outputs: Sequence[TensorInfo]) -> RawHeadLayout:
    """Score and box maps told apart by their last dimension (DIST_DIM for boxes), not by output order."""
    scores: dict[int, tuple[int, int]] = {}  # anchors → (output index, classes)
    dists: dict[int, int] = {}  # anchors → output index
    for k, out in enumerate(outputs):
        shape = out.shape
        if len(shape) != 3 or not isinstance(shape[1], int) or not isinstance(shape[2], int):
            raise ModelError(f"output {out.name} has shape {list(shape)}, expected [B, N, C]")
        anchors, last = shape[1], shape[2]
        if anchors in (dists if last == DIST_DIM else scores):
            raise ModelError(f"two outputs with {anchors} anchors and last dim {last}")
        if last == DIST_DIM:
            dists[anchors] = k
        else:
            scores[anchors] = (k, last)
    if not scores or sorted(scores) != sorted(dists):
        raise ModelError(
            f"score maps for anchor counts {sorted(scores)} do not pair with {DIST_DIM}-wide box maps for {sorted(dists)}"
        )
    class_counts = {classes for _, classes in scores.values()}
    if len(class_counts) != 1:
        raise ModelError(f"score maps disagree on the class count: {sorted(class_counts)}")
    levels = sorted(scores, reverse=True)  # most anchors = finest stride first
    return RawHeadLayout(
        score_indices=tuple(scores[n][0] for n in levels),
        dist_indices=tuple(dists[n] for n in levels),
        anchors_per_level=tuple(levels),
        num_classes=class_counts.pop(),
    )
