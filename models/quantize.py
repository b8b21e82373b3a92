"""INT8 copies of ONNX models: ONNX Runtime static quantization in the QDQ format, calibrated on real inputs.

``quantize_model`` turns an fp32 ONNX file into an int8 one with ``onnxruntime.quantization.quantize_static``:

* the weights that paddle2onnx lists as graph inputs are dropped from the inputs first (as ``models/runtime.py``
  does when it opens a model), otherwise the quantizer treats them as run-time inputs and leaves them float;
* ``quant_pre_process`` (ONNX Runtime's own step) runs shape inference and graph optimisation (batch-norm and
  constant folding) so that the quantizer sees the graph that will run;
* QDQ format: QuantizeLinear/DequantizeLinear pairs around the float ops, which ONNX Runtime fuses into int8
  kernels when it loads the model — the file stays a plain ONNX graph, readable by any ONNX tool;
* weights per output channel (a depthwise conv's channels differ by orders of magnitude: one scale for all of
  them would flush the small ones to zero), activations per tensor;
* calibration on the caller's real, preprocessed inputs (``CalibrationInputs``): never random tensors, whose
  ranges have nothing to do with what the model sees.

What is quantized is chosen by the caller (``QuantizeOptions``): op types, and nodes left in float (say, the
detector's last head convs if their int8 error moves boxes). The result is written beside the target and
renamed into place only after ONNX Runtime loads it, so a failed run never leaves a half file.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from models.errors import ModelError

# One calibration sample: input name -> array with that input's shape (batch included).
Feed = Mapping[str, np.ndarray]

# Per-channel DequantizeLinear (its ``axis`` attribute) exists from opset 13; PicoDet's export is opset 11.
MIN_OPSET = 13
_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
_METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}


@dataclass(frozen=True, slots=True)
class QuantizeOptions:
    """How to quantize. The defaults are ONNX Runtime's first recommendation for x86 with VNNI:
    QDQ, uint8 activations (VNNI's u8×s8 dot product), int8 symmetric weights per channel, min–max ranges."""

    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["uint8", "int8"] = "int8"
    per_channel: bool = True
    calibrate_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    # None: every op type ONNX Runtime can quantize.
    op_types: tuple[str, ...] | None = None
    nodes_to_exclude: tuple[str, ...] = ()
    # Leave in float the ops that read or write a tensor one per-tensor scale serves badly (``uneven_tensors``).
    exclude_uneven: bool = True
    # Leave in float the last compute layer before each output (``output_heads``): the outputs carry the
    # model's answer (box edges, scores) at full resolution, where int8 rounding shows most.
    float_heads: bool = False
    extra_options: Mapping[str, object] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        """The settings as plain JSON values (they go in the guard report beside the numbers)."""
        return {
            "format": "QDQ",
            "activation_type": self.activation_type,
            "weight_type": self.weight_type,
            "per_channel": self.per_channel,
            "calibrate_method": self.calibrate_method,
            "op_types": list(self.op_types) if self.op_types is not None else None,
            "nodes_to_exclude": list(self.nodes_to_exclude),
            "exclude_uneven": self.exclude_uneven,
            "float_heads": self.float_heads,
            "extra_options": dict(self.extra_options),
        }


class CalibrationInputs(CalibrationDataReader):
    """ONNX Runtime's calibration reader over a fixed list of real feeds (each one model run)."""

    def __init__(self, feeds: Iterable[Feed]) -> None:
        self._feeds = [dict(feed) for feed in feeds]
        if not self._feeds:
            raise ModelError("quantization needs at least one calibration input")
        self._iter: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)


