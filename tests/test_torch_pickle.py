"""The torch-free .pth reader, on the real EfficientNet-Lite0 file (legacy format) and on zip-format files
written here opcode by opcode (the shape torch >= 1.6 saves), without torch."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.errors import ModelError
from models.export.efficientnet_lite import default_weights_path
from models.export.torch_pickle import load_state_dict
from tests.torch_zip import pickle_text, write_zip_pth


def test_real_lite0_file_reads_completely() -> None:
    state = load_state_dict(default_weights_path())
    assert len(state) == 296
    stem = state["_conv_stem.weight"]
    assert stem.shape == (32, 3, 3, 3) and stem.dtype == np.float32 and stem.flags.c_contiguous
    assert state["_fc.weight"].shape == (1000, 1280)
    counter = state["_bn0.num_batches_tracked"]
    assert counter.shape == () and counter.dtype == np.int64
    assert {str(v.dtype) for v in state.values()} == {"float32", "int64"}
    # Real weights, not zeros or garbage: finite, and BN variances non-negative.
    assert all(np.isfinite(v).all() for v in state.values())
    assert all((v >= 0).all() for k, v in state.items() if k.endswith("running_var"))
    assert float(np.abs(stem).mean()) > 1e-3


def test_zip_format_round_trips_the_real_state_dict(tmp_path: Path) -> None:
    state = load_state_dict(default_weights_path())
    subset = {k: state[k] for k in list(state)[:12]}
    tensors = {}
    for key, value in subset.items():
        strides = tuple(int(np.prod(value.shape[i + 1 :], dtype=np.int64)) for i in range(value.ndim))
        tensors[key] = (value.reshape(-1), 0, value.shape, strides)
    path = tmp_path / "subset.pth"
    write_zip_pth(path, tensors)
    back = load_state_dict(path)
    assert list(back) == list(subset)
    for key in subset:
        assert back[key].shape == subset[key].shape and back[key].dtype == subset[key].dtype
        np.testing.assert_array_equal(back[key], subset[key])


def test_zip_strides_offsets_and_dtypes(tmp_path: Path) -> None:
    base = np.arange(24, dtype=np.float32)
    half = np.arange(10, dtype=np.float16) / 4
    longs = np.array([7, -3, 2**40], dtype=np.int64)
    path = tmp_path / "views.pth"
    write_zip_pth(path, {
        # A (2, 3) transpose of a (3, 2) block starting at element 4: stride (1, 2).
        "transposed": (base, 4, (2, 3), (1, 2)),
        "half_tail": (half, 6, (4,), (1,)),
        "longs": (longs, 0, (3,), (1,)),
        "scalar": (longs, 2, (), ()),
    })
    state = load_state_dict(path)
    np.testing.assert_array_equal(state["transposed"], base[4:10].reshape(3, 2).T)
    assert state["transposed"].flags.c_contiguous
    assert state["half_tail"].dtype == np.float16
    np.testing.assert_array_equal(state["half_tail"], half[6:])
    np.testing.assert_array_equal(state["longs"], longs)
    assert state["scalar"].shape == () and int(state["scalar"]) == 2**40


def test_tensor_past_its_storage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.pth"
    write_zip_pth(path, {"w": (np.zeros(4, dtype=np.float32), 2, (3,), (1,))})
    with pytest.raises(ModelError, match=r"short\.pth.*tensor w"):
        load_state_dict(path)


def test_foreign_globals_are_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    # Would call os.system("true") under a plain pickle.load.
    write_zip_pth(path, {}, extra_global=b"cos\nsystem\n(" + pickle_text("true") + b"tR0")
    with pytest.raises(ModelError, match=r"evil\.pth.*os\.system"):
        load_state_dict(path)


def test_not_a_pth_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError, match=r"junk\.pth"):
        load_state_dict(path)
    with pytest.raises(ModelError, match=r"missing\.pth"):
        load_state_dict(tmp_path / "missing.pth")
