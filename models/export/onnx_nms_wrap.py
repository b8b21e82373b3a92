"""A raw-head PicoDet ONNX turned into a PaddleDetection-style model with NMS inside the graph.

PP-ShiTu's mainbody detector (``picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer``) is a PaddleDetection export
whose graph ends in ``multiclass_nms3``: inputs ``image`` [N, 3, S, S], ``im_shape`` [N, 2] (h, w after the
resize) and ``scale_factor`` [N, 2] ([scale_y, scale_x] of the resize); outputs the kept boxes of the whole
batch [M, 6] = (class_id, score, x1, y1, x2, y2) in original-image pixels, image after image, best first
within an image, and the box count of each image [N] (int32). That model cannot be downloaded here, so this
module builds one of the same format from real weights: the shared raw PicoDet-S ONNX (4 sigmoid score maps
and 4 GFL distribution maps), with ONNX ops appended by :func:`wrap_picodet_with_nms`:

* the raw graph made batch-dynamic (its Reshapes copy dim 0 instead of fixing it at 1 — nothing else in it
  depends on the batch), its input channels reversed first (the wrapped model takes RGB, as PaddleDetection
  decodes images; the raw graph was trained on BGR);
* GFL decoding as ``models/detector.py`` does it: softmax over each side's 8 bins, expectation over the bin
  indices, times the level's stride, from anchor centres at ``(i + 0.5) * stride``;
* boxes divided by ``scale_factor`` (input pixels → original pixels, top-left letterbox: no offset) and
  clipped to the original image, ``round(im_shape / scale_factor)``;
* ``NonMaxSuppression`` per class (IoU 0.6, score threshold 0.3, at most 100 per class), then the best
  ``KEEP_TOP_K`` = 100 of each image, sorted by image and by score, and the per-image counts.

``infer_cfg.yml`` describes the preprocessing the raw ONNX needs, in PaddleDetection's RGB terms (the ops of
``models/export/paddle_picodet.py``): keep-ratio resize into S×S, zero padding at the bottom/right,
ImageNet mean/std on 0–255 values; ``label_list`` is the 80 COCO names.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.errors import ModelError

REG_MAX = 7
CELL_OFFSET = 0.5
NMS_IOU = 0.6
NMS_SCORE_THRESHOLD = 0.3
# Per class (NonMaxSuppression's max_output_boxes_per_class) and per image after merging the classes.
KEEP_TOP_K = 100
OPSET = 11  # the raw graph's opset; NonMaxSuppression, TopK with a tensor k, CumSum, Range all exist at 11
# PaddleDetection's names for the two outputs of multiclass_nms3 (the detector matches by shape, not name).
BOXES_OUTPUT = "multiclass_nms3_0.tmp_0"
COUNTS_OUTPUT = "multiclass_nms3_0.tmp_2"
MODEL_FILE = "model.onnx"


def _raw_levels(model: onnx.ModelProto, path: Path) -> tuple[list[str], list[str], list[int], int]:
    """Score and distribution output names in ascending stride, anchors per level, class count."""
    dist_dim = 4 * (REG_MAX + 1)
    scores: dict[int, tuple[str, int]] = {}
    dists: dict[int, str] = {}
    for out in model.graph.output:
        dims = [d.dim_value if d.HasField("dim_value") else None for d in out.type.tensor_type.shape.dim]
        if len(dims) != 3 or dims[1] is None or dims[2] is None:
            raise ModelError(f"{path}: output {out.name} has shape {dims}, expected [1, N, C] (a raw PicoDet head)")
        if dims[2] == dist_dim:
            dists[dims[1]] = out.name
        else:
            scores[dims[1]] = (out.name, dims[2])
    if not scores or sorted(scores) != sorted(dists) or len({c for _, c in scores.values()}) != 1:
        raise ModelError(f"{path}: outputs {[o.name for o in model.graph.output]} are not paired score / distribution maps")
    levels = sorted(scores, reverse=True)
    return [scores[n][0] for n in levels], [dists[n] for n in levels], levels, next(iter(scores.values()))[1]


def _anchors(levels: list[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Anchor centres (A, 2) as (x, y) and strides (A,), levels in output order, rows row-major."""
    centres, strides = [], []
    for count in levels:
        side = int(round(count**0.5))
        stride = next((s for s in (4, 8, 16, 32, 64, 128) if -(-size // s) == side and side * side == count), None)
        if stride is None:
            raise ModelError(f"no stride gives {count} anchors on a {size}x{size} input")
        ys, xs = np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32), indexing="ij")
        centres.append((np.stack([xs.ravel(), ys.ravel()], axis=1) + CELL_OFFSET) * stride)
        strides.append(np.full(count, stride, dtype=np.float32))
    return np.concatenate(centres).astype(np.float32), np.concatenate(strides)


def _make_batch_dynamic(graph: onnx.GraphProto) -> None:
    """Reshape targets that fix the batch at 1 copy the input's dim 0 instead (0 in an ONNX Reshape shape)."""
    initializers = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        name = node.input[1]
        if name in initializers:
            shape = numpy_helper.to_array(initializers[name]).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0
                initializers[name].CopyFrom(numpy_helper.from_array(shape, name))
        elif name in constants:
            attr = constants[name].attribute[0]
            shape = numpy_helper.to_array(attr.t).copy()
            if shape.size and shape[0] == 1:
                shape[0] = 0
                attr.t.CopyFrom(numpy_helper.from_array(shape, attr.t.name))
        else:
            raise ModelError(f"Reshape {node.name} takes a computed shape: cannot make the batch dynamic")


def build_nms_graph(raw: onnx.ModelProto, raw_path: Path, *, size: int, num_labels: int | None = None) -> onnx.ModelProto:
    """The wrapped model (see the module docstring); ``raw`` is not modified.

    ``num_labels``: the length of the label list that will go with it, checked against the score maps' classes.
    """
    model = onnx.ModelProto()
    model.CopyFrom(raw)
    graph = model.graph
    opsets = {o.domain: o.version for o in model.opset_import}
    if opsets.get("", 0) != OPSET:
        raise ModelError(f"{raw_path}: opset {opsets.get('', 0)}, expected {OPSET}")
    weights = {t.name for t in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in weights]
    if len(real_inputs) != 1:
        raise ModelError(f"{raw_path}: expected one image input, got {[i.name for i in real_inputs]}")
    image_in = real_inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in image_in.type.tensor_type.shape.dim]
    if dims[1:] != [3, size, size]:
        raise ModelError(f"{raw_path}: input {image_in.name} has shape {dims}, expected [1, 3, {size}, {size}]")
    score_names, dist_names, levels, num_classes = _raw_levels(raw, raw_path)
    if num_labels is not None and num_labels != num_classes:
        raise ModelError(f"{raw_path}: the score maps have {num_classes} classes but {num_labels} labels were given")
    centres, strides = _anchors(levels, size)
    num_anchors = centres.shape[0]

    _make_batch_dynamic(graph)
    # The raw graph reads "<image>_bgr": the wrapped model's input is RGB, its first node reverses the channels.
    image_name = image_in.name
    bgr = f"{image_name}_bgr"
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == image_name:
                node.input[k] = bgr
    del graph.input[:]
    del graph.output[:]
    del graph.value_info[:]

    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(op_type: str, inputs: list[str], output: str | list[str], **attrs) -> str:
        outputs = [output] if isinstance(output, str) else output
        nodes.append(helper.make_node(op_type, inputs, outputs, name=f"nmswrap/{outputs[0]}", **attrs))
        return outputs[0]

    p = "nmswrap_"
    op("Gather", [image_name, const(p + "rgb_to_bgr", np.array([2, 1, 0], np.int64))], bgr, axis=1)

    # --- GFL decode: [N, A, 4 x 8] logits → boxes [N, A, 4] in input pixels --------------------------------
    scores = op("Concat", score_names, p + "scores", axis=1)  # [N, A, C], sigmoid already
    dists = op("Concat", dist_names, p + "dists", axis=1)  # [N, A, 32]
    bins = op("Reshape", [dists, const(p + "bins_shape", np.array([0, num_anchors, 4, REG_MAX + 1], np.int64))], p + "bins")
    prob = op("Softmax", [bins], p + "prob", axis=3)
    expect = op("MatMul", [prob, const(p + "bin_index", np.arange(REG_MAX + 1, dtype=np.float32).reshape(-1, 1))], p + "expect")
    expect = op("Squeeze", [expect], p + "expect_sq", axes=[3])  # [N, A, 4]
    ltrb = op("Mul", [expect, const(p + "strides", strides.reshape(1, -1, 1))], p + "ltrb")
    lt = op("Slice", [ltrb, const(p + "s0", np.array([0], np.int64)), const(p + "s2", np.array([2], np.int64)), const(p + "ax2", np.array([2], np.int64))], p + "lt")
    rb = op("Slice", [ltrb, p + "s2", const(p + "s4", np.array([4], np.int64)), p + "ax2"], p + "rb")
    centres_name = const(p + "centres", centres.reshape(1, -1, 2))
    x1y1 = op("Sub", [centres_name, lt], p + "x1y1")
    x2y2 = op("Add", [centres_name, rb], p + "x2y2")
    boxes_in = op("Concat", [x1y1, x2y2], p + "boxes_in", axis=2)

    # --- to original pixels, clipped to the original image ---------------------------------------------------
    yxyx_to_xyxy = const(p + "xyxy_from_yx", np.array([1, 0, 1, 0], np.int64))  # [a_y, a_x] → [x, y, x, y]
    scale4 = op("Gather", ["scale_factor", yxyx_to_xyxy], p + "scale4", axis=1)  # [N, 4]
    scale4 = op("Unsqueeze", [scale4], p + "scale4_u", axes=[1])
    boxes_orig = op("Div", [boxes_in, scale4], p + "boxes_orig")
    orig_hw = op("Div", ["im_shape", "scale_factor"], p + "orig_hw")
    orig_hw = op("Floor", [op("Add", [orig_hw, const(p + "half", np.array(0.5, np.float32))], p + "orig_hw_half")], p + "orig_hw_round")
    limit = op("Unsqueeze", [op("Gather", [orig_hw, yxyx_to_xyxy], p + "limit4", axis=1)], p + "limit", axes=[1])
    boxes = op("Max", [boxes_orig, const(p + "zero", np.array(0.0, np.float32))], p + "boxes_pos")
    boxes = op("Min", [boxes, limit], p + "boxes")  # [N, A, 4]

    # --- per-class NMS ---------------------------------------------------------------------------------------
    scores_t = op("Transpose", [scores], p + "scores_t", perm=[0, 2, 1])  # [N, C, A]
    selected = op(
        "NonMaxSuppression",
        [
            boxes,
            scores_t,
            const(p + "max_per_class", np.array([KEEP_TOP_K], np.int64)),
            const(p + "iou", np.array([NMS_IOU], np.float32)),
            const(p + "score_thr", np.array([NMS_SCORE_THRESHOLD], np.float32)),
        ],
        p + "selected",
    )  # [K, 3] = (image, class, anchor)

    def column(k: int) -> str:
        return op("Gather", [selected, const(p + f"col{k}", np.array(k, np.int64))], p + f"sel_col{k}", axis=1)  # [K]

    sel_image, sel_class, sel_anchor = column(0), column(1), column(2)
    sel_score = op("GatherND", [scores_t, selected], p + "sel_score")  # [K]
    image_anchor = op(
        "Concat",
        [op("Unsqueeze", [sel_image], p + "sel_image_u", axes=[1]), op("Unsqueeze", [sel_anchor], p + "sel_anchor_u", axes=[1])],
        p + "image_anchor",
        axis=1,
    )
    sel_box = op("GatherND", [boxes, image_anchor], p + "sel_box")  # [K, 4]

    # --- order by image, then score (best first): one sort on score - 2 * image, in double ----------------------
    key = op(
        "Sub",
        [
            op("Cast", [sel_score], p + "score_f64", to=TensorProto.DOUBLE),
            op("Mul", [op("Cast", [sel_image], p + "image_f64", to=TensorProto.DOUBLE), const(p + "two", np.array(2.0, np.float64))], p + "image_x2"),
        ],
        p + "sort_key",
    )
    k_all = op("Shape", [selected], p + "k_shape")
    k_all = op("Slice", [k_all, p + "s0", const(p + "s1", np.array([1], np.int64)), p + "s0"], p + "k_all")  # [1]
    op("TopK", [key, k_all], [p + "sorted_key", p + "order"], axis=0, largest=1, sorted=1)
    order = p + "order"
    image_o = op("Gather", [sel_image, order], p + "image_o", axis=0)
    class_o = op("Gather", [sel_class, order], p + "class_o", axis=0)
    score_o = op("Gather", [sel_score, order], p + "score_o", axis=0)
    box_o = op("Gather", [sel_box, order], p + "box_o", axis=0)

    # --- the best KEEP_TOP_K of each image, and the per-image counts --------------------------------------------
    batch = op("Slice", [op("Shape", [image_name], p + "image_shape"), p + "s0", p + "s1", p + "s0"], p + "batch")  # [1]
    batch = op("Squeeze", [batch], p + "batch_scalar", axes=[0])
    one = const(p + "one", np.array(1, np.int64))
    zero_i = const(p + "zero_i", np.array(0, np.int64))
    image_ids = op("Range", [zero_i, batch, one], p + "image_ids")  # [N]
    onehot = op(
        "Equal",
        [op("Unsqueeze", [image_o], p + "image_o_u", axes=[1]), op("Unsqueeze", [image_ids], p + "image_ids_u", axes=[0])],
        p + "onehot",
    )  # [K, N]
    per_image = op("ReduceSum", [op("Cast", [onehot], p + "onehot_i", to=TensorProto.INT64)], p + "per_image", axes=[0], keepdims=0)
    starts = op("CumSum", [per_image, zero_i], p + "starts", exclusive=1)  # first row of each image
    position = op("Range", [zero_i, op("Squeeze", [k_all], p + "k_scalar", axes=[0]), one], p + "position")
    rank = op("Sub", [position, op("Gather", [starts, image_o], p + "start_o", axis=0)], p + "rank")
    keep = op("Less", [rank, const(p + "top_k", np.array(KEEP_TOP_K, np.int64))], p + "keep")
    class_k = op("Compress", [class_o, keep], p + "class_k", axis=0)
    score_k = op("Compress", [score_o, keep], p + "score_k", axis=0)
    box_k = op("Compress", [box_o, keep], p + "box_k", axis=0)
    class_f = op("Unsqueeze", [op("Cast", [class_k], p + "class_f", to=TensorProto.FLOAT)], p + "class_f_u", axes=[1])
    score_u = op("Unsqueeze", [score_k], p + "score_u", axes=[1])
    op("Concat", [class_f, score_u, box_k], BOXES_OUTPUT, axis=1)
    top_k = p + "top_k"  # Min takes no integers before opset 12
    capped = op("Where", [op("Less", [per_image, top_k], p + "under_top_k"), per_image, top_k], p + "per_image_capped")
    op("Cast", [capped], COUNTS_OUTPUT, to=TensorProto.INT32)

    # The channel reversal feeds the raw graph: it goes first, the rest after the raw nodes.
    raw_nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend([nodes[0], *raw_nodes, *nodes[1:]])
    graph.initializer.extend(inits)
    used = {name for node in graph.node for name in node.input}
    unused = [t for t in graph.initializer if t.name not in used]  # the raw file carries a few dead ones
    for tensor in unused:
        graph.initializer.remove(tensor)
    batch_dim = "N"
    graph.input.extend(
        [
            helper.make_tensor_value_info("im_shape", TensorProto.FLOAT, [batch_dim, 2]),
            helper.make_tensor_value_info(image_name, TensorProto.FLOAT, [batch_dim, 3, size, size]),
            helper.make_tensor_value_info("scale_factor", TensorProto.FLOAT, [batch_dim, 2]),
        ]
    )
    graph.output.extend(
        [
            helper.make_tensor_value_info(BOXES_OUTPUT, TensorProto.FLOAT, ["num_boxes", 6]),
            helper.make_tensor_value_info(COUNTS_OUTPUT, TensorProto.INT32, [batch_dim]),
        ]
    )
    graph.name = f"{graph.name or 'picodet'}_nms"
    onnx.checker.check_model(model)
    return model


