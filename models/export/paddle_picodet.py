"""PP-PicoDet-S (COCO) as a PaddleDetection inference export with a dynamic batch, weights from the ONNX file.

The network is PaddleDetection's own (paddledet 2.6.0: ``ESNet`` / ``CSPPAN`` / ``PicoFeat`` + ``PicoHead``'s
``head_cls`` convolutions), configured as the legacy ``picodet_s_320_coco`` — read off the shared ONNX graph:

* ESNet, scale 0.75, hard_swish, feature maps [4, 11, 14] (96 / 192 / 384 channels), channel ratios
  [0.875, 0.5, 0.5, 0.5, 0.625, 0.5, 0.625, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5] (the branch widths 44, 24, 60 ...
  of the ONNX convolutions; any other ratio fails the shape check below);
* CSP-PAN, 96 channels, depthwise 5×5, one CSP block, 4 levels (the 4th from two stride-2 DP modules);
* PicoFeat: 2 × (depthwise 5×5 + pointwise) per level, hard_swish, cls and reg shared (``share_cls_reg``),
  then one 1×1 conv per level to 80 + 4 × (reg_max + 1) = 112 channels, split into class logits and box
  distributions; strides 8 / 16 / 32 / 64, reg_max 7.

Weights. paddle2onnx folded every BatchNorm into its convolution and renamed those tensors (``3783`` ...);
only the SE / head weights keep Paddle names, and their biases are ``Constant`` nodes. So the mapping is by
execution order: one dygraph forward with hooks lists the network's convolutions in the order they run
(each with the BatchNorm that consumes its output, if any), which is the order of the ONNX Conv nodes (the
ONNX graph is this same forward, traced). Each pair must agree on weight shape, groups and stride; a folded
conv fills ``conv.weight`` and the BatchNorm's ``bias``, with the BatchNorm set to identity (scale 1, mean 0,
variance 1 − eps). Every entry of the network's state dict is assigned exactly once with its exact shape,
every ONNX weight is used exactly once, or :class:`WeightMappingError` names the parameter (Paddle's
``set_state_dict`` would skip a mismatch silently: it is not used). The export then checks itself: the
dygraph network and the saved inference model (Paddle Inference, oneDNN on, a batch of different inputs)
must reproduce the ONNX outputs.

Channel order. The ONNX takes BGR normalised with the BGR-ordered ImageNet mean (103.53, 116.28, 123.675).
PaddleDetection decodes images to RGB and has no BGR option, so the first convolution's input channels are
reversed here: the Paddle model takes RGB with mean (123.675, 116.28, 103.53) / std (58.395, 57.12, 57.375) —
the ordinary PaddleDetection convention — and computes exactly what the ONNX computes on the BGR tensor.

Batch and oneDNN. PaddleDetection's raw-head export reshapes to ``[1, C, -1]`` (batch N would mix anchors):
this head flattens ``[N, C, H, W] -> [N, C, H*W]`` instead. Its ``channel_shuffle`` reshapes with the
traced batch dimension (-1 under ``InputSpec([None, ...])``). The neck's 2× nearest upsample
(``nearest_interp``, which oneDNN rejects in Paddle 3.3.1) is replaced by unsqueeze / expand / reshape —
the same values for an exact 2× — so the model runs with oneDNN and no ``delete_pass``.

Runs in the export environment (``scripts/export-env``: paddle + paddledet + numpy 1.23 + onnx);
:func:`export_picodet_s_paddle` starts it as a subprocess from the service environment. Only the standard
library, numpy and onnx are imported at module level, so both environments can import this file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.errors import ModelError

EXPORTER_VERSION = "1"
SIZES = (320, 416)
NUM_CLASSES = 80
REG_MAX = 7
FPN_STRIDE = (8, 16, 32, 64)
CELL_OFFSET = 0.5
# PaddleDetection's legacy picodet_s_320_coco configuration (configs/picodet/legacy_model), checked against
# the ONNX convolution shapes by plan_assignment.
ESNET_ARGS = dict(
    scale=0.75,
    act="hard_swish",
    feature_maps=[4, 11, 14],
    channel_ratio=[0.875, 0.5, 0.5, 0.5, 0.625, 0.5, 0.625, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5],
)
CSPPAN_ARGS = dict(out_channels=96, kernel_size=5, num_features=4, num_csp_blocks=1, use_depthwise=True, act="hard_swish")
PICOFEAT_ARGS = dict(
    feat_in=96, feat_out=96, num_fpn_stride=4, num_convs=2, norm_type="bn", share_cls_reg=True, act="hard_swish", use_se=False
)
# The ONNX's preprocessing (shared models README) in the RGB order the Paddle model takes.
MEAN_RGB = [123.675, 116.28, 103.53]
STD_RGB = [58.395, 57.12, 57.375]
# Export self-check: Paddle vs ONNX Runtime on the same input (float32, different summation order).
SCORE_ATOL = 1e-4
DIST_ATOL = 2e-3

MODEL_STEM = "model"
WEIGHT_MAP_FILE = "weight_map.json"
REPO = Path(__file__).resolve().parents[2]


class WeightMappingError(ModelError):
    """An ONNX weight does not fit the Paddle parameter it maps to (or one is left unassigned)."""


# --- weights: pure numpy, importable in both environments ------------------------------------------------


@dataclass(frozen=True)
class OnnxConv:
    """One ONNX Conv node with its weight and bias arrays, in graph order."""

    node: str  # the node's (first) output name
    weight_name: str
    weight: np.ndarray
    bias_name: str | None
    bias: np.ndarray | None
    groups: int
    strides: tuple[int, ...]
    reads_image: bool  # consumes the graph's image input


@dataclass(frozen=True)
class ConvSlot:
    """One convolution of the Paddle network, in execution order, and the BatchNorm that follows it (if any)."""

    conv: str  # sublayer path, e.g. "backbone._conv1._conv"
    weight_shape: tuple[int, ...]
    groups: int
    strides: tuple[int, ...]
    has_bias: bool
    bn: str | None = None
    bn_channels: int = 0
    bn_eps: float = 1e-5

    @classmethod
    def from_json(cls, item: dict) -> "ConvSlot":
        return cls(**{**item, "weight_shape": tuple(item["weight_shape"]), "strides": tuple(item["strides"])})


def read_onnx_convs(onnx_path: Path) -> tuple[list[OnnxConv], tuple[int, ...]]:
    """The Conv nodes of a paddle2onnx PicoDet file in graph order, and its image input's shape."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(onnx_path))
    except Exception as exc:  # onnx raises untyped protobuf errors
        raise ModelError(f"cannot read ONNX file {onnx_path}: {exc}") from exc
    graph = model.graph
    tensors = {t.name: t for t in graph.initializer}
    constants = {}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = attr.t
    weights = set(tensors)
    image_inputs = [i for i in graph.input if i.name not in weights]
    if len(image_inputs) != 1:
        raise ModelError(f"{onnx_path}: expected one image input, got {[i.name for i in image_inputs]}")
    image = image_inputs[0]
    shape = tuple(d.dim_value for d in image.type.tensor_type.shape.dim)

    def array(name: str, what: str, node_name: str) -> np.ndarray:
        proto = tensors.get(name) or constants.get(name)
        if proto is None:
            raise ModelError(f"{onnx_path}: Conv {node_name} {what} {name} is neither an initializer nor a Constant")
        return numpy_helper.to_array(proto).astype(np.float32)

    convs = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        out = node.output[0]
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        convs.append(
            OnnxConv(
                node=out,
                weight_name=node.input[1],
                weight=array(node.input[1], "weight", out),
                bias_name=bias_name,
                bias=array(bias_name, "bias", out) if bias_name else None,
                groups=int(attrs.get("group", 1)),
                strides=tuple(int(s) for s in attrs.get("strides", (1, 1))),
                reads_image=node.input[0] == image.name,
            )
        )
    return convs, shape


