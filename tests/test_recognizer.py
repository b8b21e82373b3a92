"""Recognizer on the real converted EfficientNet-Lite0 and real photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.errors import ModelError
from models.runtime import RuntimeOptions
from models.recognizer import Recognizer
from tests.lite0 import LITE0_OPS


@pytest.fixture(scope="module")
def recognizer(lite0_onnx: Path) -> Recognizer:
    return Recognizer(lite0_onnx, LITE0_OPS, runtime=RuntimeOptions(num_threads=2))


def test_rows_are_unit_norm(recognizer: Recognizer, photos: dict[str, np.ndarray]) -> None:
    assert recognizer.embedding_size == 1280
    emb = recognizer.embed(list(photos.values()))
    assert emb.shape == (4, 1280) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_empty_input(recognizer: Recognizer) -> None:
    emb = recognizer.embed([])
    assert emb.shape == (0, 1280) and emb.dtype == np.float32


def test_same_photo_twice_has_cosine_one(recognizer: Recognizer, photos: dict[str, np.ndarray]) -> None:
    emb = recognizer.embed([photos["dog"], photos["dog"].copy()])
    assert float(emb[0] @ emb[1]) == pytest.approx(1.0, abs=1e-5)


def test_flipped_crop_is_closer_to_itself_than_to_other_photos(recognizer: Recognizer, photos: dict[str, np.ndarray]) -> None:
    dog = photos["dog"][220:537, 130:307]  # the dog on the porch
    bus = photos["bus"][230:730, 0:810]
    flipped = dog[:, ::-1]  # a negatively strided view, as a caller may well pass
    emb = recognizer.embed([dog, flipped, bus, photos["zidane"]])
    same = float(emb[0] @ emb[1])
    others = [float(emb[1] @ emb[i]) for i in (2, 3)]
    assert same > 0.9
    assert all(same > other + 0.4 for other in others), (same, others)


def test_chunking_does_not_change_results(lite0_onnx: Path, recognizer: Recognizer, photos: dict[str, np.ndarray]) -> None:
    crops = [photos["dog"], photos["bus"][100:900, 50:700], photos["person"], photos["zidane"], photos["dog"][:300, :400]]
    small = Recognizer(lite0_onnx, LITE0_OPS, runtime=RuntimeOptions(num_threads=1), max_batch=2)
    np.testing.assert_allclose(small.embed(crops), recognizer.embed(crops), atol=1e-5)


def test_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nothing\.onnx"):
        Recognizer(tmp_path / "nothing.onnx", LITE0_OPS)


def test_bad_ops_fail_at_construction(lite0_onnx: Path) -> None:
    with pytest.raises(ValueError, match="unknown op 'Blur'"):
        Recognizer(lite0_onnx, [{"Blur": None}])