def without_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with its weights no longer listed as graph inputs (paddle2onnx lists them)."""
    weights = {init.name for init in model.graph.initializer}
    inputs = [inp for inp in model.graph.input if inp.name not in weights]
    if len(inputs) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    return model


def at_least_opset(model: onnx.ModelProto, opset: int, path: Path) -> onnx.ModelProto:
    """The model converted to ``opset`` of the default domain when it is older (ONNX's version converter)."""
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None or current >= opset:
        return model
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as exc:  # noqa: BLE001 - the converter raises several types
        raise ModelError(f"cannot convert {path} from opset {current} to {opset} for quantization: {exc}") from exc


def load_onnx(path: Path) -> onnx.ModelProto:
    """The parsed model; a missing or unparsable file is a ModelError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError and others for a corrupt file
        raise ModelError(f"cannot read ONNX model {path}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from exc


@dataclass(frozen=True, slots=True)
class QuantizeResult:
    path: Path
    # Nodes of the quantized op types left in float because of uneven channel ranges (``uneven_tensors``).
    kept_float: tuple[str, ...]
    quantized_share: float


def quantize_model(
    fp32_path: Path, out_path: Path, calibration: Sequence[Feed], options: QuantizeOptions = QuantizeOptions()
) -> QuantizeResult:
    """Write an int8 QDQ copy of ``fp32_path`` to ``out_path``, calibrated on ``calibration``.

    ``out_path`` must differ from ``fp32_path``: the fp32 model is never overwritten.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if out_path.resolve() == fp32_path.resolve():
        raise ModelError(f"refusing to overwrite the fp32 model {fp32_path} with its int8 copy")
    model = at_least_opset(without_initializer_inputs(load_onnx(fp32_path)), MIN_OPSET, fp32_path)
    reader = CalibrationInputs(calibration)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".quantize.", dir=out_path.parent) as tmp_name:
        tmp = Path(tmp_name)
        plain, prepared, quantized = tmp / "plain.onnx", tmp / "prepared.onnx", tmp / "int8.onnx"
        onnx.save(model, str(plain))
        try:
            # ONNX's own shape inference suffices for these conv nets; the symbolic pass (for transformers'
            # sequence dims) would need sympy, a dependency for nothing here.
            with _quiet():
                quant_pre_process(str(plain), str(prepared), skip_symbolic_shape=True)
        except Exception as exc:  # noqa: BLE001 - shape inference raises many types
            raise ModelError(f"cannot prepare {fp32_path} for quantization: {exc}") from exc
        prepared_model = onnx.load(str(prepared))
        kept_float: tuple[str, ...] = output_heads(prepared_model) if options.float_heads else ()
        if options.exclude_uneven:
            uneven = uneven_tensors(channel_ranges(prepared_model, reader))
            kept_float += tuple(
                node.name for node in prepared_model.graph.node
                if node.name not in kept_float
                if (options.op_types is None or node.op_type in options.op_types)
                and uneven.intersection([*node.input, *node.output])
            )
            reader.rewind()
        with _quiet():
            quantize_static(
                str(prepared),
                str(quantized),
                reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(options.op_types) if options.op_types is not None else None,
                per_channel=options.per_channel,
                activation_type=_TYPES[options.activation_type],
                weight_type=_TYPES[options.weight_type],
                nodes_to_exclude=[*options.nodes_to_exclude, *kept_float],
                calibrate_method=_METHODS[options.calibrate_method],
                extra_options=dict(options.extra_options),
            )
        _check_loads(quantized, fp32_path)
        share = quantized_op_share(quantized)
        os.chmod(quantized, 0o644)
        os.replace(quantized, out_path)
    return QuantizeResult(path=out_path, kept_float=kept_float, quantized_share=share)