def _bn_names(bn: str) -> tuple[str, str, str, str]:
    return f"{bn}.weight", f"{bn}.bias", f"{bn}._mean", f"{bn}._variance"


def plan_assignment(slots: list[ConvSlot], convs: list[OnnxConv], *, flip_image_channels: bool = True) -> dict[str, np.ndarray]:
    """Map the ONNX convolutions onto the network's, pair by pair in execution order: parameter name → array.

    Raises :class:`WeightMappingError` naming the parameter at the first disagreement (shape, groups,
    stride, bias), a convolution left over on either side, or a parameter or ONNX tensor used twice.
    ``flip_image_channels`` reverses the input channels of the conv that reads the image (BGR → RGB).
    """
    plan: dict[str, np.ndarray] = {}
    used_tensors: dict[str, str] = {}

    def put(name: str, value: np.ndarray) -> None:
        if name in plan:
            raise WeightMappingError(f"parameter {name} would be assigned twice")
        plan[name] = np.ascontiguousarray(value, dtype=np.float32)

    def use(tensor: str, by: str) -> None:
        if tensor in used_tensors:
            raise WeightMappingError(f"parameter {by}: ONNX tensor {tensor} is already used by {used_tensors[tensor]}")
        used_tensors[tensor] = by

    for slot, conv in zip(slots, convs):
        wname = f"{slot.conv}.weight"
        where = f"ONNX Conv {conv.node} (weight {conv.weight_name})"
        if tuple(conv.weight.shape) != tuple(slot.weight_shape):
            raise WeightMappingError(
                f"parameter {wname} has shape {list(slot.weight_shape)} but {where} has {list(conv.weight.shape)}"
            )
        if conv.groups != slot.groups or tuple(conv.strides) != tuple(slot.strides):
            raise WeightMappingError(
                f"parameter {wname}: groups {slot.groups} / stride {list(slot.strides)} but {where} has "
                f"groups {conv.groups} / stride {list(conv.strides)}"
            )
        out_channels = slot.weight_shape[0]
        if conv.bias is None:
            if slot.has_bias or slot.bn:
                raise WeightMappingError(f"parameter {slot.conv}.{'bias' if slot.has_bias else 'bn'}: {where} has no bias")
        elif tuple(conv.bias.shape) != (out_channels,):
            target = f"{slot.conv}.bias" if slot.has_bias else f"{slot.bn}.bias"
            raise WeightMappingError(f"parameter {target} has shape [{out_channels}] but {where} bias {conv.bias_name} has {list(conv.bias.shape)}")
        weight = conv.weight[:, ::-1] if (flip_image_channels and conv.reads_image) else conv.weight
        use(conv.weight_name, wname)
        put(wname, weight)
        if slot.has_bias:
            use(conv.bias_name, f"{slot.conv}.bias")
            put(f"{slot.conv}.bias", conv.bias)
        elif slot.bn:
            if slot.bn_channels != out_channels:
                raise WeightMappingError(f"parameter {slot.bn}.weight has {slot.bn_channels} channels but {where} has {out_channels}")
            gamma, beta, mean, var = _bn_names(slot.bn)
            use(conv.bias_name, beta)
            # The folded conv already holds the BatchNorm: make the BatchNorm the identity plus the bias.
            put(gamma, np.ones(out_channels, np.float32))
            put(beta, conv.bias)
            put(mean, np.zeros(out_channels, np.float32))
            put(var, np.full(out_channels, 1.0 - slot.bn_eps, np.float32))
        elif conv.bias is not None:
            raise WeightMappingError(f"parameter {wname}: {where} has a bias {conv.bias_name} but the layer has neither bias nor BatchNorm")
    if len(slots) > len(convs):
        raise WeightMappingError(f"parameter {slots[len(convs)].conv}.weight has no ONNX Conv left to take ({len(convs)} in the file, {len(slots)} in the network)")
    if len(convs) > len(slots):
        raise WeightMappingError(f"ONNX Conv {convs[len(slots)].node} (weight {convs[len(slots)].weight_name}) has no network parameter left ({len(convs)} in the file, {len(slots)} in the network)")
    return plan


