"""`vidrec gallery build|append|remove|list|eval`: the gallery index, driven by PP-ShiTu's IndexProcess keys.

Keys used: ``data_file``, ``image_root``, ``index_dir``, ``index_method``, ``dist_type``, ``delimiter``,
``batch_size`` and ``index_operation`` (``build`` follows it as PaddleClas's build_gallery.py does).

Like build_gallery.py, each gallery image is embedded whole (no detection): gallery images are expected to
be crops of the object. Unlike it:
- ``append`` embeds only the data_file's lines and refuses a line already in the index (PaddleClas#2500
  re-extracts the list and doubles entries);
- ``remove`` needs no images and works for Flat, IVF and HNSW32 alike (PaddleX#2869), and a line that is not
  in the index is an error rather than a silent no-op;
- every change is saved atomically (readers, such as a running ``vidrec video``, see the old directory or
  the new, never a mix) and adds 1 to the gallery's version; changes to one index_dir are serialised by a
  lock file ``.<index_dir name>.lock`` beside it.
Lines are matched as (image path, label), each stripped, so "a.jpg<TAB>cat" and "a.jpg<TAB> cat" are the
same entry.
"""
from __future__ import annotations

import fcntl
import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from config import ConfigError, VidrecConfig
from models.errors import GalleryError
from models.gallery import GalleryIndex
from models.gallery_eval import RetrievalReport, evaluate
from models.gallery_file import GalleryEntry, read_data_file
from models.recognizer import Recognizer

log = logging.getLogger(__name__)

# mAP is computed over at most this many ranked entries per query (the whole gallery when it is smaller).
MAX_RANKED = 1000

EvalReport = RetrievalReport


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


GalleryBuildSummary = GallerySummary


@dataclass(frozen=True)
class GalleryRow:
    id: int
    label: str
    path: str  # the image path as the data_file gave it (the line up to the delimiter)
    line: str  # the stored line, as PaddleClas keeps it in id_map.pkl


@dataclass(frozen=True)
class GalleryListing:
    index_dir: Path
    version: int
    index_method: str
    dist_type: str
    embedding_size: int
    rows: list[GalleryRow]

    def summary(self) -> str:
        labels = len({row.label for row in self.rows})
        return (
            f"gallery {self.index_dir}: version {self.version}, {len(self.rows)} entries, {labels} labels, "
            f"{self.index_method}, {self.dist_type}, {self.embedding_size}-d"
        )

    def lines(self) -> list[str]:
        """One ``id<TAB>label<TAB>path`` line per entry, by id."""
        return [f"{row.id}\t{row.label}\t{row.path}" for row in self.rows]


# ---- commands ----------------------------------------------------------------------------------------------


def build_gallery(cfg: VidrecConfig, recognizer: Recognizer) -> GallerySummary:
    """``vidrec gallery build``: what ``IndexProcess.index_operation`` says (new | append | remove)."""
    operation = cfg.IndexProcess.index_operation
    if operation == "append":
        return append_gallery(cfg, recognizer)
    if operation == "remove":
        return remove_from_gallery(cfg)
    return new_gallery(cfg, recognizer)


def new_gallery(cfg: VidrecConfig, recognizer: Recognizer) -> GallerySummary:
    """Embed every image of the data_file into a new index, replacing what index_dir held.

    The version continues from the replaced gallery's, so a running job that follows versions sees a
    change rather than an older-looking number.
    """
    ip = cfg.IndexProcess
    data_file, index_dir = _required_paths(cfg, "build")
    if recognizer.embedding_size != ip.embedding_size:
        raise ConfigError(
            f"IndexProcess.embedding_size: is {ip.embedding_size} but the recognizer "
            f"{cfg.Global.rec_inference_model_dir} makes {recognizer.embedding_size}-d embeddings"
        )
    entries = read_data_file(data_file, Path(ip.image_root), ip.delimiter)
    try:
        _refuse_repeats(entries, data_file, ip.delimiter)
    except GalleryError as exc:
        # PaddleClas builds such a file (the image then counts twice); so does vidrec, but says so.
        log.warning("%s", exc)
    embeddings = embed_entries(entries, recognizer, data_file=data_file, batch_size=ip.batch_size)
    with _locked(index_dir):
        previous = GalleryIndex.stored_version(index_dir)
        gallery = GalleryIndex.build(
            embeddings, [e.line for e in entries], [e.label for e in entries],
            index_method=ip.index_method, dist_type=ip.dist_type, version=(previous or 0) + 1,
        )
        gallery.save(index_dir)
    return _summary(index_dir, gallery, "new", changed=len(entries), embedded=len(entries))


