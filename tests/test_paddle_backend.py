"""Paddle Inference backend on the real EfficientNet-Lite0 Paddle export, checked against the ONNX model.

Both models come from the same ``.pth``; the Paddle one is a ``paddle.nn.Layer`` saved with
``paddle.jit.save``, the ONNX one is written node by node. They must give the same embeddings through
``Recognizer`` on real photos and crops, with oneDNN on and off.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from models.errors import ModelError
from models.export.efficientnet_lite import EFFICIENTNET_LITE0_PTH_SHA256, default_weights_path
from models.export.paddle_efficientnet import export_efficientnet_lite0_paddle
from models.export.torch_pickle import load_state_dict
from models.preprocess_rec import build_rec_preprocess, preprocess_batch
from models.recognizer import Recognizer
from models.resolve import resolve_model_dir
from models.runtime import RuntimeOptions, open_model
from models.runtime_paddle import PaddleModel
from tests.torch_zip import write_zip_pth
from tests.lite0 import LITE0_OPS

DOG_CLASSES = set(range(151, 269))
BUS_CLASSES = {779, 874, 654}  # school bus, trolleybus, minibus
PADDLE = RuntimeOptions(backend="paddle", num_threads=2)
PADDLE_NO_ONEDNN = RuntimeOptions(backend="paddle", num_threads=2, enable_mkldnn=False)
ONNX = RuntimeOptions(backend="onnx", num_threads=2)


@pytest.fixture(scope="module")
def paddle_model() -> Path:
    folder = resolve_model_dir("efficientnet_lite0_paddle", needed=("inference.json", "inference.pdiparams"))
    return folder / "inference.json"


@pytest.fixture(scope="module")
def onnx_model() -> Path:
    return resolve_model_dir("efficientnet_lite0", needed=("inference.onnx",)) / "inference.onnx"


@pytest.fixture(scope="module")
def crops(photos: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [
        photos["dog"][220:537, 130:307],  # the dog on the porch
        photos["bus"][230:730, 0:810],  # the bus body
        photos["person"][50:400, 150:350],
        photos["zidane"][100:720, 600:1100][:, ::-1],  # a flipped, negatively strided view
    ]


@pytest.fixture(scope="module")
def onnx_rec(onnx_model: Path) -> Recognizer:
    return Recognizer(onnx_model, LITE0_OPS, runtime=ONNX)


@pytest.fixture(scope="module")
def paddle_rec(paddle_model: Path) -> Recognizer:
    return Recognizer(paddle_model, LITE0_OPS, runtime=PADDLE)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Recognizer rows are unit-norm already; divide anyway so the check does not rely on it.
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _logits(model: PaddleModel, images: list[np.ndarray]) -> np.ndarray:
    batch = preprocess_batch(images, build_rec_preprocess(LITE0_OPS))
    (logits,) = model.run({"x": batch}, ["logits"])
    return logits


def test_export_files_and_signature(paddle_model: Path) -> None:
    folder = paddle_model.parent
    assert (folder / "inference.pdiparams").is_file()
    source = json.loads((folder / "source.json").read_text())
    assert source["source_sha256"] == EFFICIENTNET_LITE0_PTH_SHA256
    model = open_model(paddle_model, PADDLE)
    assert model.backend == "paddle" and model.path == paddle_model
    assert [(t.name, t.shape) for t in model.inputs] == [("x", (None, 3, 224, 224))]
    assert [(t.name, t.shape) for t in model.outputs] == [("embedding", (None, 1280)), ("logits", (None, 1000))]


def test_fresh_export_writes_only_its_files_and_agrees(tmp_path: Path, onnx_rec: Recognizer, crops: list[np.ndarray]) -> None:
    model_file = export_efficientnet_lite0_paddle(tmp_path / "fresh")
    assert model_file == tmp_path / "fresh" / "inference.json"
    assert sorted(p.name for p in model_file.parent.iterdir()) == ["inference.json", "inference.pdiparams", "source.json"]
    cos = _cosines(Recognizer(model_file, LITE0_OPS, runtime=PADDLE).embed(crops), onnx_rec.embed(crops))
    assert (cos > 0.999).all(), cos


def test_paddle_and_onnx_agree_on_photos_and_crops(
    paddle_rec: Recognizer, onnx_rec: Recognizer, photos: dict[str, np.ndarray], crops: list[np.ndarray]
) -> None:
    assert paddle_rec.embedding_size == 1280
    for images in (list(photos.values()), crops):
        batched_paddle = paddle_rec.embed(images)  # one run of 4
        batched_onnx = onnx_rec.embed(images)
        single_paddle = np.concatenate([paddle_rec.embed([img]) for img in images])  # runs of 1
        single_onnx = np.concatenate([onnx_rec.embed([img]) for img in images])
        for paddle_emb, onnx_emb in ((batched_paddle, batched_onnx), (single_paddle, single_onnx), (batched_paddle, single_onnx)):
            cos = _cosines(paddle_emb, onnx_emb)
            assert cos.shape == (4,) and (cos > 0.999).all(), cos
        # Different images give different embeddings: the agreement is not that of a constant graph.
        assert float(_cosines(batched_paddle[:1], batched_paddle[1:2])[0]) < 0.9


def test_dog_is_a_dog_and_bus_crop_a_bus(paddle_model: Path, photos: dict[str, np.ndarray]) -> None:
    model = PaddleModel(paddle_model, PADDLE)
    logits = _logits(model, [photos["dog"], photos["bus"][230:730, 0:810]])
    assert logits.shape == (2, 1000)
    top1 = [int(i) for i in np.argmax(logits, axis=1)]
    # The bus crop is what pins TensorFlow 'SAME' padding (symmetric padding calls it an ambulance).
    assert top1[0] in DOG_CLASSES and top1[1] in BUS_CLASSES, top1


def test_without_onednn_runs_and_agrees(
    paddle_model: Path, onnx_rec: Recognizer, photos: dict[str, np.ndarray], crops: list[np.ndarray]
) -> None:
    plain = Recognizer(paddle_model, LITE0_OPS, runtime=PADDLE_NO_ONEDNN, max_batch=3)  # chunks of 3 and 1
    images = list(photos.values()) + crops
    cos = _cosines(plain.embed(images), onnx_rec.embed(images))
    assert (cos > 0.999).all(), cos


def test_shared_model_from_two_threads(paddle_model: Path, photos: dict[str, np.ndarray]) -> None:
    model = PaddleModel(paddle_model, PADDLE)
    batches = [preprocess_batch([img], build_rec_preprocess(LITE0_OPS)) for img in photos.values()]
    expected = [model.run({"x": b}, ["embedding"])[0] for b in batches]
    results: dict[int, list[np.ndarray]] = {}

    def work(k: int) -> None:
        results[k] = [model.run({"x": b}, ["embedding"])[0] for b in batches * 3]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        for i, got in enumerate(results[k]):
            np.testing.assert_allclose(got, expected[i % len(batches)], atol=1e-5)


def test_wrong_shape_in_pth_names_the_key(tmp_path: Path) -> None:
    state = load_state_dict(default_weights_path())
    state["_blocks.5._depthwise_conv.weight"] = np.zeros((144, 1, 3, 3), dtype=np.float32)  # 5x5 kernel expected
    tensors = {}
    for key, value in state.items():
        strides = tuple(int(np.prod(value.shape[i + 1 :], dtype=np.int64)) for i in range(value.ndim))
        tensors[key] = (value.reshape(-1), 0, value.shape, strides)
    pth = tmp_path / "wrong_shape.pth"
    write_zip_pth(pth, tensors)
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=r"wrong_shape\.pth: key _blocks\.5\._depthwise_conv\.weight has shape \(144, 1, 3, 3\)"):
        export_efficientnet_lite0_paddle(out, pth_path=pth, expected_sha256=None)
    assert not (out / "inference.json").exists() and not (out / "inference.pdiparams").exists()


def test_checksum_mismatch_names_the_file(tmp_path: Path) -> None:
    copy = tmp_path / "tampered.pth"
    shutil.copyfile(default_weights_path(), copy)
    with copy.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match=r"tampered\.pth: sha256"):
        export_efficientnet_lite0_paddle(tmp_path / "out", pth_path=copy)


def test_missing_params_names_the_file(paddle_model: Path, tmp_path: Path) -> None:
    shutil.copyfile(paddle_model, tmp_path / "inference.json")
    with pytest.raises(ModelError, match=r"inference\.pdiparams"):
        open_model(tmp_path / "inference.json", PADDLE)


def test_garbage_json_names_the_file(paddle_model: Path, tmp_path: Path) -> None:
    (tmp_path / "garbage.json").write_text("this is not a Paddle program {")
    shutil.copyfile(paddle_model.with_suffix(".pdiparams"), tmp_path / "garbage.pdiparams")
    with pytest.raises(ModelError, match=r"garbage\.json"):
        open_model(tmp_path / "garbage.json", PADDLE)


def test_truncated_params_names_the_files(paddle_model: Path, tmp_path: Path) -> None:
    shutil.copyfile(paddle_model, tmp_path / "inference.json")
    (tmp_path / "inference.pdiparams").write_bytes(paddle_model.with_suffix(".pdiparams").read_bytes()[:100_000])
    with pytest.raises(ModelError, match=r"inference\.json.*inference\.pdiparams"):
        open_model(tmp_path / "inference.json", PADDLE)


def test_wrong_feed_and_output_names(paddle_model: Path) -> None:
    model = PaddleModel(paddle_model, PADDLE)
    x = np.zeros((1, 3, 224, 224), dtype=np.float32)
    with pytest.raises(ModelError, match=r"missing \['x'\], unknown \['image'\]"):
        model.run({"image": x})
    with pytest.raises(ModelError, match=r"no output 'features'"):
        model.run({"x": x}, ["features"])


def test_use_gpu_on_a_cpu_build_is_a_model_error(paddle_model: Path) -> None:
    import paddle

    if paddle.device.is_compiled_with_cuda():
        pytest.skip("this paddle is a CUDA build")
    with pytest.raises(ModelError, match=r"CPU build"):
        open_model(paddle_model, RuntimeOptions(backend="paddle", use_gpu=True))


@pytest.fixture(scope="module")
def upsample_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A conv and a 2x nearest upsample: the graph shape that breaks Paddle 3.3.1's onednn_placement_pass."""
    import paddle

    class Upsample(paddle.nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.conv = paddle.nn.Conv2D(3, 4, 3, stride=2, padding=1)

        def forward(self, x):  # noqa: ANN001, ANN201
            return paddle.nn.functional.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")

    paddle.seed(0)
    layer = Upsample()
    layer.eval()
    folder = tmp_path_factory.mktemp("upsample")
    paddle.jit.save(layer, str(folder / "up"), input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32", name="x")])
    return folder / "up.json"


def test_nearest_upsample_runs_with_onednn(upsample_model: Path) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    model = PaddleModel(upsample_model, PADDLE)
    assert model.onednn_placement_deleted  # found by inspecting the program
    (with_onednn,) = model.run({"x": x})
    (without,) = open_model(upsample_model, PADDLE_NO_ONEDNN).run({"x": x})
    assert with_onednn.shape == (2, 4, 32, 32)
    np.testing.assert_allclose(with_onednn, without, atol=1e-4)
    np.testing.assert_array_equal(with_onednn[:, :, ::2, ::2], with_onednn[:, :, 1::2, 1::2])  # nearest: 2x2 blocks


def test_onednn_attribute_failure_falls_back_once(upsample_model: Path) -> None:
    # Forcing the pass on reproduces the real failure on the first run; the model rebuilds without it.
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    model = PaddleModel(upsample_model, PADDLE, delete_onednn_placement=False)
    assert not model.onednn_placement_deleted
    (out,) = model.run({"x": x})
    assert model.onednn_placement_deleted
    (expected,) = open_model(upsample_model, PADDLE_NO_ONEDNN).run({"x": x})
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_placement_pass_kept_where_not_needed(paddle_model: Path) -> None:
    assert not PaddleModel(paddle_model, PADDLE).onednn_placement_deleted
    assert not PaddleModel(paddle_model, PADDLE_NO_ONEDNN).onednn_placement_deleted


_OLD_FORMAT_SAVE = """
import sys
import paddle
class Net(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 8, 3, stride=2, padding=[0, 1, 0, 1])
        self.fc = paddle.nn.Linear(8, 4)
    def forward(self, x):
        e = paddle.nn.functional.relu6(self.conv(x)).mean(axis=[2, 3])
        return e, self.fc(e)
paddle.seed(0)
net = Net()
net.eval()
paddle.jit.save(net, sys.argv[1], input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32", name="x")])
"""


def test_old_pdmodel_format_loads_with_and_without_onednn(tmp_path: Path) -> None:
    # The ProgramDesc format needs the old IR at save time, i.e. a fresh process with PIR off; the
    # script is a file because paddle.jit.save reads the forward's source.
    script = tmp_path / "save_old.py"
    script.write_text(_OLD_FORMAT_SAVE)
    env = dict(os.environ, FLAGS_enable_pir_api="0")
    subprocess.run([sys.executable, str(script), str(tmp_path / "old")], check=True, env=env, capture_output=True)
    model_file = tmp_path / "old.pdmodel"
    assert model_file.is_file()
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    results = []
    for options in (PADDLE, PADDLE_NO_ONEDNN):
        model = open_model(model_file, options)
        assert [t.shape for t in model.inputs] == [(None, 3, 32, 32)]
        assert [t.shape for t in model.outputs] == [(None, 8), (None, 4)]
        results.append(model.run({"x": x}))
    assert [r.shape for r in results[0]] == [(3, 8), (3, 4)]
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, atol=1e-4)


def _require_cuda_paddle() -> None:
    import paddle

    if not paddle.device.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0:
        pytest.skip("paddle is not a CUDA build, or no GPU")


@pytest.mark.gpu
def test_gpu_agrees_with_onnx(paddle_model: Path, onnx_rec: Recognizer, photos: dict[str, np.ndarray]) -> None:
    _require_cuda_paddle()
    images = list(photos.values())
    rec = Recognizer(paddle_model, LITE0_OPS, runtime=RuntimeOptions(backend="paddle", use_gpu=True, gpu_mem_mb=500))
    cos = _cosines(rec.embed(images), onnx_rec.embed(images))
    assert (cos > 0.999).all(), cos


@pytest.mark.gpu
def test_tensorrt_fp16_agrees_with_onnx(paddle_model: Path, onnx_rec: Recognizer, photos: dict[str, np.ndarray]) -> None:
    _require_cuda_paddle()
    import paddle.inference

    if tuple(paddle.inference.get_trt_compile_version()) == (0, 0, 0):
        pytest.skip("paddle is built without TensorRT")
    images = list(photos.values())
    options = RuntimeOptions(backend="paddle", use_gpu=True, use_tensorrt=True, use_fp16=True, gpu_mem_mb=500)
    rec = Recognizer(paddle_model, LITE0_OPS, runtime=options)
    cos = _cosines(rec.embed(images), onnx_rec.embed(images))
    assert (cos > 0.99).all(), cos  # FP16