def check_plan_covers(plan: dict[str, np.ndarray], state_shapes: dict[str, tuple[int, ...]]) -> None:
    """Every network entry assigned, with its exact shape, and nothing assigned that the network lacks."""
    for name, shape in state_shapes.items():
        if name not in plan:
            raise WeightMappingError(f"parameter {name} {list(shape)} is not assigned by any ONNX weight")
        if tuple(plan[name].shape) != tuple(shape):
            raise WeightMappingError(f"parameter {name} has shape {list(shape)} but is assigned {list(plan[name].shape)}")
    extra = sorted(set(plan) - set(state_shapes))
    if extra:
        raise WeightMappingError(f"parameter {extra[0]} is not in the network ({len(extra)} such)")


# --- the Paddle network (export environment only) ---------------------------------------------------------


def build_network():
    """PaddleDetection's PicoDet-S modules wrapped into a raw-output, batch-agnostic layer (eval mode)."""
    import paddle
    import paddle.nn as nn
    import paddle.nn.functional as F
    from ppdet.modeling.assigners.simota_assigner import SimOTAAssigner
    from ppdet.modeling.backbones.esnet import ESNet
    from ppdet.modeling.heads.pico_head import PicoFeat, PicoHead
    from ppdet.modeling.losses.gfocal_loss import DistributionFocalLoss
    from ppdet.modeling.losses.iou_loss import GIoULoss
    from ppdet.modeling.losses.varifocal_loss import VarifocalLoss
    from ppdet.modeling.necks.csp_pan import CSPPAN

    class Upsample2x(nn.Layer):
        """Nearest 2× as unsqueeze / expand / reshape: oneDNN runs it, unlike ``nearest_interp``."""

        def forward(self, x):
            _, c, h, w = x.shape
            y = x.unsqueeze([3, 5]).expand([-1, -1, -1, 2, -1, 2])
            return y.reshape([-1, c, h * 2, w * 2])

    class PicoDetRaw(nn.Layer):
        """image [N, 3, S, S] (RGB, normalised) → 4 × scores [N, A_l, 80] (sigmoid), 4 × distributions [N, A_l, 32]."""

        def __init__(self):
            super().__init__()
            self.backbone = ESNet(**ESNET_ARGS)
            in_channels = [s.channels for s in self.backbone.out_shape]
            self.neck = CSPPAN(in_channels=in_channels, spatial_scales=[0.125, 0.0625, 0.03125], **CSPPAN_ARGS)
            self.neck.upsample = Upsample2x()
            head = PicoHead(
                conv_feat=PicoFeat(**PICOFEAT_ARGS),
                num_classes=NUM_CLASSES,
                fpn_stride=list(FPN_STRIDE),
                prior_prob=0.01,
                loss_class=VarifocalLoss(use_sigmoid=True, iou_weighted=True, loss_weight=1.0),
                loss_dfl=DistributionFocalLoss(loss_weight=0.25),
                loss_bbox=GIoULoss(loss_weight=2.0),
                assigner=SimOTAAssigner(candidate_topk=10, iou_weight=6, num_classes=NUM_CLASSES),
                reg_max=REG_MAX,
                feat_in_chan=PICOFEAT_ARGS["feat_out"],
                cell_offset=CELL_OFFSET,
            )
            # Only what inference uses: PicoHead's GFL scales and integral buffer stay out of the state dict.
            self.conv_feat = head.conv_feat
            self.head_cls = nn.LayerList(head.head_cls_list)

        def forward(self, image):
            feats = self.neck(self.backbone({"image": image}))
            scores, dists = [], []
            for level, feat in enumerate(feats):
                cls_feat, _ = self.conv_feat(feat, level)
                logits = self.head_cls[level](cls_feat)
                cls, reg = paddle.split(logits, [NUM_CLASSES, 4 * (REG_MAX + 1)], axis=1)
                scores.append(F.sigmoid(cls).flatten(2).transpose([0, 2, 1]))
                dists.append(reg.flatten(2).transpose([0, 2, 1]))
            return scores + dists

    net = PicoDetRaw()
    net.eval()
    return net