def append_gallery(cfg: VidrecConfig, recognizer: Recognizer) -> GallerySummary:
    """Embed only the data_file's images and add them; ids continue from the largest ever given + 1.

    A line already in the index (or twice in the data_file) is an error naming file:line, found before any
    image is embedded.
    """
    ip = cfg.IndexProcess
    data_file, index_dir = _required_paths(cfg, "append")
    entries = read_data_file(data_file, Path(ip.image_root), ip.delimiter)
    _refuse_repeats(entries, data_file, ip.delimiter)
    with _locked(index_dir):
        gallery = _load_existing(index_dir, ip.delimiter)
        _check_embedding_size(gallery, recognizer, index_dir)
        _warn_on_settings_not_applied(cfg, gallery, index_dir)
        stored = _stored_keys(gallery, ip.delimiter)
        for entry in entries:
            ids = stored.get(_entry_key(entry, ip.delimiter))
            if ids:
                raise GalleryError(
                    f"{data_file}:{entry.line_number}: duplicate: {entry.line!r} is already in the gallery {index_dir} "
                    f"(id {ids[0]}); an append data_file lists only the new images"
                )
        embeddings = embed_entries(entries, recognizer, data_file=data_file, batch_size=ip.batch_size)
        gallery.add(embeddings, [e.line for e in entries], [e.label for e in entries])
        gallery.save(index_dir)
    return _summary(index_dir, gallery, "append", changed=len(entries), embedded=len(entries))


def remove_from_gallery(cfg: VidrecConfig) -> GallerySummary:
    """Remove every id whose stored line is one of the data_file's lines (PaddleClas's remove).

    Needs no images and no recognizer. A line that is not in the index is an error naming file:line, and
    then nothing is removed.
    """
    ip = cfg.IndexProcess
    data_file, index_dir = _required_paths(cfg, "remove")
    entries = read_data_file(data_file, Path(ip.image_root), ip.delimiter, check_images=False)
    with _locked(index_dir):
        gallery = _load_existing(index_dir, ip.delimiter)
        stored = _stored_keys(gallery, ip.delimiter)
        ids: list[int] = []
        for entry in entries:
            found = stored.get(_entry_key(entry, ip.delimiter))
            if not found:
                raise GalleryError(f"{data_file}:{entry.line_number}: not in the gallery {index_dir}: {entry.line!r}")
            ids.extend(found)
        removed = gallery.remove(ids)
        gallery.save(index_dir)
    return _summary(index_dir, gallery, "remove", changed=removed)


def list_gallery(cfg: VidrecConfig) -> GalleryListing:
    """The entries of ``IndexProcess.index_dir``, by id."""
    ip = cfg.IndexProcess
    index_dir = _required_index_dir(cfg, "list")
    gallery = _load_existing(index_dir, ip.delimiter)
    rows = sorted(
        (GalleryRow(id=i, label=label, path=_key(line, ip.delimiter)[0], line=line) for i, label, line in gallery.entries()),
        key=lambda row: row.id,
    )
    return GalleryListing(index_dir, gallery.version, gallery.index_method, gallery.dist_type, gallery.embedding_size, rows)


