"""Inference runtimes behind one small interface: ONNX Runtime and (optionally) Paddle Inference.

Models (detector, recognizer) only see ``InferenceModel``: named inputs and outputs with shapes
(None for a dynamic dimension) and ``run``. ``open_model`` picks the backend from ``RuntimeOptions``
(``Global.backend`` and PP-ShiTu's ``use_gpu``/``use_tensorrt``/``use_fp16``/``enable_mkldnn``/
``cpu_num_threads``/``gpu_mem``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from models.errors import ModelError
from models.graph_rewrite import optimized

Backend = Literal["onnx", "paddle"]


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    shape: tuple[int | None, ...]  # None: dynamic (batch, or a symbolic size)


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    backend: Backend = "onnx"
    num_threads: int = 2
    use_gpu: bool = False
    use_tensorrt: bool = False
    use_fp16: bool = False
    enable_mkldnn: bool = True
    gpu_mem_mb: int = 8000


class InferenceModel(Protocol):
    path: Path
    backend: Backend
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]: ...


def open_model(path: Path, options: RuntimeOptions = RuntimeOptions()) -> InferenceModel:
    """Open a model file with the chosen backend; a missing or unloadable file is a ModelError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    if options.backend == "onnx":
        return OnnxModel(path, options)
    if options.backend == "paddle":
        from models.runtime_paddle import PaddleModel  # imported only when asked for: paddle is optional

        return PaddleModel(path, options)
    raise ModelError(f"unknown backend {options.backend!r}: expected 'onnx' or 'paddle'")


def _dims(shape: Sequence[object]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


class OnnxModel:
    backend: Backend = "onnx"

    def __init__(self, path: Path, options: RuntimeOptions) -> None:
        self.path = path
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.num_threads
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = 3
        # Several sessions (detector, recognizer) and faiss share a few cores. With ORT's default, idle
        # pool threads spin after each run and starve the next model: on 2 cores, detect + embed + search
        # ran at 15 fps with spinning and 31 fps without (bench/offline_fps.py, bikes.mp4).
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[str | tuple[str, dict]] = ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        if options.use_gpu and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
            if options.use_tensorrt and "TensorrtExecutionProvider" in available:
                providers.insert(0, ("TensorrtExecutionProvider", {"trt_fp16_enable": options.use_fp16}))
        try:
            self._session = ort.InferenceSession(_rewritten(path), sess_options=session_options, providers=providers)
        except Exception as exc:  # onnx/onnxruntime raise their own untyped errors for corrupt files
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"cannot load model {path}: {first_line}") from exc
        self.inputs = tuple(TensorInfo(i.name, _dims(i.shape)) for i in self._session.get_inputs())
        self.outputs = tuple(TensorInfo(o.name, _dims(o.shape)) for o in self._session.get_outputs())

    def run(self, feeds: dict[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        return self._session.run(list(output_names) if output_names else None, feeds)


def _rewritten(model_path: Path) -> bytes:
    """The model's bytes after models/graph_rewrite.py's rewrites (same outputs, faster on ONNX Runtime)."""
    return optimized(onnx.load(str(model_path))).SerializeToString()
