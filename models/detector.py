"""PP-PicoDet-S (COCO) on ONNX Runtime or Paddle Inference: preprocess, run, decode GFL outputs, NMS in numpy.

Two kinds of model folder (``PicoDetDetector.from_model_dir``): the shared ONNX exports (a model file plus
``coco.names``; fixed BGR preprocessing), and PaddleDetection inference exports (``model.json`` +
``model.pdiparams`` + ``infer_cfg.yml``, whose ``Preprocess`` list and ``label_list`` drive preprocessing
and class names).

Two output formats, told apart by the outputs' shapes (never their names):

* raw heads (the shared ONNX exports, ours): the graph stops before box decoding and NMS. It yields, for each
  of 4 feature levels (strides 8, 16, 32, 64), a sigmoid class-score map [B, N_l, C] and a box-distribution
  map [B, N_l, 4 × (reg_max + 1)] of raw logits (Generalized Focal Loss). This module decodes and NMSes.
* NMS in the graph (PaddleDetection's default export, PP-ShiTu's mainbody detector): one [M, 6] output of
  (class_id, score, x1, y1, x2, y2) rows in original-image pixels, the kept boxes of the whole batch image
  after image, and one [N] output of box counts per image. The model also takes ``im_shape`` [N, 2] (h, w
  after the resize) and ``scale_factor`` [N, 2] ([scale_y, scale_x]); this module splits the rows by the
  counts, keeps ``score >= score_threshold`` and, as for raw heads, applies class-agnostic NMS in mainbody
  mode (the graph's NMS is per class) and the ``max_detections`` cap.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.errors import ModelError
from models.nms import batched_nms, nms_xyxy
from models.preprocess_det import INFER_CFG_FILE, InferConfig, load_infer_cfg, preprocess_batch, preprocess_with_cfg
from models.runtime import RuntimeOptions, open_model
from models.types import Detections

# PicoDet-S distributes each box side over reg_max + 1 = 8 bins.
REG_MAX = 7
# Anchor centres sit at (i + CELL_OFFSET) * stride. Measured on the real photos (tests/test_detector.py):
# with 0.5 the boxes of a horizontally flipped square image mirror the original's to ~1 px; with 0 every
# box drifts right by 13–40 input px (about half a stride on each side).
CELL_OFFSET = 0.5
# Strides a PicoDet level can have; the level's stride is the one whose grid matches its anchor count.
_CANDIDATE_STRIDES = (4, 8, 16, 32, 64, 128)
# Bound the greedy NMS work when a low threshold lets thousands of anchors through
# (PaddleDetection's MultiClassNMS uses nms_top_k = 1000 as well).
PRE_NMS_TOP_K = 1000
# Model file of a PaddleDetection export folder when none is named (Paddle 3's program format).
PADDLE_MODEL_FILE = "model.json"
ONNX_LABELS_FILE = "coco.names"
# PaddleDetection's extra inputs (fed when the model has them); any other input besides the image is an error.
IM_SHAPE_INPUT = "im_shape"
SCALE_FACTOR_INPUT = "scale_factor"
AUX_INPUTS = (IM_SHAPE_INPUT, SCALE_FACTOR_INPUT)
RAW_HEADS = "raw_heads"
NMS_IN_GRAPH = "nms_in_graph"


def load_class_names(path: Path) -> list[str]:
    """One class name per line (blank lines ignored); a missing or empty file is a ModelError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"class names file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read class names file {path}: {exc}") from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ModelError(f"class names file is empty: {path}")
    return names


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


def _level_stride(num_anchors: int, size: int) -> tuple[int, int]:
    """(grid side, stride) of a level with ``num_anchors`` anchors on a square ``size`` input."""
    side = math.isqrt(num_anchors)
    if side * side == num_anchors:
        for stride in _CANDIDATE_STRIDES:
            if math.ceil(size / stride) == side:
                return side, stride
    raise ModelError(f"no stride gives {num_anchors} anchors on a {size}x{size} input")


