"""Changes to a saved gallery, given as items: make a new one, append, remove. An error names its item by index.

Each caller turns its input into ``GalleryItem``s, and an item's index back into its own words: `vidrec gallery`
(``workers/gallery_job.py``) reads a data_file and says ``file:line``; the HTTP API (``workers/gallery_api.py``)
reads a JSON body and says ``items[i]``.

Like PaddleClas's build_gallery.py, each gallery image is embedded whole (no detection). Unlike it:
- ``append_items`` embeds only the new items and refuses one already in the index (PaddleClas#2500
  re-extracts the list and doubles entries);
- ``remove_items`` needs no images and works for Flat, IVF and HNSW32 alike (PaddleX#2869), and an item that
  is not in the index is an error rather than a silent no-op;
- every change is saved atomically (readers, such as a running ``vidrec video``, see the old directory or
  the new, never a mix) and adds 1 to the gallery's version; changes to one index_dir are serialised across
  processes by a lock file ``.<index_dir name>.lock`` beside it.
Items are matched by ``line_key``: (image path, label), each stripped.
"""
from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from models.errors import GalleryError
from models.gallery import GalleryIndex, recognizer_mismatch
from models.gallery_file import GalleryItem, line_key
from models.gallery_views import GalleryAugment, gallery_views, mean_embedding
from models.recognizer import Recognizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GallerySettings:
    """Where a gallery is kept and how it is made (PP-ShiTu's ``IndexProcess`` keys)."""

    index_dir: Path
    delimiter: str = "\t"
    index_method: str = "Flat"
    dist_type: str = "IP"
    batch_size: int = 32  # images per recognizer call, the most decoded images held at once
    # Item paths are read relative to this (an absolute path ignores it) and shown in messages as the item gives them.
    image_root: Path = Path()
    # Views of each image averaged into its one embedding (models/gallery_views.py); "none": the image alone.
    augment: GalleryAugment = "none"


