"""`vidrec gallery build`: embed every image of a PP-ShiTu data_file and save the index.

Like PaddleClas's build_gallery.py, each gallery image is embedded whole (no detection): gallery
images are expected to be crops of the object.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from config import ConfigError, VidrecConfig
from models.errors import GalleryError
from models.gallery import GalleryIndex
from models.gallery_file import GalleryEntry, read_data_file
from models.recognizer import Recognizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GalleryBuildSummary:
    index_dir: Path
    entries: int
    labels: int
    version: int


def read_rgb(entry: GalleryEntry, data_file: Path) -> np.ndarray:
    image = cv2.imread(str(entry.path), cv2.IMREAD_COLOR)
    if image is None:
        raise GalleryError(f"{data_file}:{entry.line_number}: cannot read image {entry.path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def embed_entries(entries: list[GalleryEntry], recognizer: Recognizer, *, data_file: Path, batch_size: int) -> np.ndarray:
    """Embed in batches, holding at most ``batch_size`` decoded images in memory."""
    chunks = []
    for start in range(0, len(entries), batch_size):
        images = [read_rgb(e, data_file) for e in entries[start : start + batch_size]]
        chunks.append(recognizer.embed(images))
    return np.concatenate(chunks) if chunks else np.zeros((0, recognizer.embedding_size), np.float32)


def build_gallery(cfg: VidrecConfig, recognizer: Recognizer) -> GalleryBuildSummary:
    ip = cfg.IndexProcess
    if ip.data_file is None or ip.index_dir is None:
        missing = "IndexProcess.data_file" if ip.data_file is None else "IndexProcess.index_dir"
        raise ConfigError(f"{missing}: required by `vidrec gallery build` (pass -o {missing}=...)")
    if ip.index_operation != "new":
        raise ConfigError(f"IndexProcess.index_operation: `vidrec gallery build` makes a new index (got {ip.index_operation!r})")
    if recognizer.embedding_size != ip.embedding_size:
        raise ConfigError(
            f"IndexProcess.embedding_size: is {ip.embedding_size} but the recognizer "
            f"{cfg.Global.rec_inference_model_dir} makes {recognizer.embedding_size}-d embeddings"
        )
    data_file = Path(ip.data_file)
    entries = read_data_file(data_file, Path(ip.image_root), ip.delimiter)
    embeddings = embed_entries(entries, recognizer, data_file=data_file, batch_size=ip.batch_size)
    gallery = GalleryIndex.build(
        embeddings,
        [e.line for e in entries],
        [e.label for e in entries],
        index_method=ip.index_method,
        dist_type=ip.dist_type,
    )
    gallery.save(Path(ip.index_dir))
    return GalleryBuildSummary(Path(ip.index_dir), len(entries), len({e.label for e in entries}), gallery.version)
