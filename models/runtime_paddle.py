"""Paddle Inference backend (``Global.backend: paddle``): a ``paddle.inference`` predictor behind ``InferenceModel``.

A model is ``<stem>.json`` (Paddle 3 program, what ``paddle.jit.save`` writes) or ``<stem>.pdmodel`` (the
older ProgramDesc format), with its weights in ``<stem>.pdiparams`` beside it.

Settings (what ``RuntimeOptions`` maps to, measured with paddlepaddle 3.3.1 on a 2-core CPU):

* ``num_threads`` → ``set_cpu_math_library_num_threads``.
* ``enable_mkldnn`` → oneDNN on or off (Paddle turns it on by default, so off is explicit). Off is 5–10×
  slower on CPU (EfficientNet-Lite0, 2 threads).
* ``onednn_placement_pass`` (oneDNN on, ``.json`` programs) is deleted only where the program needs it.
  With the pass, a graph whose ops carry an array-of-double attribute (``nearest_interp``'s ``scale``:
  PicoDet's neck upsample) is created fine and then fails on its first ``run`` ("ConvertPirAttribute2
  RuntimeAttribute not support [pir::ArrayAttribute<pir::DoubleAttribute>]"); without the pass it runs,
  still on oneDNN kernels. Deleting it always would be simpler but is not free: EfficientNet-Lite0 ran at
  the same speed either way, PicoDet-S 320 (unsqueeze/expand upsample) ran 25–40 % slower at batch 4–8.
  So the program is inspected for that attribute type before the predictor is built, and a run that
  still fails with that error rebuilds the predictor without the pass once and retries (logged). A
  ``.pdmodel`` always keeps the pass: the old pipeline's oneDNN fuse passes refuse to run without it
  ("oneDNN activation fuses require use_onednn=True").
* ``enable_memory_optim`` is not called: with it ``create_predictor`` fails on these models.
* ``use_gpu`` → ``enable_use_gpu(gpu_mem_mb, 0)``; with ``use_tensorrt`` also ``enable_tensorrt_engine``
  (FP16 when ``use_fp16``, dynamic-shape ranges from the model's input shapes, batch 1–32). ``use_fp16``
  without TensorRT is ignored, as in PP-ShiTu. Needs a CUDA build of paddle 3.x (Paddle's own index); a
  CPU build with ``use_gpu`` is a ModelError. Not run on a GPU here.

Inputs and outputs (names, shapes with None for dynamic dims) are read from the program file: paddle 3.3.1's
input handles report shape ``[0]`` until data is fed, and output handles know nothing before a run.

Threading: a Paddle predictor is not thread-safe. ``run`` holds a per-model lock, so sharing one
``PaddleModel`` between threads is correct but serialised; for parallel inference open one model per thread.
"""
from __future__ import annotations

import json
import logging
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from models.errors import ModelError
from models.runtime import Backend, RuntimeOptions, TensorInfo

log = logging.getLogger(__name__)

MODEL_SUFFIXES = (".json", ".pdmodel")
PARAMS_SUFFIX = ".pdiparams"
ONEDNN_PLACEMENT_PASS = "onednn_placement_pass"
ONEDNN_ATTRIBUTE_ERROR = "ConvertPirAttribute2RuntimeAttribute"
TRT_MAX_BATCH = 32
TRT_OPT_BATCH = 8


def _import_inference() -> Any:
    try:
        with warnings.catch_warnings():
            # paddle warns at import that no ccache (a C++ build cache) is found: irrelevant to inference.
            warnings.filterwarnings("ignore", message="No ccache found")
            import paddle.inference as paddle_infer
    except ImportError as exc:
        raise ModelError(f"the paddle backend needs paddlepaddle ({exc}): install vidrec[paddle]") from None
    return paddle_infer