def trace_conv_slots(net, size: int) -> list[ConvSlot]:
    """The network's convolutions in execution order, each with the BatchNorm applied to its output."""
    import paddle
    import paddle.nn as nn

    events: list[tuple[str, object, object, object]] = []
    handles = []
    for name, layer in net.named_sublayers():
        if isinstance(layer, (nn.Conv2D, nn.BatchNorm2D, nn.BatchNorm)):
            handles.append(layer.register_forward_post_hook(lambda lay, inp, out, name=name: events.append((name, lay, inp[0], out))))
    try:
        with paddle.no_grad():
            net(paddle.zeros([1, 3, size, size], dtype="float32"))
    finally:
        for handle in handles:
            handle.remove()
    seen: set[str] = set()
    slots: list[ConvSlot] = []
    i = 0
    while i < len(events):
        name, layer, _, out = events[i]
        if name in seen:
            raise WeightMappingError(f"layer {name} runs twice in one forward: cannot map weights by order")
        seen.add(name)
        if not isinstance(layer, nn.Conv2D):
            raise WeightMappingError(f"parameter {name}.weight: BatchNorm that follows no convolution")
        bn = None
        if i + 1 < len(events) and not isinstance(events[i + 1][1], nn.Conv2D) and events[i + 1][2] is out:
            bn = events[i + 1]
            seen.add(bn[0])
            i += 1
        i += 1
        slots.append(
            ConvSlot(
                conv=name,
                weight_shape=tuple(layer.weight.shape),
                groups=int(layer._groups),
                strides=tuple(int(s) for s in layer._stride),
                has_bias=layer.bias is not None,
                bn=bn[0] if bn else None,
                bn_channels=int(bn[1].weight.shape[0]) if bn else 0,
                bn_eps=float(bn[1]._epsilon) if bn else 1e-5,
            )
        )
    return slots


