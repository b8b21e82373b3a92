"""`vidrec gallery build|append|remove|list|eval`: the gallery index, driven by PP-ShiTu's IndexProcess keys.

Keys used: ``data_file``, ``image_root``, ``index_dir``, ``index_method``, ``dist_type``, ``delimiter``,
``batch_size`` and ``index_operation`` (``build`` follows it as PaddleClas's build_gallery.py does).

This module turns the data_file into gallery items (``models/gallery_file.py``) and hands them to the changes
in ``models/gallery_changes.py`` (embed, append, remove, all saved atomically under a lock file); an error
about an item comes back as ``data_file:line``. Lines are matched as (image path, label), each stripped, so
"a.jpg<TAB>cat" and "a.jpg<TAB> cat" are the same entry.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from config import ConfigError, VidrecConfig
from models.errors import GalleryError
from models.gallery_changes import (
    GalleryItemError,
    GallerySettings,
    GallerySummary,
    append_items,
    build_from_items,
    check_embedding_size,
    first_repeat,
    load_existing,
    read_rgb,
    remove_items,
)
from models.gallery_eval import RetrievalReport, evaluate
from models.gallery_file import GalleryEntry, line_key, read_data_file
from models.recognizer import Recognizer
from models.shitu import label_margin

log = logging.getLogger(__name__)

# mAP is computed over at most this many ranked entries per query (the whole gallery when it is smaller).
MAX_RANKED = 1000

EvalReport = RetrievalReport


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
    """Embed every image of the data_file into a new index, replacing what index_dir held (see ``build_from_items``)."""
    ip = cfg.IndexProcess
    data_file, index_dir = _required_paths(cfg, "build")
    if recognizer.embedding_size != ip.embedding_size:
        raise ConfigError(
            f"IndexProcess.embedding_size: is {ip.embedding_size} but the recognizer "
            f"{cfg.Global.rec_inference_model_dir} makes {recognizer.embedding_size}-d embeddings"
        )
    entries = read_data_file(data_file, Path(ip.image_root), ip.delimiter)
    repeat = _repeated_line(entries, data_file, ip.delimiter)
    if repeat is not None:
        # PaddleClas builds such a file (the image then counts twice); so does vidrec, but says so.
        log.warning("%s", repeat)
    with _by_line(data_file, entries):
        return build_from_items(entries, recognizer, gallery_settings(cfg, index_dir))


def append_gallery(cfg: VidrecConfig, recognizer: Recognizer) -> GallerySummary:
    """Embed only the data_file's images and add them; ids continue from the largest ever given + 1.

    A line already in the index (or twice in the data_file) is an error naming file:line, found before any
    image is embedded.
    """
    ip = cfg.IndexProcess
    data_file, index_dir = _required_paths(cfg, "append")
    entries = read_data_file(data_file, Path(ip.image_root), ip.delimiter)
    repeat = _repeated_line(entries, data_file, ip.delimiter)
    if repeat is not None:
        raise GalleryError(repeat)
    with _by_line(data_file, entries):
        return append_items(entries, recognizer, gallery_settings(cfg, index_dir))


def remove_from_gallery(cfg: VidrecConfig) -> GallerySummary:
    """Remove every id whose stored line is one of the data_file's lines (PaddleClas's remove).

    Needs no images and no recognizer. A line that is not in the index is an error naming file:line, and
    then nothing is removed.
    """
    ip = cfg.IndexProcess
    data_file, index_dir = _required_paths(cfg, "remove")
    entries = read_data_file(data_file, Path(ip.image_root), ip.delimiter, check_images=False)
    with _by_line(data_file, entries):
        return remove_items(entries, gallery_settings(cfg, index_dir))


def list_gallery(cfg: VidrecConfig) -> GalleryListing:
    """The entries of ``IndexProcess.index_dir``, by id."""
    ip = cfg.IndexProcess
    index_dir = _required_index_dir(cfg, "list")
    gallery = load_existing(index_dir, ip.delimiter)
    rows = sorted(
        (GalleryRow(id=i, label=label, path=line_key(line, ip.delimiter)[0], line=line) for i, label, line in gallery.entries()),
        key=lambda row: row.id,
    )
    return GalleryListing(index_dir, gallery.version, gallery.index_method, gallery.dist_type, gallery.embedding_size, rows)


def eval_gallery(
    cfg: VidrecConfig, recognizer: Recognizer, query_file: Path, *, query_root: Path | None = None,
    unknown_file: Path | None = None,
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
    gallery = load_existing(index_dir, ip.delimiter)
    check_embedding_size(gallery, recognizer, index_dir)
    if gallery.size == 0:
        raise GalleryError(f"{index_dir}: the gallery is empty; nothing to evaluate against")
    root = Path(query_root) if query_root is not None else Path(ip.image_root)
    queries = read_data_file(query_file, root, ip.delimiter)
    if unknown_file is not None:
        unknown = read_data_file(Path(unknown_file), root, ip.delimiter)
        held = [q for q in unknown if q.label in gallery.labels]
        if held:
            raise GalleryError(f"{unknown_file}:{held[0].line_number}: label {held[0].label!r} is in the gallery; "
                               f"--unknown lists objects the gallery does not hold")
        queries = list(queries) + list(unknown)
    entries = gallery.entries()
    label_of = {i: label for i, label, _ in entries}
    label_counts = Counter(label for _, label, _ in entries)
    image_root = Path(ip.image_root)
    id_of_path: dict[Path, list[int]] = {}
    for i, _, line in entries:
        id_of_path.setdefault(_resolved(image_root / line_key(line, ip.delimiter)[0]), []).append(i)
    own = [set(id_of_path.get(_resolved(q.path), ())) for q in queries]

    k = min(gallery.size, MAX_RANKED)
    extra = max((len(ids) for ids in own), default=0)
    ranked_labels: list[list[str | None]] = []
    top1: list[float] = []
    margins: list[float] = []
    for start in range(0, len(queries), ip.batch_size):
        chunk = queries[start : start + ip.batch_size]
        with _by_line(query_file, queries):
            embeddings = recognizer.embed([read_rgb(q, start + k) for k, q in enumerate(chunk)])
        found = gallery.search(embeddings, min(gallery.size, k + extra))
        for row_ids, row_scores, skip in zip(found.ids.tolist(), found.scores.tolist(), own[start : start + len(chunk)]):
            kept = [(i, s) for i, s in zip(row_ids, row_scores) if i not in skip][:k]
            ranked_labels.append([label_of[i] if i >= 0 else None for i, _ in kept])
            top1.append(kept[0][1] if kept and kept[0][0] >= 0 else float("-inf"))
            margins.append(label_margin(ranked_labels[-1], [s for _, s in kept]))
    n_relevant = [
        label_counts[q.label] - sum(label_of[i] == q.label for i in skip) for q, skip in zip(queries, own)
    ]
    report = evaluate(
        [q.label for q in queries], ranked_labels, top1, n_relevant, ks=(1, 5), score_thres=ip.score_thres,
        margins=margins, margin_thres=ip.margin_thres,
    )
    if report.answerable == 0:
        raise GalleryError(f"{query_file}: none of its {len(queries)} labels is in the gallery {index_dir}; nothing to evaluate")
    return report


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


def gallery_settings(cfg: VidrecConfig, index_dir: Path) -> GallerySettings:
    """The gallery settings of ``IndexProcess`` for ``index_dir`` (items name their images as read from the data_file)."""
    ip = cfg.IndexProcess
    return GallerySettings(
        index_dir=Path(index_dir), delimiter=ip.delimiter, index_method=ip.index_method, dist_type=ip.dist_type,
        batch_size=ip.batch_size, augment=ip.gallery_augment,
    )


def _repeated_line(entries: Sequence[GalleryEntry], data_file: Path, delimiter: str) -> str | None:
    """The message naming the first line that repeats an earlier one, or None."""
    repeat = first_repeat(entries, delimiter)
    if repeat is None:
        return None
    again, first = (entries[n].line_number for n in repeat)
    return f"{data_file}:{again}: duplicate: the same entry as line {first}"


@contextmanager
def _by_line(data_file: Path, entries: Sequence[GalleryEntry]) -> Iterator[None]:
    """An error about one of ``entries`` (by index) named as ``data_file:line`` instead."""
    try:
        yield
    except GalleryItemError as exc:
        raise GalleryError(f"{data_file}:{entries[exc.index].line_number}: {exc.reason}") from None


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


# ---- the command line --------------------------------------------------------------------------------------

GALLERY_COMMANDS = ("build", "append", "remove", "list", "eval")


def run_gallery_command(
    cfg: VidrecConfig, command: str, *, query: Path | None = None, query_root: Path | None = None,
    unknown: Path | None = None,
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
        report = eval_gallery(cfg, build_recognizer(cfg), Path(query), query_root=query_root, unknown_file=unknown)
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
