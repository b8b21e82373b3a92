"""``vidrec models convert``: the EfficientNet-Lite0 Paddle export → ONNX with paddle2onnx (export environment),
checked against the Paddle model itself with ONNX Runtime."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.errors import ModelError
from models.preprocess_rec import build_rec_preprocess, preprocess_batch
from models.resolve import resolve_model_dir
from models.runtime import RuntimeOptions, open_model
from workers.models_convert import convert_paddle_to_onnx
from tests.lite0 import LITE0_OPS, read_rgb


@pytest.fixture(scope="module")
def paddle_dir() -> Path:
    return resolve_model_dir("efficientnet_lite0_paddle", needed=("inference.json", "inference.pdiparams"))


@pytest.fixture(scope="module")
def converted(paddle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_paddle_to_onnx(paddle_dir, tmp_path_factory.mktemp("onnx") / "lite0.onnx", opset=13)


def test_converted_model_is_valid_with_dynamic_batch(converted: Path) -> None:
    model = onnx.load(str(converted))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 13
    weights = {i.name for i in model.graph.initializer}
    (inp,) = [i for i in model.graph.input if i.name not in weights]
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "x" and not dims[0].HasField("dim_value") and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    assert [o.name for o in model.graph.output] == ["embedding", "logits"]
    assert not list(converted.parent.glob("*.tmp"))


def test_onnx_runtime_agrees_with_paddle_at_batch_3(converted: Path, paddle_dir: Path, photos_dir: Path) -> None:
    dog, bus, zidane = (read_rgb(photos_dir / f"{n}.jpg") for n in ("dog", "bus", "zidane"))
    batch = preprocess_batch([dog, bus[230:730, 0:810], zidane[:, ::-1]], build_rec_preprocess(LITE0_OPS))
    assert batch.shape[0] == 3
    session = ort.InferenceSession(str(converted), providers=["CPUExecutionProvider"])
    onnx_emb, onnx_logits = session.run(["embedding", "logits"], {"x": batch})
    paddle_emb, paddle_logits = open_model(paddle_dir / "inference.json", RuntimeOptions(backend="paddle")).run({"x": batch})
    assert onnx_emb.shape == (3, 1280) and onnx_logits.shape == (3, 1000)
    cos = np.sum(onnx_emb * paddle_emb, axis=1) / (np.linalg.norm(onnx_emb, axis=1) * np.linalg.norm(paddle_emb, axis=1))
    assert (cos > 0.999).all(), cos
    assert (np.argmax(onnx_logits, axis=1) == np.argmax(paddle_logits, axis=1)).all()


def test_unconvertible_program_is_a_model_error_with_the_tools_line(paddle_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "inference.json").write_text('{"base_code": {"magic": "pir"}, "program": {}}')
    shutil.copyfile(paddle_dir / "inference.pdiparams", bad / "inference.pdiparams")
    out = tmp_path / "out.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(ModelError, match=r"paddle2onnx could not convert .*inference\.json: Failed to convert PaddlePaddle model: .*version"):
        convert_paddle_to_onnx(bad, out)
    assert out.read_bytes() == b"previous"  # left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "out.onnx"]  # no temp file left


def test_missing_params_or_model_is_named(paddle_dir: Path, tmp_path: Path) -> None:
    shutil.copyfile(paddle_dir / "inference.json", tmp_path / "model.json")
    with pytest.raises(ModelError, match=r"model\.pdiparams"):
        convert_paddle_to_onnx(tmp_path, tmp_path / "x.onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"empty holds no Paddle model"):
        convert_paddle_to_onnx(tmp_path / "empty", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
