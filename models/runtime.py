"""ONNX Runtime sessions, created one way for every model.

Issue 3 adds Paddle Inference behind the same small surface; callers only use ``run``-style
access through the session returned here.
"""
from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from models.errors import ModelError


def create_onnx_session(model_path: Path, *, num_threads: int = 2, use_gpu: bool = False) -> ort.InferenceSession:
    """Open an ONNX model; a missing or invalid file is a ModelError naming it."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelError(f"model file not found: {model_path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Several sessions (detector, recognizer) and faiss share a few cores. With ORT's default, idle
    # pool threads spin after each run and starve the next model: on 2 cores, detect + embed + search
    # ran at 15 fps with spinning and 31 fps without (bench/offline_fps.py, bikes.mp4).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        model_bytes = _without_initializer_inputs(model_path)
        return ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
    except Exception as exc:  # onnx/onnxruntime raise their own untyped errors for corrupt files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load model {model_path}: {first_line}") from exc


def _without_initializer_inputs(model_path: Path) -> bytes:
    """The model's bytes, with weights no longer listed as graph inputs.

    paddle2onnx exports (the PicoDet files among them) list every initializer as an input too, which
    tells ONNX Runtime the weights may be overridden at run time and so stops it from constant-folding
    them; dropping them from the inputs measured 10–35 % faster ``run`` calls here.
    """
    model = onnx.load(str(model_path))
    weights = {init.name for init in model.graph.initializer}
    inputs = [inp for inp in model.graph.input if inp.name not in weights]
    if len(inputs) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(inputs)
    return model.SerializeToString()
