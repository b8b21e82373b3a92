"""``vidrec models convert``: a Paddle inference model folder → one ONNX file (PP-ShiTu FAQ Q2.6.3).

paddle2onnx 2.1.0 pins onnx <= 1.17 and needs numpy 1.x, so it runs as a subprocess in the export
environment (``scripts/export-env`` prints that environment's python, creating it when missing).

Two paddle2onnx habits are worked around here:

* its ``export`` logs a conversion error and carries on (it then fails on an unbound variable), so the
  driver below reports the logged error line instead of the traceback;
* its default post-pass ("polygraphy" constant folding) forces ``POLYGRAPHY_AUTOINSTALL_DEPS=1`` inside
  the process and pip-installs onnx_graphsurgeon, upgrading numpy in the export environment. The driver
  asks for no post-pass (ONNX Runtime folds constants when it loads the model) and the environment
  variable is set to 0 as well.

The result is written beside ``out_file`` and renamed into place only after it loads, passes the ONNX
checker and (for a dynamic-batch Paddle model) still has a dynamic batch.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from models.errors import ModelError

REPO = Path(__file__).resolve().parent.parent
EXPORT_ENV_SCRIPT = REPO / "scripts" / "export-env"
# Model file names looked for in a model folder, in order (PaddleClas/PaddleDetection exports, Paddle 3 first).
MODEL_CANDIDATES = ("inference.json", "model.json", "inference.pdmodel", "model.pdmodel")
TIMEOUT_S = 900

_DRIVER = r"""
import sys
import paddle2onnx

model, params, out, opset = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
try:
    data = paddle2onnx.export(
        model_filename=model, params_filename=params, save_file=None, opset_version=opset,
        auto_upgrade_opset=False, enable_onnx_checker=True, optimize_tool="None",
    )
except Exception as exc:  # paddle2onnx logged the real error on stderr already
    print(f"paddle2onnx failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(1)
if not data:
    print("paddle2onnx produced no model", file=sys.stderr)
    sys.exit(1)
with open(out, "wb") as f:
    f.write(data)
"""


def export_python() -> Path:
    """The export environment's python, from ``scripts/export-env`` (which creates it when missing)."""
    if not EXPORT_ENV_SCRIPT.is_file():
        raise ModelError(f"{EXPORT_ENV_SCRIPT.name} not found at {EXPORT_ENV_SCRIPT}: converting needs a vidrec source checkout")
    try:
        done = subprocess.run([str(EXPORT_ENV_SCRIPT)], capture_output=True, text=True, cwd=REPO, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ModelError(f"scripts/export-env did not finish in {TIMEOUT_S} s") from None
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    if done.returncode != 0 or not lines:
        raise ModelError(f"cannot set up the export environment (scripts/export-env): {_last_error_line(done.stderr)}")
    python = Path(lines[-1].strip())
    if not python.is_file():
        raise ModelError(f"scripts/export-env printed {python}, which is not a file")
    return python


def find_paddle_model(model_dir: Path) -> tuple[Path, Path]:
    """``(program file, .pdiparams)`` of a Paddle inference model folder; a ModelError names what is missing."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"Paddle model folder not found: {model_dir}")
    for name in MODEL_CANDIDATES:
        model = model_dir / name
        if model.is_file():
            params = model.with_suffix(".pdiparams")
            if not params.is_file():
                # paddle2onnx would only warn and write a model without weights.
                raise ModelError(f"Paddle weights file not found: {params} (beside {model.name})")
            return model, params
    raise ModelError(f"{model_dir} holds no Paddle model (looked for {', '.join(MODEL_CANDIDATES)})")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _last_error_line(text: str) -> str:
    lines = [_ANSI.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln.split("[ERROR]", 1)[1].strip() if "[ERROR]" in ln else ln for ln in lines if ln]
    if not lines:
        return "no error output"
    # paddle2onnx logs "[ERROR] Failed to convert PaddlePaddle model: <why>", then "[ERROR] None".
    for marker in ("Failed to convert", "Error", "error", "failed"):
        hits = [ln for ln in lines if marker in ln and "warn" not in ln.lower() and not ln.endswith("None")]
        if hits:
            return hits[-1]
    return lines[-1]


def _batch_is_dynamic(model_file: Path) -> bool | None:
    """Whether the Paddle model's inputs all have a dynamic first dim (None when it cannot tell)."""
    try:
        from models.runtime_paddle import read_signature

        inputs, _ = read_signature(model_file)
    except ModelError:
        return None
    shapes = list(inputs.values())
    if not shapes or any(not s for s in shapes):
        return None
    return all(s[0] is None for s in shapes)


def convert_paddle_to_onnx(model_dir: Path, out_file: Path, *, opset: int = 13) -> Path:
    """Convert the Paddle inference model in ``model_dir`` to ``out_file`` (ONNX, ``opset``); returns ``out_file``.

    Runs paddle2onnx in the export environment. A failure is a ModelError carrying paddle2onnx's last
    error line; ``out_file`` is then left as it was.
    """
    import onnx

    model_file, params_file = find_paddle_model(Path(model_dir))
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    python = export_python()
    env = dict(os.environ, POLYGRAPHY_AUTOINSTALL_DEPS="0", PYTHONNOUSERSITE="1", GLOG_minloglevel="2")
    fd, tmp_name = tempfile.mkstemp(dir=out_file.parent, prefix=f".{out_file.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            done = subprocess.run(
                [str(python), "-c", _DRIVER, str(model_file.resolve()), str(params_file.resolve()), str(tmp.resolve()), str(opset)],
                capture_output=True, text=True, env=env, timeout=TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            raise ModelError(f"paddle2onnx on {model_file} did not finish in {TIMEOUT_S} s") from None
        if done.returncode != 0 or tmp.stat().st_size == 0:
            raise ModelError(f"paddle2onnx could not convert {model_file}: {_last_error_line(done.stderr + done.stdout)}")
        try:
            model = onnx.load(str(tmp))
            onnx.checker.check_model(model)
        except Exception as exc:  # noqa: BLE001 - onnx raises several types for a bad file
            raise ModelError(f"paddle2onnx wrote an invalid ONNX model for {model_file}: {exc}") from exc
        if _batch_is_dynamic(model_file):
            weights = {init.name for init in model.graph.initializer}
            fixed = [
                i.name for i in model.graph.input
                if i.name not in weights and i.type.tensor_type.shape.dim
                and i.type.tensor_type.shape.dim[0].HasField("dim_value")
            ]
            if fixed:
                raise ModelError(f"paddle2onnx fixed the batch size of input(s) {', '.join(fixed)} of {model_file}")
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a model file is for everyone to read
        os.replace(tmp, out_file)
    finally:
        tmp.unlink(missing_ok=True)
    return out_file
