"""EfficientNet-Lite0 .pth → ONNX, checked on real photos through the ImageNet classifier head.

The bus crop is the check that pins TensorFlow 'SAME' padding: with symmetric k//2 padding the same
weights call it an ambulance (407).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.errors import ModelError
from models.export.efficientnet_lite import (
    CONVERTER_VERSION,
    EFFICIENTNET_LITE0_PTH_SHA256,
    convert_efficientnet_lite0,
    count_parameters,
    default_weights_path,
    sha256_of,
    state_dict_to_onnx,
)
from models.export.torch_pickle import load_state_dict
from models.preprocess_rec import build_rec_preprocess, preprocess_batch
from tests.lite0 import LITE0_OPS, read_rgb

DOG_CLASSES = set(range(151, 269))
BUS_CLASSES = {779, 874, 654}  # school bus, trolleybus, minibus


@pytest.fixture(scope="module")
def session(lite0_onnx: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(lite0_onnx), providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    batch = preprocess_batch(images, build_rec_preprocess(LITE0_OPS))
    embedding, logits = session.run(["embedding", "logits"], {"x": batch})
    return embedding, logits


def test_files_written_and_valid(lite0_onnx: Path) -> None:
    assert lite0_onnx.name == "inference.onnx"
    onnx.checker.check_model(str(lite0_onnx))
    source = json.loads((lite0_onnx.parent / "source.json").read_text())
    assert source["source_sha256"] == EFFICIENTNET_LITE0_PTH_SHA256
    assert source["converter_version"] == CONVERTER_VERSION
    assert not list(lite0_onnx.parent.glob("*.tmp"))  # atomic writes leave nothing behind
    model = onnx.load(str(lite0_onnx))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 224, 224]


def test_packaged_weights_match_the_pinned_checksum() -> None:
    path = default_weights_path()
    assert sha256_of(path) == EFFICIENTNET_LITE0_PTH_SHA256
    state = load_state_dict(path)
    # 4.65 M learned parameters; 4.69 M with the BatchNorm running statistics (the figure usually quoted).
    assert count_parameters(state) == 4_652_008
    assert sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked")) == 4_694_024


def test_dog_photo_is_a_dog(session: ort.InferenceSession, photos_dir: Path) -> None:
    embedding, logits = _run(session, [read_rgb(photos_dir / "dog.jpg")])
    assert embedding.shape == (1, 1280) and embedding.dtype == np.float32
    assert logits.shape == (1, 1000)
    assert int(np.argmax(logits[0])) in DOG_CLASSES


def test_bus_photo_and_bus_crop_are_buses(session: ort.InferenceSession, photos_dir: Path) -> None:
    whole = read_rgb(photos_dir / "bus.jpg")
    crop = whole[230:730, 0:810]  # the bus body, without the street below it
    _, logits = _run(session, [whole, crop])
    top1 = [int(i) for i in np.argmax(logits, axis=1)]
    assert all(label in BUS_CLASSES for label in top1), top1
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    assert (probs[:, sorted(BUS_CLASSES)].sum(axis=1) > 0.5).all()


def test_batch_equals_single_runs(session: ort.InferenceSession, photos_dir: Path) -> None:
    images = [read_rgb(photos_dir / name) for name in ("dog.jpg", "bus.jpg", "zidane.jpg")]
    batched, _ = _run(session, images)
    singles = np.concatenate([_run(session, [img])[0] for img in images])
    assert batched.shape == (3, 1280)
    assert float(np.abs(batched - singles).max()) < 1e-4
    # Different photos give different features (not a constant graph).
    assert float(np.abs(batched[0] - batched[1]).max()) > 0.1


@pytest.fixture(scope="module")
def real_state() -> dict[str, np.ndarray]:
    return load_state_dict(default_weights_path())


def test_missing_key_is_named(real_state: dict[str, np.ndarray]) -> None:
    state = dict(real_state)
    del state["_blocks.7._depthwise_conv.weight"]
    with pytest.raises(ModelError, match=r"lite0\.pth: missing key _blocks\.7\._depthwise_conv\.weight"):
        state_dict_to_onnx(state, source="lite0.pth")


def test_wrong_shape_is_named(real_state: dict[str, np.ndarray]) -> None:
    state = dict(real_state)
    state["_blocks.3._project_conv.weight"] = np.zeros((41, 144, 1, 1), dtype=np.float32)  # 40 output channels expected
    with pytest.raises(ModelError, match=r"lite0\.pth: key _blocks\.3\._project_conv\.weight has shape"):
        state_dict_to_onnx(state, source="lite0.pth")


def test_unused_key_is_named(real_state: dict[str, np.ndarray]) -> None:
    state = dict(real_state)
    state["_blocks.2._se_reduce.weight"] = np.zeros((6, 144, 1, 1), dtype=np.float32)
    with pytest.raises(ModelError, match=r"lite0\.pth: unexpected keys.*_blocks\.2\._se_reduce\.weight"):
        state_dict_to_onnx(state, source="lite0.pth")


def test_checksum_mismatch_names_the_file(tmp_path: Path) -> None:
    copy = tmp_path / "tampered.pth"
    shutil.copyfile(default_weights_path(), copy)
    with copy.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match=r"tampered\.pth: sha256"):
        convert_efficientnet_lite0(copy, tmp_path / "out")
    assert not (tmp_path / "out" / "inference.onnx").exists()


# ---- the multilayer embedding (issue 13) -------------------------------------------------------------------


def test_multilayer_embedding_is_the_centred_normalised_parts(tmp_path: Path, photos) -> None:
    """The graph's embedding equals, in numpy, each raw pooled part minus its shipped mean, L2-normalised,
    concatenated; the head conv, classifier and block 15's projection are not in the graph."""
    from models.export.efficientnet_lite import (
        MULTILAYER_PARTS, MULTILAYER_SIZE, load_multilayer_centre, split_parts,
    )

    state = load_state_dict(default_weights_path())
    raw_model = state_dict_to_onnx(state, source="lite0", embedding="multilayer", centre=None)
    centre = load_multilayer_centre()
    model = state_dict_to_onnx(load_state_dict(default_weights_path()), source="lite0", embedding="multilayer",
                               centre=centre)
    ops = {n.name for n in model.graph.node}
    assert "_conv_head" not in ops and "fc" not in ops and "_blocks.15._project_conv" not in ops
    assert [o.name for o in model.graph.output] == ["embedding"]
    images = [np.ascontiguousarray(photos[name][:300, :300]) for name in ("dog", "bus", "zidane")]
    batch = preprocess_batch(images, build_rec_preprocess(LITE0_OPS))
    raw_path, path = tmp_path / "raw.onnx", tmp_path / "ml.onnx"
    onnx.save(raw_model, str(raw_path))
    onnx.save(model, str(path))
    (raw,) = ort.InferenceSession(str(raw_path), providers=["CPUExecutionProvider"]).run(["raw_parts"], {"x": batch})
    (embedding,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["embedding"], {"x": batch})
    assert embedding.shape == (3, MULTILAYER_SIZE)
    parts = split_parts(raw)
    expected = np.concatenate([
        (parts[n] - centre[n]) / np.linalg.norm(parts[n] - centre[n], axis=1, keepdims=True) for n in MULTILAYER_PARTS
    ], axis=1)
    np.testing.assert_allclose(embedding, expected, atol=1e-5)
    # three unit parts: the whole has norm sqrt(3)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), np.sqrt(3), rtol=1e-5)