def load_plan(net, plan: dict[str, np.ndarray]) -> None:
    """Set every state-dict entry from the plan, after checking the plan covers it exactly."""
    state = net.state_dict()
    check_plan_covers(plan, {name: tuple(t.shape) for name, t in state.items()})
    for name, tensor in state.items():
        tensor.set_value(plan[name])
    for name, tensor in net.state_dict().items():  # read back: set_value must have taken
        if not np.array_equal(tensor.numpy(), plan[name]):
            raise WeightMappingError(f"parameter {name} did not take its value")


# --- export and self-check --------------------------------------------------------------------------------


def _check_inputs(size: int, seed: int = 0, count: int = 3) -> np.ndarray:
    """Deterministic, different, image-like BGR tensors (count, 3, S, S), normalised as the ONNX expects."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = []
    for k in range(count):
        base = 127 + 100 * np.sin(2 * np.pi * ((k + 1) * xx + (k + 2) * yy))[None]
        noisy = base + rng.normal(0, 30, (3, size, size))
        images.append(np.clip(noisy, 0, 255))
    mean_bgr = np.array(MEAN_RGB[::-1], np.float32)[:, None, None]
    std_bgr = np.array(STD_RGB[::-1], np.float32)[:, None, None]
    return ((np.stack(images).astype(np.float32) - mean_bgr) / std_bgr).astype(np.float32)


def _onnx_reference(onnx_path: Path, batch_bgr: np.ndarray) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # paddle2onnx lists weights as inputs: one warning per weight otherwise
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: batch_bgr[i : i + 1]}) for i in range(len(batch_bgr))]


def _compare(got: list[np.ndarray], want: list[np.ndarray], what: str) -> float:
    worst = 0.0
    for k, (g, w) in enumerate(zip(got, want)):
        if g.shape != w.shape:
            raise ModelError(f"{what}: output {k} has shape {list(g.shape)}, ONNX {list(w.shape)}")
        diff = float(np.abs(g - w).max())
        tol = SCORE_ATOL if k < len(FPN_STRIDE) else DIST_ATOL
        if not diff <= tol:
            raise ModelError(f"{what}: output {k} differs from the ONNX model by {diff:.2e} (tolerance {tol:.0e})")
        worst = max(worst, diff)
    return worst


def preprocess_ops(size: int) -> list[dict]:
    """PaddleDetection's Preprocess list equal to the shared ONNX's preprocessing.

    Starts from an RGB image (PaddleDetection's decode). Keep-ratio resize into S×S, zero padding at the
    bottom/right before normalising, ImageNet mean/std on 0–255 values.
    """
    return [
        {"type": "Resize", "target_size": [size, size], "keep_ratio": True, "interp": 1},
        {"type": "Pad", "size": [size, size], "fill_value": [0.0, 0.0, 0.0]},
        {"type": "NormalizeImage", "mean": list(MEAN_RGB), "std": list(STD_RGB), "is_scale": False, "norm_type": "mean_std"},
        {"type": "Permute"},
    ]


def infer_cfg(size: int, labels: list[str], onnx_path: Path, onnx_sha256: str) -> dict:
    """PaddleDetection's infer_cfg.yml for this export (PicoDet without NMS in the graph)."""
    return {
        "mode": "paddle",
        "draw_threshold": 0.5,
        "metric": "COCO",
        "use_dynamic_shape": False,
        "arch": "PicoDet",
        "min_subgraph_size": 3,
        "Preprocess": preprocess_ops(size),
        "label_list": labels,
        "NMS": {"name": "MultiClassNMS", "nms_top_k": 1000, "keep_top_k": 100, "score_threshold": 0.025, "nms_threshold": 0.6},
        "fpn_stride": list(FPN_STRIDE),
        "reg_max": REG_MAX,
        "cell_offset": CELL_OFFSET,
        "export": {
            "exporter": f"vidrec models.export.paddle_picodet {EXPORTER_VERSION}",
            "weights_from": onnx_path.name,
            "weights_sha256": onnx_sha256,
            "input": f"image [N, 3, {size}, {size}] float32, RGB",
            "outputs": "4 class-score maps [N, A, 80] (sigmoid), then 4 box-distribution maps [N, A, 32]; strides 8, 16, 32, 64",
        },
    }


def coco_labels() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "data" / "coco.names").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def export_from_onnx(onnx_path: Path, out_dir: Path, *, size: int) -> dict:
    """Build, load, check and save the Paddle model into ``out_dir`` (export environment). Returns a summary."""
    import time

    import paddle
    import yaml

    start = time.perf_counter()
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    convs, in_shape = read_onnx_convs(onnx_path)
    if tuple(in_shape[1:]) != (3, size, size):
        raise ModelError(f"{onnx_path}: input shape {list(in_shape)} is not [1, 3, {size}, {size}]")
    paddle.set_device("cpu")
    net = build_network()
    slots = trace_conv_slots(net, size)
    plan = plan_assignment(slots, convs)
    load_plan(net, plan)

    batch = _check_inputs(size)
    reference = _onnx_reference(onnx_path, batch)
    rgb = np.ascontiguousarray(batch[:, ::-1])
    with paddle.no_grad():
        for i in range(len(batch)):
            got = [t.numpy() for t in net(paddle.to_tensor(rgb[i : i + 1]))]
            _compare(got, reference[i], f"dygraph network, check input {i}")

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = [paddle.static.InputSpec([None, 3, size, size], "float32", name="image")]
    static = paddle.jit.to_static(net, input_spec=spec, full_graph=True)
    paddle.jit.save(static, str(out_dir / MODEL_STEM))
    if not (out_dir / f"{MODEL_STEM}.json").is_file() or not (out_dir / f"{MODEL_STEM}.pdiparams").is_file():
        raise ModelError(f"paddle.jit.save wrote {sorted(p.name for p in out_dir.iterdir())}, expected {MODEL_STEM}.json + .pdiparams")

    # The saved model through Paddle Inference, oneDNN on, the check inputs as ONE batch.
    from paddle import inference

    config = inference.Config(str(out_dir / f"{MODEL_STEM}.json"), str(out_dir / f"{MODEL_STEM}.pdiparams"))
    config.disable_gpu()
    config.enable_mkldnn()
    config.set_cpu_math_library_num_threads(2)
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(rgb.shape))
    handle.copy_from_cpu(rgb)
    predictor.run()
    outs = [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]
    worst = 0.0
    for i in range(len(batch)):
        worst = max(worst, _compare([o[i : i + 1] for o in outs], reference[i], f"saved model (batch of {len(batch)}), item {i}"))

    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    cfg = infer_cfg(size, coco_labels(), onnx_path, sha)
    (out_dir / "infer_cfg.yml").write_text(yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False), encoding="utf-8")
    weight_map = {
        "onnx": onnx_path.name,
        "slots": [
            {**asdict(slot), "onnx_conv": conv.node, "onnx_weight": conv.weight_name, "onnx_bias": conv.bias_name}
            for slot, conv in zip(slots, convs)
        ],
    }
    (out_dir / WEIGHT_MAP_FILE).write_text(json.dumps(weight_map, indent=1) + "\n", encoding="utf-8")
    return {
        "out_dir": str(out_dir),
        "size": size,
        "convolutions": len(slots),
        "parameters": len(plan),
        "max_abs_diff_vs_onnx": worst,
        "output_names": predictor.get_output_names(),
        "seconds": round(time.perf_counter() - start, 1),
    }