class PicoDetDetector:
    """Detect objects in BGR images with a PicoDet export; boxes come back in original-image pixels.

    ``infer_cfg`` (a PaddleDetection export's ``infer_cfg.yml``) replaces the ONNX exports' fixed preprocessing.
    """

    def __init__(
        self,
        *,
        model_path: Path,
        class_names: Sequence[str] | Path,
        score_threshold: float,
        max_detections: int,
        nms_iou: float = 0.6,
        mainbody: bool = True,
        runtime: RuntimeOptions = RuntimeOptions(),
        infer_cfg: InferConfig | None = None,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou}")
        if max_detections < 1:
            raise ValueError(f"max_detections must be at least 1, got {max_detections}")
        names_source: Path | None = None
        if isinstance(class_names, (str, os.PathLike)):
            # A file path is accepted so a count mismatch can name the file at fault.
            names_source = Path(class_names)
            class_names = load_class_names(names_source)

        self.model_path = Path(model_path)
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)
        self.nms_iou = float(nms_iou)
        self.mainbody = bool(mainbody)
        self._model = open_model(self.model_path, runtime)

        inputs = self._model.inputs
        images = [i for i in inputs if i.name not in AUX_INPUTS]
        if len(images) != 1:
            raise ModelError(
                f"{self.model_path}: expected one image input (and optionally {', '.join(AUX_INPUTS)}), got {[i.name for i in inputs]}"
            )
        self._input_name = images[0].name
        self._aux_inputs = tuple(i.name for i in inputs if i.name in AUX_INPUTS)
        self.infer_cfg = infer_cfg
        shape = images[0].shape
        if len(shape) != 4 or not isinstance(shape[2], int) or shape[2] != shape[3]:
            raise ModelError(f"{self.model_path}: expected input [B, 3, S, S] with a fixed S, got {shape}")
        self.input_size: int = int(shape[2])
        # Batch fixed at 1 → one run per image; a dynamic batch dimension → the whole list in one run.
        self._batched = shape[0] != 1

        nms_outputs = self._find_nms_outputs()
        if nms_outputs is not None:
            # The class count is not in the outputs' shapes: class ids are checked against the names per run.
            self.output_format = NMS_IN_GRAPH
            self._boxes_idx, self._counts_idx = nms_outputs
            self.class_names: list[str] = list(class_names)
            return
        self.output_format = RAW_HEADS
        try:
            self._score_names, self._dist_names, num_classes = self._split_outputs()
        except ModelError as exc:
            raise ModelError(
                f"{self.model_path}: outputs {self._describe_outputs()} are neither raw PicoDet heads (score maps "
                f"[B, N, C] paired with [B, N, {4 * (REG_MAX + 1)}] box maps) nor NMS-in-graph results (boxes [M, 6] "
                f"+ counts [N]): {exc}"
            ) from None
        output_names = [o.name for o in self._model.outputs]
        self._score_idx = [output_names.index(n) for n in self._score_names]
        self._dist_idx = [output_names.index(n) for n in self._dist_names]
        if num_classes != len(class_names):
            source = f"class names file {names_source}" if names_source else "class_names"
            raise ModelError(
                f"{source} has {len(class_names)} names but model {self.model_path} predicts {num_classes} classes"
            )
        self.class_names = list(class_names)
        self._centres, self._strides = self._anchor_grid()
        if infer_cfg is not None and infer_cfg.fpn_stride is not None:
            strides = sorted({int(s) for s in self._strides})
            if strides != sorted(infer_cfg.fpn_stride):
                raise ModelError(
                    f"{infer_cfg.path}: fpn_stride {list(infer_cfg.fpn_stride)} but model {self.model_path} has levels of stride {strides}"
                )

    @classmethod
    def from_model_dir(
        cls,
        model_dir: Path,
        *,
        model_file: str | None = None,
        labels_file: str | None = None,
        score_threshold: float,
        max_detections: int,
        nms_iou: float = 0.6,
        mainbody: bool = True,
        runtime: RuntimeOptions = RuntimeOptions(),
    ) -> "PicoDetDetector":
        """A detector for either kind of folder.

        With ``infer_cfg.yml`` (PaddleDetection export): its Preprocess list preprocesses, class names come from
        ``labels_file`` when given, else from its ``label_list``; ``model_file`` defaults to ``model.json``.
        Without: the shared ONNX export's fixed preprocessing; ``model_file`` is required and ``labels_file``
        defaults to ``coco.names``.
        """
        model_dir = Path(model_dir)
        cfg_path = model_dir / INFER_CFG_FILE
        common = dict(score_threshold=score_threshold, max_detections=max_detections, nms_iou=nms_iou, mainbody=mainbody, runtime=runtime)
        if cfg_path.is_file():
            cfg = load_infer_cfg(cfg_path)
            if labels_file is not None:
                names: Sequence[str] | Path = model_dir / labels_file
            elif cfg.label_list is not None:
                names = list(cfg.label_list)
            else:
                raise ModelError(f"{cfg_path} has no label_list and no labels file was named")
            return cls(model_path=model_dir / (model_file or PADDLE_MODEL_FILE), class_names=names, infer_cfg=cfg, **common)
        if model_file is None:
            raise ModelError(f"model folder {model_dir} has no {INFER_CFG_FILE}: name its model file")
        return cls(model_path=model_dir / model_file, class_names=model_dir / (labels_file or ONNX_LABELS_FILE), **common)

    def _describe_outputs(self) -> str:
        return ", ".join(f"{o.name} {['?' if d is None else d for d in o.shape]}" for o in self._model.outputs)

    def _find_nms_outputs(self) -> tuple[int, int] | None:
        """Indices of the (boxes [M, 6], counts [N]) outputs of an NMS-in-graph model, or None if it is not one.

        Matched by rank and shape: exactly one rank-2 output whose last dimension is 6 (or unknown) and exactly
        one rank-1 output; the dtypes (float rows, integer counts) are checked on each run.
        """
        outputs = self._model.outputs
        boxes = [k for k, o in enumerate(outputs) if len(o.shape) == 2 and o.shape[1] in (6, None)]
        counts = [k for k, o in enumerate(outputs) if len(o.shape) == 1]
        if len(boxes) == 1 and len(counts) == 1:
            return boxes[0], counts[0]
        return None

    def _split_outputs(self) -> tuple[list[str], list[str], int]:
        """Score and distribution output names, paired per level in ascending stride, and the class count.

        Told apart by their last dimension (4 × (REG_MAX + 1) for distributions), not by output order.
        """
        dist_dim = 4 * (REG_MAX + 1)
        scores: dict[int, tuple[str, int]] = {}
        dists: dict[int, str] = {}
        for out in self._model.outputs:
            shape = out.shape
            if len(shape) != 3 or not isinstance(shape[1], int) or not isinstance(shape[2], int):
                raise ModelError(f"{self.model_path}: output {out.name} has shape {shape}, expected [B, N, C]")
            table = dists if shape[2] == dist_dim else scores
            if shape[1] in table:
                raise ModelError(f"{self.model_path}: two outputs with {shape[1]} anchors and last dim {shape[2]}")
            table[shape[1]] = out.name if table is dists else (out.name, shape[2])
        if not scores or sorted(scores) != sorted(dists):
            raise ModelError(
                f"{self.model_path}: score maps for anchor counts {sorted(scores)} do not pair with "
                f"{dist_dim}-wide box maps for {sorted(dists)}"
            )
        class_counts = {c for _, c in scores.values()}
        if len(class_counts) != 1:
            raise ModelError(f"{self.model_path}: score maps disagree on the class count: {sorted(class_counts)}")
        levels = sorted(scores, reverse=True)  # most anchors = finest stride first
        return [scores[n][0] for n in levels], [dists[n] for n in levels], class_counts.pop()

    def _anchor_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Anchor centres (A, 2) and strides (A,) for all levels, concatenated in output order."""
        centres, strides = [], []
        for name in self._score_names:
            num_anchors = next(o.shape[1] for o in self._model.outputs if o.name == name)
            side, stride = _level_stride(num_anchors, self.input_size)
            centres.append(anchor_centres(grid_h=side, grid_w=side, stride=stride))
            strides.append(np.full(num_anchors, stride, dtype=np.float32))
        return np.concatenate(centres), np.concatenate(strides)

    def detect(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        """One ``Detections`` per BGR uint8 image, boxes in that image's pixels, best score first."""
        if len(images_bgr) == 0:
            return []
        if self.infer_cfg is not None:
            tensor, scales = preprocess_with_cfg(images_bgr, self.infer_cfg, size=self.input_size)
        else:
            tensor, scales = preprocess_batch(images_bgr, size=self.input_size)
        feeds = {self._input_name: tensor}
        if self._aux_inputs:
            # PaddleDetection's im_info: scale_factor [sy, sx] (resized px per original px); im_shape the resized
            # (h, w) — the rounded sizes the resize produced, which is what scale × original size gives back.
            scale_factor = np.ascontiguousarray(scales[:, ::-1], dtype=np.float32)
            original_hw = np.array([image.shape[:2] for image in images_bgr], dtype=np.float32)
            aux = {IM_SHAPE_INPUT: np.round(original_hw * scale_factor).astype(np.float32), SCALE_FACTOR_INPUT: scale_factor}
            feeds.update({name: aux[name] for name in self._aux_inputs})
        if self._batched:
            raw = [self._model.run(feeds)]
        else:
            raw = [self._model.run({name: value[i : i + 1] for name, value in feeds.items()}) for i in range(len(images_bgr))]
        if self.output_format == NMS_IN_GRAPH:
            return self._split_nms_results(raw, images_bgr)
        results: list[Detections] = []
        image_no = 0
        for outputs in raw:
            scores = np.concatenate([outputs[i] for i in self._score_idx], axis=1)
            dists = np.concatenate([outputs[i] for i in self._dist_idx], axis=1)
            for b in range(scores.shape[0]):
                image = images_bgr[image_no]
                results.append(self._postprocess(scores[b], dists[b], scales[image_no], image.shape[:2]))
                image_no += 1
        return results

    def _postprocess(
        self, scores: np.ndarray, dists: np.ndarray, scale_xy: np.ndarray, image_hw: tuple[int, int]
    ) -> Detections:
        """Scores (A, C) and distribution logits (A, 4 × bins) of one image → its Detections."""
        class_ids = scores.argmax(axis=1)
        best = scores[np.arange(scores.shape[0]), class_ids]
        candidates = np.flatnonzero(best > self.score_threshold)
        if candidates.size > PRE_NMS_TOP_K:
            candidates = candidates[np.argpartition(-best[candidates], PRE_NMS_TOP_K)[:PRE_NMS_TOP_K]]
        if candidates.size == 0:
            return Detections.empty()
        # Decode only the anchors that passed the threshold: a few dozen out of ~2100 (320) or ~3600 (416).
        distances = decode_distances(dists[candidates], stride=self._strides[candidates])
        boxes = distances_to_xyxy(self._centres[candidates], distances)
        boxes /= np.tile(scale_xy, 2)  # input pixels → original pixels (top-left letterbox: no offset)
        height, width = image_hw
        np.clip(boxes, 0, [width, height, width, height], out=boxes)
        keep = select_detections(
            boxes,
            best[candidates],
            class_ids[candidates],
            nms_iou=self.nms_iou,
            max_detections=self.max_detections,
            class_agnostic=self.mainbody,
        )
        return Detections(xyxy=boxes[keep], confidence=best[candidates][keep], class_id=class_ids[candidates][keep])

    def _split_nms_results(self, raw: list[list[np.ndarray]], images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        """NMS-in-graph outputs of each run → one Detections per image (rows split by the per-image counts)."""
        results: list[Detections] = []
        for outputs in raw:
            rows, counts = outputs[self._boxes_idx], outputs[self._counts_idx]
            if rows.ndim != 2 or rows.shape[1] != 6 or not np.issubdtype(rows.dtype, np.floating):
                raise ModelError(f"{self.model_path}: box output is {rows.dtype} {list(rows.shape)}, expected float [M, 6]")
            if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer) or np.any(counts < 0):
                raise ModelError(f"{self.model_path}: count output is {counts.dtype} {counts.tolist()}, expected non-negative integers [N]")
            first = len(results)
            batch = len(images_bgr) if self._batched else 1
            if counts.shape[0] != batch:
                raise ModelError(f"{self.model_path}: {counts.shape[0]} box counts for a batch of {batch} images")
            total = int(counts.sum())
            if total == 0:
                # Nothing kept in the whole batch: PaddleDetection may still emit a placeholder row (class -1).
                results.extend(Detections.empty() for _ in range(counts.shape[0]))
                continue
            if total != rows.shape[0]:
                raise ModelError(f"{self.model_path}: box counts {counts.tolist()} add up to {total}, but {rows.shape[0]} boxes came out")
            for k, image_rows in enumerate(np.split(rows, np.cumsum(counts)[:-1])):
                results.append(self._select_nms_rows(image_rows, images_bgr[first + k].shape[:2]))
        if len(results) != len(images_bgr):
            raise ModelError(f"{self.model_path}: results for {len(results)} images from a batch of {len(images_bgr)}")
        return results

    def _select_nms_rows(self, rows: np.ndarray, image_hw: tuple[int, int]) -> Detections:
        """One image's (class_id, score, x1, y1, x2, y2) rows → its Detections, best score first."""
        # class -1: PaddleDetection's "no detection" placeholder row (counted as a box in some versions).
        rows = rows[(rows[:, 0] >= 0) & (rows[:, 1] >= self.score_threshold)]
        if rows.shape[0] == 0:
            return Detections.empty()
        class_ids = np.rint(rows[:, 0]).astype(np.int64)
        if class_ids.max() >= len(self.class_names):
            raise ModelError(
                f"model {self.model_path} gives class id {int(class_ids.max())} but has {len(self.class_names)} class names"
            )
        scores = rows[:, 1].astype(np.float32)
        boxes = rows[:, 2:6].astype(np.float32)  # a copy: the clip below must not write into the model's output
        height, width = image_hw
        np.clip(boxes, 0, [width, height, width, height], out=boxes)
        if self.mainbody:
            keep = nms_xyxy(boxes, scores, self.nms_iou)[: self.max_detections]
        else:
            # The graph's NMS was per class already: only order and cap here.
            keep = np.argsort(-scores, kind="stable")[: self.max_detections]
        return Detections(xyxy=boxes[keep], confidence=scores[keep], class_id=class_ids[keep])