def eval_gallery(
    cfg: VidrecConfig, recognizer: Recognizer, query_file: Path, *, query_root: Path | None = None
) -> EvalReport:
    """Recall@1/5, mAP and a suggested ``score_thres`` of a query data_file against ``IndexProcess.index_dir``.

    Query lines have the data_file format; their paths are joined to ``query_root`` (default
    ``IndexProcess.image_root``). A query image that is itself in the gallery (same resolved path) does not
    find itself: its own entry is left out of its ranking and its relevant set, so the gallery's own
    data_file can serve as a leave-one-out query file. Metrics: see models/gallery_eval.py.
    """
    ip = cfg.IndexProcess
    index_dir = _required_index_dir(cfg, "eval")
    query_file = Path(query_file)
    gallery = _load_existing(index_dir, ip.delimiter)
    _check_embedding_size(gallery, recognizer, index_dir)
    if gallery.size == 0:
        raise GalleryError(f"{index_dir}: the gallery is empty; nothing to evaluate against")
    queries = read_data_file(query_file, Path(query_root) if query_root is not None else Path(ip.image_root), ip.delimiter)

    entries = gallery.entries()
    label_of = {i: label for i, label, _ in entries}
    label_counts = Counter(label for _, label, _ in entries)
    image_root = Path(ip.image_root)
    id_of_path: dict[Path, list[int]] = {}
    for i, _, line in entries:
        id_of_path.setdefault(_resolved(image_root / _key(line, ip.delimiter)[0]), []).append(i)
    own = [set(id_of_path.get(_resolved(q.path), ())) for q in queries]

    k = min(gallery.size, MAX_RANKED)
    extra = max((len(ids) for ids in own), default=0)
    ranked_labels: list[list[str | None]] = []
    top1: list[float] = []
    for start in range(0, len(queries), ip.batch_size):
        chunk = queries[start : start + ip.batch_size]
        embeddings = recognizer.embed([read_rgb(q, query_file) for q in chunk])
        found = gallery.search(embeddings, min(gallery.size, k + extra))
        for row_ids, row_scores, skip in zip(found.ids.tolist(), found.scores.tolist(), own[start : start + len(chunk)]):
            kept = [(i, s) for i, s in zip(row_ids, row_scores) if i not in skip][:k]
            ranked_labels.append([label_of[i] if i >= 0 else None for i, _ in kept])
            top1.append(kept[0][1] if kept and kept[0][0] >= 0 else float("-inf"))
    n_relevant = [
        label_counts[q.label] - sum(label_of[i] == q.label for i in skip) for q, skip in zip(queries, own)
    ]
    report = evaluate(
        [q.label for q in queries], ranked_labels, top1, n_relevant, ks=(1, 5), score_thres=ip.score_thres
    )
    if report.answerable == 0:
        raise GalleryError(f"{query_file}: none of its {len(queries)} labels is in the gallery {index_dir}; nothing to evaluate")
    return report


# ---- embedding ---------------------------------------------------------------------------------------------