def _error_line(exc: BaseException) -> str:
    """The informative line of a Paddle error (which may be a long C++ traceback)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not set(ln.strip()) <= set("-=")]
    if "Error Message Summary:" in lines:
        after = lines[lines.index("Error Message Summary:") + 1 :]
        if after:
            return after[0]
    return lines[0] if lines else type(exc).__name__


def _dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    return tuple(int(d) if isinstance(d, int) and d >= 0 else None for d in shape)


def _program_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _ops(program: dict) -> Iterator[dict]:
    for region in program["program"]["regions"]:
        for block in region["blocks"]:
            yield from block["ops"]


def _signature_json(program: dict) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """Input (``data`` ops) and output (``fetch`` ops) shapes of a Paddle 3 program."""
    inputs: dict[str, tuple] = {}
    outputs: dict[str, tuple] = {}
    for op in _ops(program):
        kind = str(op.get("#", "")).rsplit(".", 1)[-1]
        if kind not in ("data", "fetch"):
            continue
        attrs = {a["N"]: a["AT"]["D"] for a in op.get("A", []) if isinstance(a, dict) and "N" in a}
        out_type = op["O"][0]["TT"]["D"] if isinstance(op["O"], list) else op["O"]["TT"]["D"]
        (inputs if kind == "data" else outputs)[str(attrs["name"])] = _dims(out_type[1])
    return inputs, outputs


def _has_double_array_attribute(program: dict) -> bool:
    """Whether an op carries an array-of-double attribute (``nearest_interp``'s ``scale``, for one).

    That is the attribute type paddle 3.3.1's oneDNN instructions cannot convert
    ("ConvertPirAttribute2RuntimeAttribute not support [pir::ArrayAttribute<pir::DoubleAttribute>]").
    """
    for op in _ops(program):
        for attr in op.get("A", []):
            value = attr.get("AT") if isinstance(attr, dict) else None
            if isinstance(value, dict) and value.get("#") == "0.a_array" and isinstance(value.get("D"), list):
                if any(isinstance(e, dict) and e.get("#") == "0.a_f64" for e in value["D"]):
                    return True
    return False


def _signature_pdmodel(path: Path) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """Input (``feed``) and output (``fetch``) shapes of an old-format ProgramDesc."""
    from paddle.base.proto import framework_pb2

    desc = framework_pb2.ProgramDesc()
    desc.ParseFromString(path.read_bytes())
    block = desc.blocks[0]
    var_shapes: dict[str, tuple] = {}
    for var in block.vars:
        if var.type.HasField("dense_tensor"):
            var_shapes[var.name] = _dims(var.type.dense_tensor.tensor.dims)
    inputs: dict[str, tuple] = {}
    outputs: dict[str, tuple] = {}
    for op in block.ops:
        if op.type == "feed":
            name = next(a for o in op.outputs if o.parameter == "Out" for a in o.arguments)
            inputs[name] = var_shapes.get(name, ())
        elif op.type == "fetch":
            name = next(a for i in op.inputs if i.parameter == "X" for a in i.arguments)
            outputs[name] = var_shapes.get(name, ())
    return inputs, outputs


def _inspect(path: Path) -> tuple[dict[str, tuple], dict[str, tuple], bool]:
    """``(inputs, outputs, has an array-of-double attribute)`` of a model file."""
    try:
        if path.suffix == ".json":
            program = _program_json(path)
            return (*_signature_json(program), _has_double_array_attribute(program))
        return (*_signature_pdmodel(path), False)
    except Exception as exc:  # noqa: BLE001 - a malformed file raises anything from json/protobuf/indexing
        raise ModelError(f"cannot load model {path}: not a readable Paddle program ({type(exc).__name__}: {exc})") from None


def read_signature(path: Path) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """``({input: shape}, {output: shape})`` from a model file; shapes use None for dynamic dims."""
    inputs, outputs, _ = _inspect(Path(path))
    return inputs, outputs


class PaddleModel:
    """``InferenceModel`` on a Paddle Inference predictor.

    ``delete_onednn_placement``: None (default) deletes ``onednn_placement_pass`` only for a ``.json``
    program that needs it (see the module docstring); True/False force it.
    """

    backend: Backend = "paddle"

    def __init__(
        self, path: Path, options: RuntimeOptions = RuntimeOptions(backend="paddle"), *,
        delete_onednn_placement: bool | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        if self.path.suffix not in MODEL_SUFFIXES:
            raise ModelError(f"{self.path}: a Paddle model is a .json or .pdmodel file (with a .pdiparams beside it)")
        self.params_path = self.path.with_suffix(PARAMS_SUFFIX)
        if not self.params_path.is_file():
            raise ModelError(f"Paddle weights file not found: {self.params_path} (expected beside {self.path.name})")
        self.options = options
        self._infer = _import_inference()
        inputs, outputs, double_arrays = _inspect(self.path)
        self._signature = (inputs, outputs)
        self._uses_onednn = options.enable_mkldnn and not options.use_gpu
        if delete_onednn_placement is None:
            delete_onednn_placement = self._uses_onednn and self.path.suffix == ".json" and double_arrays
        self._lock = threading.Lock()
        self._create(delete_onednn_placement)
        self.inputs = tuple(TensorInfo(n, inputs.get(n, ())) for n in self._inputs)
        self.outputs = tuple(TensorInfo(n, outputs.get(n, ())) for n in self._outputs)

    def _create(self, delete_onednn_placement: bool) -> None:
        infer, options = self._infer, self.options
        config = infer.Config(str(self.path), str(self.params_path))
        config.disable_glog_info()
        if options.use_gpu:
            import paddle

            if not paddle.device.is_compiled_with_cuda():
                raise ModelError(
                    f"{self.path}: use_gpu is set but this paddlepaddle {paddle.__version__} is a CPU build "
                    "(install paddlepaddle-gpu 3.x from Paddle's package index)"
                )
            config.enable_use_gpu(int(options.gpu_mem_mb), 0)
            if options.use_tensorrt:
                precision = infer.PrecisionType.Half if options.use_fp16 else infer.PrecisionType.Float32
                config.enable_tensorrt_engine(
                    workspace_size=1 << 30, max_batch_size=TRT_MAX_BATCH, min_subgraph_size=3,
                    precision_mode=precision, use_static=False, use_calib_mode=False,
                )
                ranges = _trt_shape_ranges(self._signature[0])
                if ranges is not None:
                    config.set_trt_dynamic_shape_info(*ranges)
        else:
            config.disable_gpu()
            config.set_cpu_math_library_num_threads(int(options.num_threads))
            if options.enable_mkldnn:
                config.enable_mkldnn()
                if delete_onednn_placement:
                    config.delete_pass(ONEDNN_PLACEMENT_PASS)
            else:
                config.disable_mkldnn()
        try:
            predictor = infer.create_predictor(config)
        except Exception as exc:  # noqa: BLE001 - Paddle raises RuntimeError/ValueError/... for bad files
            raise ModelError(f"cannot load model {self.path} (weights {self.params_path.name}): {_error_line(exc)}") from exc
        self._predictor = predictor
        self.onednn_placement_deleted = bool(self._uses_onednn and delete_onednn_placement)
        self._inputs = {n: predictor.get_input_handle(n) for n in predictor.get_input_names()}
        self._outputs = {n: predictor.get_output_handle(n) for n in predictor.get_output_names()}

    def _feed_and_run(self, feeds: dict[str, np.ndarray]) -> None:
        for name, value in feeds.items():
            array = np.ascontiguousarray(value)
            handle = self._inputs[name]
            handle.reshape(list(array.shape))
            handle.copy_from_cpu(array)
        self._predictor.run()

    def run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        missing = [n for n in self._inputs if n not in feeds]
        unknown = [n for n in feeds if n not in self._inputs]
        if missing or unknown:
            raise ModelError(f"{self.path}: inputs are {list(self._inputs)}; missing {missing}, unknown {unknown}")
        names = list(output_names) if output_names else list(self._outputs)
        bad = [n for n in names if n not in self._outputs]
        if bad:
            raise ModelError(f"{self.path}: no output {bad[0]!r}; outputs are {list(self._outputs)}")
        with self._lock:
            try:
                self._feed_and_run(feeds)
            except Exception as exc:  # noqa: BLE001
                if not (self._uses_onednn and not self.onednn_placement_deleted and ONEDNN_ATTRIBUTE_ERROR in str(exc)):
                    raise ModelError(f"{self.path}: inference failed: {_error_line(exc)}") from exc
                # A oneDNN attribute the inspection did not foresee: rebuild without the placement pass, once.
                log.warning("%s: %s; running it without %s", self.path, _error_line(exc), ONEDNN_PLACEMENT_PASS)
                self._create(True)
                try:
                    self._feed_and_run(feeds)
                except Exception as exc2:  # noqa: BLE001
                    raise ModelError(f"{self.path}: inference failed: {_error_line(exc2)}") from exc2
            return [self._outputs[n].copy_to_cpu() for n in names]


def _trt_shape_ranges(inputs: dict[str, tuple]) -> tuple[dict, dict, dict] | None:
    """TensorRT dynamic-shape (min, max, opt) per input: a dynamic batch spans 1..TRT_MAX_BATCH.

    None when another dimension is dynamic (the ranges cannot be guessed; Paddle then needs
    ``collect_shape_range_info``, not done here).
    """
    lo: dict[str, list[int]] = {}
    hi: dict[str, list[int]] = {}
    opt: dict[str, list[int]] = {}
    for name, shape in inputs.items():
        if not shape or any(d is None for d in shape[1:]):
            return None
        rest = [int(d) for d in shape[1:]]
        fixed = shape[0]
        lo[name] = [fixed or 1, *rest]
        hi[name] = [fixed or TRT_MAX_BATCH, *rest]
        opt[name] = [fixed or TRT_OPT_BATCH, *rest]
    return lo, hi, opt