def test_multilayer_converted_folder_records_its_embedding(tmp_path: Path) -> None:
    from models.export.efficientnet_lite import embedding_id
    from models.recognizer import recognizer_identity

    path = convert_efficientnet_lite0(default_weights_path(), tmp_path / "efficientnet_lite0_ml", embedding="multilayer")
    source = json.loads((path.parent / "source.json").read_text())
    assert source["embedding"] == embedding_id("multilayer") and source["outputs"] == {"embedding": 1456}
    assert recognizer_identity(path.parent) == f"efficientnet_lite0_ml: {embedding_id('multilayer')}"
    with pytest.raises(ValueError, match="embedding must be"):
        state_dict_to_onnx(load_state_dict(default_weights_path()), source="x", embedding="max")  # type: ignore[arg-type]


def test_a_colour_folder_fuses_the_colour_layout_and_says_so(tmp_path: Path) -> None:
    from models.colour_features import ColourSpec, colour_histograms, fuse
    from models.export.efficientnet_lite import embedding_id
    from models.recognizer import Recognizer, colour_spec, recognizer_identity

    ops = [{"ResizeImage": {"size": 224}},
           {"NormalizeImage": {"scale": 1.0, "mean": [127.0] * 3, "std": [128.0] * 3, "order": "hwc"}},
           {"ToCHWImage": None}]
    folder = tmp_path / "efficientnet_lite0_mlc"
    path = convert_efficientnet_lite0(default_weights_path(), folder, embedding="multilayer", colour=ColourSpec())
    assert colour_spec(folder) == ColourSpec()
    assert recognizer_identity(folder) == (f"efficientnet_lite0_mlc: {embedding_id('multilayer')} + "
                                           "colour v1 (HSV 8x4x4 in 3 bands of 32x96, sqrt, weight 0.85)")
    plain = Recognizer(path, ops)
    fused = Recognizer(path, ops, colour=colour_spec(folder))
    assert (plain.embedding_size, fused.embedding_size) == (1456, 1456 + 384)
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (80, 30, 3), dtype=np.uint8) for _ in range(3)]
    expected = fuse(plain.embed(crops), colour_histograms(crops, ColourSpec()), 0.85)
    np.testing.assert_allclose(fused.embed(crops), expected, atol=1e-6)
    assert fused.embed([]).shape == (0, 1840)
    # a malformed record is an error naming the file, never an embedding without the colour
    source = json.loads((folder / "source.json").read_text())
    source["colour"]["bins"] = [8, 4]
    (folder / "source.json").write_text(json.dumps(source))
    with pytest.raises(ModelError, match=r"efficientnet_lite0_mlc/source.json: colour bins must be three ints"):
        colour_spec(folder)


def test_a_missing_or_wrong_centre_is_an_error(tmp_path: Path) -> None:
    from models.export.efficientnet_lite import load_multilayer_centre

    with pytest.raises(ModelError, match="multilayer centre not found"):
        load_multilayer_centre(tmp_path / "none.npz")
    np.savez(tmp_path / "short.npz", **{"_blocks.10.add": np.zeros(5, np.float32)})
    with pytest.raises(ModelError, match=r"_blocks.10.add must have shape \(112,\), got \(5,\)"):
        load_multilayer_centre(tmp_path / "short.npz")