def load_weight_map(path: Path) -> list[ConvSlot]:
    """The conv slots an export recorded (``weight_map.json``), for checking a weight list without paddle."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    keys = set(ConvSlot.__dataclass_fields__)
    return [ConvSlot.from_json({k: v for k, v in item.items() if k in keys}) for item in data["slots"]]


# --- service-side entry point -----------------------------------------------------------------------------


def export_python() -> str:
    """The export environment's python (``scripts/export-env`` creates it when missing)."""
    try:
        done = subprocess.run([str(REPO / "scripts" / "export-env")], capture_output=True, text=True, check=True, cwd=REPO)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise ModelError(f"cannot set up the export environment (scripts/export-env): {detail.strip()[-2000:]}") from exc
    return done.stdout.strip().splitlines()[-1]


def run_export(onnx_path: Path, out_dir: Path, *, size: int) -> dict:
    """Run the export in the export environment; its error (naming the file or parameter) becomes a ModelError."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "POLYGRAPHY_AUTOINSTALL_DEPS": "0", "GLOG_minloglevel": "2"}
    cmd = [export_python(), "-m", "models.export.paddle_picodet", "--onnx", str(onnx_path), "--out", str(out_dir), "--size", str(size)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        message = errors[-1][len("error: ") :] if errors else done.stderr.strip()[-2000:]
        raise ModelError(f"PicoDet Paddle export from {onnx_path} failed: {message}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def export_picodet_s_paddle(out_dir: Path, *, size: int = 320) -> Path:
    """Export the shared PicoDet-S COCO ONNX (``picodet_s_coco``) as a Paddle model into ``out_dir``."""
    from models.resolve import resolve_model_dir

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size}")
    onnx_name = f"picodet_s_{size}_coco.onnx"
    folder = resolve_model_dir("picodet_s_coco", needed=(onnx_name,))
    run_export(folder / onnx_name, Path(out_dir), size=size)
    return Path(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="picodet_s_<S>_coco.onnx")
    parser.add_argument("--out", type=Path, required=True, help="output folder (model.json, model.pdiparams, infer_cfg.yml)")
    parser.add_argument("--size", type=int, default=320, choices=SIZES)
    args = parser.parse_args(argv)
    try:
        summary = export_from_onnx(args.onnx, args.out, size=args.size)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