def read_rgb(entry: GalleryEntry, data_file: Path) -> np.ndarray:
    image = cv2.imread(str(entry.path), cv2.IMREAD_COLOR)
    if image is None:
        raise GalleryError(f"{data_file}:{entry.line_number}: cannot read image {entry.path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def embed_entries(entries: Sequence[GalleryEntry], recognizer: Recognizer, *, data_file: Path, batch_size: int) -> np.ndarray:
    """Embed in batches, holding at most ``batch_size`` decoded images in memory."""
    chunks = []
    for start in range(0, len(entries), batch_size):
        images = [read_rgb(e, data_file) for e in entries[start : start + batch_size]]
        chunks.append(recognizer.embed(images))
    return np.concatenate(chunks) if chunks else np.zeros((0, recognizer.embedding_size), np.float32)


# ---- helpers -----------------------------------------------------------------------------------------------


def _required_index_dir(cfg: VidrecConfig, command: str) -> Path:
    if cfg.IndexProcess.index_dir is None:
        raise ConfigError(f"IndexProcess.index_dir: required by `vidrec gallery {command}` (pass -o IndexProcess.index_dir=...)")
    return Path(cfg.IndexProcess.index_dir)


def _required_paths(cfg: VidrecConfig, command: str) -> tuple[Path, Path]:
    index_dir = _required_index_dir(cfg, command)
    if cfg.IndexProcess.data_file is None:
        raise ConfigError(f"IndexProcess.data_file: required by `vidrec gallery {command}` (pass -o IndexProcess.data_file=...)")
    return Path(cfg.IndexProcess.data_file), index_dir


def _load_existing(index_dir: Path, delimiter: str) -> GalleryIndex:
    if not index_dir.exists():
        raise GalleryError(f"{index_dir}: no gallery there yet; make one with `vidrec gallery build`")
    return GalleryIndex.load(index_dir, delimiter=delimiter)


def _check_embedding_size(gallery: GalleryIndex, recognizer: Recognizer, index_dir: Path) -> None:
    if gallery.embedding_size != recognizer.embedding_size:
        raise GalleryError(
            f"{index_dir}: the gallery holds {gallery.embedding_size}-d embeddings but the recognizer "
            f"{recognizer.model_path} makes {recognizer.embedding_size}-d ones; rebuild the gallery with this recognizer"
        )


def _warn_on_settings_not_applied(cfg: VidrecConfig, gallery: GalleryIndex, index_dir: Path) -> None:
    ip = cfg.IndexProcess
    if ip.index_method != gallery.index_method:
        log.warning("IndexProcess.index_method %s not applied: %s is a %s index; `gallery build` makes a new one", ip.index_method, index_dir, gallery.index_method)
    if ip.dist_type != gallery.dist_type:
        log.warning("IndexProcess.dist_type %s not applied: %s uses %s", ip.dist_type, index_dir, gallery.dist_type)


def _key(line: str, delimiter: str) -> tuple[str, str | None]:
    """(image path, label) of a stored line, each stripped; (line, None) for a line without the delimiter."""
    if delimiter not in line:
        return line.strip(), None
    path, label = line.split(delimiter, 1)
    return path.strip(), label.strip()


def _entry_key(entry: GalleryEntry, delimiter: str) -> tuple[str, str | None]:
    return _key(entry.line, delimiter)


def _stored_keys(gallery: GalleryIndex, delimiter: str) -> dict[tuple[str, str | None], list[int]]:
    stored: dict[tuple[str, str | None], list[int]] = {}
    for i, _, line in gallery.entries():
        stored.setdefault(_key(line, delimiter), []).append(i)
    return stored


def _refuse_repeats(entries: Sequence[GalleryEntry], data_file: Path, delimiter: str) -> None:
    first: dict[tuple[str, str | None], int] = {}
    for entry in entries:
        key = _entry_key(entry, delimiter)
        if key in first:
            raise GalleryError(f"{data_file}:{entry.line_number}: duplicate: the same entry as line {first[key]}")
        first[key] = entry.line_number


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


@contextmanager
def _locked(index_dir: Path) -> Iterator[None]:
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


def _summary(index_dir: Path, gallery: GalleryIndex, operation: str, *, changed: int, embedded: int = 0) -> GallerySummary:
    labels = len({label for _, label, _ in gallery.entries()})
    return GallerySummary(index_dir, gallery.size, labels, gallery.version, operation, changed, embedded)


# ---- the command line --------------------------------------------------------------------------------------

GALLERY_COMMANDS = ("build", "append", "remove", "list", "eval")


def run_gallery_command(
    cfg: VidrecConfig, command: str, *, query: Path | None = None, query_root: Path | None = None
) -> int:
    """``vidrec gallery COMMAND``: results on stdout (list: TSV rows; eval: metric lines), summaries logged."""
    from workers.system import build_recognizer

    if command not in GALLERY_COMMANDS:
        raise ValueError(f"unknown gallery command {command!r}")
    if command == "list":
        listing = list_gallery(cfg)
        log.info("%s", listing.summary())
        _print_lines(listing.lines())
        return 0
    if command == "remove" or (command == "build" and cfg.IndexProcess.index_operation == "remove"):
        log.info("%s", remove_from_gallery(cfg).describe())
        return 0
    if command == "eval":
        if query is None:
            raise ConfigError("`vidrec gallery eval` needs --query FILE (a data_file of query images)")
        report = eval_gallery(cfg, build_recognizer(cfg), Path(query), query_root=query_root)
        log.info(
            "%d queries (%d with a label in the gallery), ranked over the top %d; top-1 right %d, wrong %d",
            report.queries, report.answerable, report.ranked, report.right_top1, report.wrong_top1,
        )
        _print_lines(report.lines())
        return 0
    recognizer = build_recognizer(cfg)
    summary = append_gallery(cfg, recognizer) if command == "append" else build_gallery(cfg, recognizer)
    log.info("%s", summary.describe())
    return 0


def _print_lines(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)