# Ops that only move, reshape or squash values: a walk back from an output passes through them.
_PASS_THROUGH = frozenset({"Reshape", "Transpose", "Split", "Concat", "Sigmoid", "Softmax", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
_COMPUTE = frozenset({"Conv", "Gemm", "MatMul"})


def output_heads(model: onnx.ModelProto) -> tuple[str, ...]:
    """Names of the compute nodes (Conv, Gemm, MatMul) that feed a graph output through pass-through ops only,
    and of those ops: PicoDet's four class and four box head convs, a classifier's last Gemm."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found: list[str] = []
    stack = [out.name for out in model.graph.output]
    seen: set[str] = set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in _COMPUTE:
            found.append(node.name)
        elif node.op_type in _PASS_THROUGH:
            found.append(node.name)
            stack.extend(node.input)
    return tuple(found)


@dataclass(frozen=True, slots=True)
class TensorRange:
    """What calibration saw of one activation tensor: its min and max, and each channel's largest |value|."""

    low: float
    high: float
    channel_absmax: np.ndarray


def channel_ranges(model: onnx.ModelProto, calibration: CalibrationInputs) -> dict[str, TensorRange]:
    """Ranges of every float activation of rank ≥ 3 (N, C, ...) over the calibration inputs (channel axis 1)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    weights = {init.name for init in probe.graph.initializer}
    declared = {out.name for out in probe.graph.output}
    names = [out for node in probe.graph.node for out in node.output if out and out not in weights]
    for name in names:
        if name not in declared:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Unoptimised, so that every tensor of the graph still exists to be read.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    ranges: dict[str, TensorRange] = {}
    calibration.rewind()
    while (feed := calibration.get_next()) is not None:
        values = dict(zip(names, session.run(names, feed)))
        values.update(feed)
        for name, value in values.items():
            if not isinstance(value, np.ndarray) or value.dtype != np.float32 or value.ndim < 3 or value.size == 0:
                continue
            absmax = np.abs(value).max(axis=tuple(i for i in range(value.ndim) if i != 1))
            seen = ranges.get(name)
            if seen is not None and seen.channel_absmax.shape == absmax.shape:
                absmax = np.maximum(absmax, seen.channel_absmax)
                ranges[name] = TensorRange(min(seen.low, float(value.min())), max(seen.high, float(value.max())), absmax)
            else:
                ranges[name] = TensorRange(float(value.min()), float(value.max()), absmax)
    calibration.rewind()
    return ranges


# A channel whose values span fewer than this many steps of its tensor's 8-bit scale is mostly rounding noise...
UNEVEN_MIN_STEPS = 8.0
# ...and a tensor where more than this share of channels are so is left in float.
UNEVEN_MAX_SHARE = 0.1


def uneven_tensors(
    ranges: Mapping[str, TensorRange], *, min_steps: float = UNEVEN_MIN_STEPS, max_share: float = UNEVEN_MAX_SHARE
) -> set[str]:
    """Tensors that one per-tensor 8-bit scale serves badly: too many channels far smaller than the largest.

    Activations are quantized per tensor, so the scale follows the widest channel; in PicoDet's backbone the
    first conv's channels range from ±4 to ±500 and the narrow ones (read by a hard-swish that only changes
    shape within ±3) become one or two steps of noise — quantizing that one tensor took the class maps'
    correlation with fp32 from 1.0 to 0.65. ONNX Runtime has no cross-layer equalisation to even them out,
    so such tensors stay float.
    """
    uneven = set()
    for name, seen in ranges.items():
        step = (max(seen.high, 0.0) - min(seen.low, 0.0)) / 255.0
        if step > 0 and float(np.mean(seen.channel_absmax < min_steps * step)) > max_share:
            uneven.add(name)
    return uneven


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer logs every weight scale it widens (hundreds of INFO lines on the root logger)
    and its C++ side warns about each unused initializer; neither helps a user. Both are restored after."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        root.setLevel(level)
        ort.set_default_logger_severity(2)


def _check_loads(path: Path, source: Path) -> None:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors are untyped
        raise ModelError(f"the int8 copy of {source} does not load in ONNX Runtime: {str(exc).splitlines()[0]}") from exc


def quantized_op_share(path: Path) -> float:
    """Share of a model's compute nodes (Conv, Gemm, MatMul) that read a DequantizeLinear output: how much of it
    runs in int8. Used in reports, so that a quantization that silently skipped the graph is seen."""
    graph = load_onnx(path).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    compute = [node for node in graph.node if node.op_type in ("Conv", "Gemm", "MatMul")]
    if not compute:
        return 0.0
    return sum(1 for node in compute if node.input and node.input[0] in dequantized) / len(compute)
