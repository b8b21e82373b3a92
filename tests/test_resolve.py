"""Model resolution: path, $VIDREC_MODEL_DIR, cache, then a sha256-checked download (from a loopback server)."""
from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path
from typing import Iterator

import pytest

from models import resolve
from models.errors import ModelError
from models.resolve import ModelFile, ModelSpec, resolve_model_dir, sha256_of


@pytest.fixture()
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving a folder (no machine here reaches the internet)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the cache at a fresh folder and clear VIDREC_MODEL_DIR (environment only; nothing is faked)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VIDREC_CACHE_DIR", str(cache))
    monkeypatch.delenv("VIDREC_MODEL_DIR", raising=False)
    return cache / "models"


def _register(monkeypatch: pytest.MonkeyPatch, spec: ModelSpec) -> None:
    monkeypatch.setitem(resolve.REGISTRY, spec.name, spec)


def test_model_dir_env_is_used_and_checked(model_dir: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    monkeypatch.setenv("VIDREC_MODEL_DIR", str(model_dir))
    folder = resolve_model_dir("picodet_s_coco", needed=("picodet_s_320_coco.onnx", "coco.names"))
    assert folder == model_dir / "picodet_s_coco"


def test_explicit_path_wins(model_dir: Path, isolated: Path) -> None:
    folder = resolve_model_dir(str(model_dir / "picodet_s_coco"), needed=("coco.names",))
    assert folder == model_dir / "picodet_s_coco"


def test_download_into_cache_with_sha256(file_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, isolated: Path, model_dir: Path) -> None:
    base, root = file_server
    src = model_dir / "picodet_s_coco" / "coco.names"
    shutil.copy(src, root / "names.txt")
    _register(monkeypatch, ModelSpec(name="tiny", files=(ModelFile("coco.names", sha256_of(src), f"{base}/names.txt"),)))
    folder = resolve_model_dir("tiny", needed=("coco.names",))
    assert folder == isolated / "tiny"
    assert (folder / "coco.names").read_bytes() == src.read_bytes()
    # second call: served from the cache, even with the server's file gone
    (root / "names.txt").unlink()
    assert resolve_model_dir("tiny", needed=("coco.names",)) == folder


def test_download_with_wrong_sha256_leaves_nothing(file_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    base, root = file_server
    (root / "w.onnx").write_bytes(b"not the model")
    _register(monkeypatch, ModelSpec(name="tiny", files=(ModelFile("w.onnx", "0" * 64, f"{base}/w.onnx"),)))
    with pytest.raises(ModelError, match=r"w\.onnx has sha256 .*expected 0000"):
        resolve_model_dir("tiny", needed=("w.onnx",))
    assert not (isolated / "tiny").exists()
    assert not any(p.name.startswith(".tiny.") for p in isolated.iterdir())


def test_download_failure_names_the_url(file_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, isolated: Path) -> None:
    base, _ = file_server
    _register(monkeypatch, ModelSpec(name="tiny", files=(ModelFile("w.onnx", "0" * 64, f"{base}/missing.onnx"),)))
    with pytest.raises(ModelError, match=r"cannot download .*missing\.onnx"):
        resolve_model_dir("tiny", needed=("w.onnx",))


def test_unknown_name_lists_where_it_looked(isolated: Path) -> None:
    with pytest.raises(ModelError, match=r"model 'nothing_here' not found .*known model names: .*picodet_s_coco"):
        resolve_model_dir("nothing_here", needed=("x.onnx",))


def test_folder_missing_a_file_names_it(tmp_path: Path, isolated: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelError, match=r"lacks inference\.onnx"):
        resolve_model_dir(str(tmp_path / "m"), needed=("inference.onnx",))


def test_recognizer_is_built_from_the_pypi_package_into_the_cache(isolated: Path) -> None:
    folder = resolve_model_dir("efficientnet_lite0", needed=("inference.onnx",))
    assert folder == isolated / "efficientnet_lite0"
    assert (folder / "inference.onnx").stat().st_size > 10_000_000  # 4.69 M float32 parameters


def test_picodet_fetch_from_a_mirror_uses_the_packaged_class_names(
    file_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, isolated: Path, model_dir: Path
) -> None:
    """The real registry entry, with its official URLs pointed at a loopback mirror of the same files."""
    base, root = file_server
    shutil.copy(model_dir / "picodet_s_coco" / "picodet_s_320_coco.onnx", root / "picodet_s_320_coco.onnx")
    real = resolve.REGISTRY["picodet_s_coco"]
    mirrored = tuple(
        ModelFile(f.name, f.sha256, None if f.url is None else f"{base}/{f.name}", f.packaged) for f in real.files
    )
    _register(monkeypatch, ModelSpec(name="picodet_s_coco", files=mirrored))
    folder = resolve_model_dir("picodet_s_coco", needed=("picodet_s_320_coco.onnx", "coco.names"))
    assert folder == isolated / "picodet_s_coco"
    assert sha256_of(folder / "coco.names") == sha256_of(model_dir / "picodet_s_coco" / "coco.names")
    assert not (folder / "picodet_s_416_coco.onnx").exists()  # only what was asked for is fetched


def _tar_of(path: Path, files: dict[str, bytes]) -> None:
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_paddle_style_tar_is_unpacked_and_its_sha256_recorded(
    file_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    """The shape of PaddleClas's published *_infer.tar: one folder of inference.* files."""
    base, root = file_server
    _tar_of(root / "m_infer.tar", {
        "m_infer/inference.pdmodel": b"program",
        "m_infer/inference.pdiparams": b"weights",
        "m_infer/../../escape.txt": b"never written outside",
        "elsewhere/other.txt": b"not part of the model",
    })
    _register(monkeypatch, ModelSpec(name="m_infer", archive=resolve.Archive(url=f"{base}/m_infer.tar", member_dir="m_infer")))
    folder = resolve_model_dir("m_infer", needed=("inference.pdmodel", "inference.pdiparams"))
    assert sorted(p.name for p in folder.iterdir()) == ["inference.pdiparams", "inference.pdmodel", "source.json"]
    assert (folder / "inference.pdiparams").read_bytes() == b"weights"
    import json

    recorded = json.loads((folder / "source.json").read_text())
    assert recorded["sha256"] == sha256_of(root / "m_infer.tar")
    assert not (isolated.parent / "escape.txt").exists() and not (isolated / "escape.txt").exists()


def test_tar_with_a_published_checksum_that_differs_is_refused(
    file_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    base, root = file_server
    _tar_of(root / "m_infer.tar", {"m_infer/inference.pdmodel": b"program"})
    spec = ModelSpec(name="m_infer", archive=resolve.Archive(url=f"{base}/m_infer.tar", member_dir="m_infer", sha256="1" * 64))
    _register(monkeypatch, spec)
    with pytest.raises(ModelError, match=r"m_infer\.tar has sha256"):
        resolve_model_dir("m_infer", needed=("inference.pdmodel",))
    assert not (isolated / "m_infer").exists()


def test_ppshitu_v2_models_are_known_by_their_official_folder_names() -> None:
    for name in ("picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer", "general_PPLCNetV2_base_pretrained_v1.0_infer"):
        spec = resolve.REGISTRY[name]
        assert spec.archive is not None and spec.archive.url.endswith(f"/{name}.tar")