def infer_cfg(size: int, labels: list[str], raw_name: str) -> dict:
    """infer_cfg.yml: the raw ONNX's preprocessing in PaddleDetection's RGB terms, the NMS settings, COCO labels."""
    from models.export.paddle_picodet import preprocess_ops

    return {
        "mode": "paddle",
        "draw_threshold": 0.5,
        "metric": "COCO",
        "use_dynamic_shape": False,
        "arch": "PicoDet",
        "min_subgraph_size": 3,
        "Preprocess": preprocess_ops(size),
        "label_list": labels,
        "NMS": {
            "name": "MultiClassNMS",
            "keep_top_k": KEEP_TOP_K,
            "score_threshold": NMS_SCORE_THRESHOLD,
            "nms_threshold": NMS_IOU,
        },
        "export": {
            "exporter": "vidrec models.export.onnx_nms_wrap",
            "weights_from": raw_name,
            "inputs": f"im_shape [N, 2], image [N, 3, {size}, {size}] float32 RGB, scale_factor [N, 2] as [sy, sx]",
            "outputs": f"{BOXES_OUTPUT} [M, 6] (class, score, x1, y1, x2, y2) in original pixels; {COUNTS_OUTPUT} [N] int32",
        },
    }


def wrap_picodet_with_nms(raw_onnx: Path, out_dir: Path, *, size: int, labels: Sequence[str] | None = None) -> Path:
    """Write ``out_dir/model.onnx`` (the raw PicoDet with decoding and NMS appended) and ``infer_cfg.yml``.

    ``labels`` (default: the 80 COCO names) becomes ``label_list``; it must match the model's class count.
    Returns ``out_dir``, a folder ``PicoDetDetector.from_model_dir(out_dir, model_file="model.onnx", ...)`` loads.
    """
    import yaml

    from models.export.paddle_picodet import coco_labels

    raw_onnx, out_dir = Path(raw_onnx), Path(out_dir)
    try:
        raw = onnx.load(str(raw_onnx))
    except FileNotFoundError:
        raise ModelError(f"model file not found: {raw_onnx}") from None
    except Exception as exc:  # onnx raises untyped protobuf errors
        raise ModelError(f"cannot load model {raw_onnx}: {exc}") from exc
    labels = list(labels) if labels is not None else coco_labels()
    wrapped = build_nms_graph(raw, raw_onnx, size=size, num_labels=len(labels))
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(wrapped, str(out_dir / MODEL_FILE))
    cfg = infer_cfg(size, labels, raw_onnx.name)
    (out_dir / "infer_cfg.yml").write_text(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False), encoding="utf-8")
    return out_dir
