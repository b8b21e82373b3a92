"""Write ``.pth`` files in torch's zip format (torch >= 1.6's ``torch.save``) opcode by opcode, without torch,
for the tests of the torch-free reader and of the exports that read it."""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

_STORAGE_NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage"}


def pickle_text(s: str) -> bytes:
    """A pickle BINUNICODE opcode: a string argument (a key, a class name, an injected call's argument)."""
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _pickle_int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _ints_tuple(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_pickle_int(v) for v in values) + b"t"


def write_zip_pth(
    path: Path, tensors: dict[str, tuple[np.ndarray, int, tuple[int, ...], tuple[int, ...]]], *, extra_global: bytes = b""
) -> None:
    """Write ``{key: (flat storage, offset, size, stride)}`` as torch's zip format, pickle protocol 2."""
    out = [b"\x80\x02", extra_global, b"ccollections\nOrderedDict\n)R("]
    storages: dict[str, bytes] = {}
    for i, (key, (flat, offset, size, stride)) in enumerate(tensors.items()):
        storages[str(i)] = flat.astype(flat.dtype.newbyteorder("<")).tobytes()
        persistent_id = (
            b"(" + pickle_text("storage") + b"ctorch\n" + _STORAGE_NAMES[flat.dtype].encode() + b"\n"
            + pickle_text(str(i)) + pickle_text("cpu") + _pickle_int(flat.size) + b"tQ"
        )
        out.append(
            pickle_text(key) + b"ctorch._utils\n_rebuild_tensor_v2\n("
            + persistent_id + _pickle_int(offset) + _ints_tuple(size) + _ints_tuple(stride)
            + b"\x89ccollections\nOrderedDict\n)Rt" + b"R"
        )
    out.append(b"u.")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"".join(out))
        archive.writestr("archive/byteorder", b"little")
        archive.writestr("archive/version", b"3\n")
        for name, raw in storages.items():
            archive.writestr(f"archive/data/{name}", raw)