class GalleryItemError(GalleryError):
    """A change refused because of one item: ``index`` says which, ``reason`` why (without saying where)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"item {index}: {reason}")
        self.index = index
        self.reason = reason


@dataclass(frozen=True)
class GallerySummary:
    """What one change did: ``changed`` entries added or removed; ``embedded`` images run through the recognizer."""

    index_dir: Path
    entries: int
    labels: int
    version: int
    operation: str = "new"
    changed: int = 0
    embedded: int = 0

    def describe(self) -> str:
        verb = {"new": "built", "append": "appended", "remove": "removed"}[self.operation]
        return (
            f"gallery {self.index_dir}: {verb} {self.changed} entries; now {self.entries} entries, "
            f"{self.labels} labels, version {self.version}"
        )


# ---- changes -----------------------------------------------------------------------------------------------


def build_from_items(items: Sequence[GalleryItem], recognizer: Recognizer, settings: GallerySettings) -> GallerySummary:
    """Embed every item into a new index, replacing what index_dir held.

    The version continues from the replaced gallery's, so a running job that follows versions sees a change
    rather than an older-looking number. Repeated items are kept (PaddleClas does the same); callers warn.
    """
    embeddings = embed_items(items, recognizer, settings)
    with locked(settings.index_dir):
        previous = GalleryIndex.stored_version(settings.index_dir)
        gallery = GalleryIndex.build(
            embeddings, [item.line for item in items], [item.label for item in items],
            index_method=settings.index_method, dist_type=settings.dist_type, version=(previous or 0) + 1,
            recognizer=getattr(recognizer, "identity", None),
        )
        gallery.save(settings.index_dir)
    return summarise(settings.index_dir, gallery, "new", changed=len(items), embedded=len(items))


def append_items(items: Sequence[GalleryItem], recognizer: Recognizer, settings: GallerySettings) -> GallerySummary:
    """Embed only these items and add them; ids continue from the largest ever given + 1.

    An item repeating an earlier one, or already in the index, is a ``GalleryItemError`` found before any image
    is embedded.
    """
    repeat = first_repeat(items, settings.delimiter)
    if repeat is not None:
        raise GalleryItemError(repeat[0], f"duplicate: the same entry as item {repeat[1]}")
    index_dir = settings.index_dir
    with locked(index_dir):
        gallery = load_existing(index_dir, settings.delimiter)
        check_embedding_size(gallery, recognizer, index_dir)
        _warn_on_settings_not_applied(settings, gallery)
        stored = stored_keys(gallery, settings.delimiter)
        for n, item in enumerate(items):
            ids = stored.get(line_key(item.line, settings.delimiter))
            if ids:
                raise GalleryItemError(
                    n, f"duplicate: {item.line!r} is already in the gallery {index_dir} (id {ids[0]}); "
                    f"an append data_file lists only the new images",
                )
        embeddings = embed_items(items, recognizer, settings)
        gallery.add(embeddings, [item.line for item in items], [item.label for item in items])
        gallery.save(index_dir)
    return summarise(index_dir, gallery, "append", changed=len(items), embedded=len(items))


def remove_items(items: Sequence[GalleryItem], settings: GallerySettings) -> GallerySummary:
    """Remove every id whose stored line has the key of one of the items (PaddleClas's remove).

    Needs no images and no recognizer. An item that is not in the index is a ``GalleryItemError``, and then
    nothing is removed.
    """
    index_dir = settings.index_dir
    with locked(index_dir):
        gallery = load_existing(index_dir, settings.delimiter)
        stored = stored_keys(gallery, settings.delimiter)
        ids: list[int] = []
        for n, item in enumerate(items):
            found = stored.get(line_key(item.line, settings.delimiter))
            if not found:
                raise GalleryItemError(n, f"not in the gallery {index_dir}: {item.line!r}")
            ids.extend(found)
        removed = gallery.remove(ids)
        gallery.save(index_dir)
    return summarise(index_dir, gallery, "remove", changed=removed)


# ---- embedding ---------------------------------------------------------------------------------------------


def read_rgb(item: GalleryItem, index: int, image_root: Path = Path()) -> np.ndarray:
    """The item's image as RGB; unreadable, a ``GalleryItemError`` naming the image as the item gives it."""
    image = cv2.imread(str(image_root / item.path), cv2.IMREAD_COLOR)
    if image is None:
        raise GalleryItemError(index, f"cannot read image {item.path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def embed_items(items: Sequence[GalleryItem], recognizer: Recognizer, settings: GallerySettings) -> np.ndarray:
    """Embed in batches, holding at most ``settings.batch_size`` decoded images in memory; with views
    (``settings.augment``), each image's embedding is the mean of its views' (one recognizer call per image)."""
    if settings.augment != "none":
        rows = [mean_embedding(recognizer.embed(gallery_views(read_rgb(item, n, settings.image_root), settings.augment)))
                for n, item in enumerate(items)]
        return np.stack(rows) if rows else np.zeros((0, recognizer.embedding_size), np.float32)
    chunks = []
    for start in range(0, len(items), settings.batch_size):
        chunk = items[start : start + settings.batch_size]
        chunks.append(recognizer.embed([read_rgb(item, start + k, settings.image_root) for k, item in enumerate(chunk)]))
    return np.concatenate(chunks) if chunks else np.zeros((0, recognizer.embedding_size), np.float32)


# ---- helpers -----------------------------------------------------------------------------------------------


def first_repeat(items: Sequence[GalleryItem], delimiter: str) -> tuple[int, int] | None:
    """(index, index of the earlier same entry) of the first item that repeats an earlier one; None if none does."""
    first: dict[tuple[str, str | None], int] = {}
    for n, item in enumerate(items):
        earlier = first.setdefault(line_key(item.line, delimiter), n)
        if earlier != n:
            return n, earlier
    return None


def stored_keys(gallery: GalleryIndex, delimiter: str) -> dict[tuple[str, str | None], list[int]]:
    """The ids of each entry key in the gallery (several ids where a build kept a repeated line)."""
    stored: dict[tuple[str, str | None], list[int]] = {}
    for i, _, line in gallery.entries():
        stored.setdefault(line_key(line, delimiter), []).append(i)
    return stored


def load_existing(index_dir: Path, delimiter: str) -> GalleryIndex:
    if not index_dir.exists():
        raise GalleryError(f"{index_dir}: no gallery there yet; make one with `vidrec gallery build`")
    return GalleryIndex.load(index_dir, delimiter=delimiter)


def check_embedding_size(gallery: GalleryIndex, recognizer: Recognizer, index_dir: Path) -> None:
    """The gallery's embeddings are the recognizer's: same size, and the same recognizer where both say."""
    mismatch = recognizer_mismatch(gallery, getattr(recognizer, "identity", None), where=index_dir)
    if mismatch is not None:
        raise GalleryError(mismatch)
    if gallery.embedding_size != recognizer.embedding_size:
        raise GalleryError(
            f"{index_dir}: the gallery holds {gallery.embedding_size}-d embeddings but the recognizer "
            f"{recognizer.model_path} makes {recognizer.embedding_size}-d ones; rebuild the gallery with this recognizer"
        )


def _warn_on_settings_not_applied(settings: GallerySettings, gallery: GalleryIndex) -> None:
    if settings.index_method != gallery.index_method:
        log.warning("IndexProcess.index_method %s not applied: %s is a %s index; `gallery build` makes a new one",
                    settings.index_method, settings.index_dir, gallery.index_method)
    if settings.dist_type != gallery.dist_type:
        log.warning("IndexProcess.dist_type %s not applied: %s uses %s", settings.dist_type, settings.index_dir, gallery.dist_type)


@contextmanager
def locked(index_dir: Path) -> Iterator[None]:
    """Serialise changes to one index_dir (load, change, save) across processes."""
    index_dir = Path(index_dir)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = index_dir.parent / f".{index_dir.name}.lock"
    try:
        handle = open(lock_path, "a+b")
    except OSError as exc:
        raise GalleryError(f"{index_dir}: cannot open lock file {lock_path} ({exc.strerror or exc})") from None
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def summarise(index_dir: Path, gallery: GalleryIndex, operation: str, *, changed: int, embedded: int = 0) -> GallerySummary:
    labels = len({label for _, label, _ in gallery.entries()})
    return GallerySummary(index_dir, gallery.size, labels, gallery.version, operation, changed, embedded)
