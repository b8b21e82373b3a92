"""A gallery of labelled embeddings with stable int64 ids, searched through faiss, saved in PP-ShiTu's layout.

Why the embeddings are kept beside the faiss index: removal and re-indexing never need the images again
(PaddleClas#2500 re-extracts everything; PaddleX#2869 HNSW cannot remove), and the index can be rebuilt in any
method from them.

Score convention (``GallerySearchResult.scores``, higher is better):
- ``IP``: the inner product, i.e. the cosine for L2-normalised embeddings;
- ``L2``: ``1 - squared_l2 / 2``, which equals the cosine for unit vectors,
so one ``score_thres`` means the same for both dist types. A missing hit (id -1) scores ``-inf``.
Embeddings are stored as given: normalising them is the recognizer's job.

A ``GalleryIndex`` is not thread-safe: mutate it in one place, save it, and let readers load the new version.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import pickle
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import faiss
import numpy as np

from models.errors import GalleryError
from models.gallery_file import show_delimiter

INDEX_METHODS = ("Flat", "IVF", "HNSW32")
_METRICS = {"IP": faiss.METRIC_INNER_PRODUCT, "L2": faiss.METRIC_L2}

VECTOR_INDEX = "vector.index"
ID_MAP = "id_map.pkl"
EMBEDDINGS = "embeddings.npy"
IDS = "ids.npy"
LABELS = "labels.json"
META = "meta.json"
_PADDLE_FILES = (VECTOR_INDEX, ID_MAP)
_VIDREC_FILES = (EMBEDDINGS, IDS, LABELS, META)
_FORMAT = "vidrec-gallery"
_FORMAT_VERSION = 1

# Search-time knobs, stored inside vector.index so PaddleClas searches with them too. faiss defaults
# (nprobe 1, efSearch 16) lose near neighbours in exactly the small galleries PP-ShiTu builds.
_IVF_MAX_NPROBE = 32
_HNSW_EF_SEARCH = 64


@dataclass(frozen=True)
class GallerySearchResult:
    ids: np.ndarray  # (m, k) int64; -1 where the gallery has fewer than k entries
    scores: np.ndarray  # (m, k) float32, higher is better (see module docstring); -inf where id is -1
    labels: list[list[str | None]]  # None where id is -1


class GalleryIndex:
    """Build with ``GalleryIndex.build`` or ``GalleryIndex.load``; ids are stable and never reused."""

    def __init__(
        self,
        *,
        index: faiss.Index,
        ids: np.ndarray,
        embeddings: np.ndarray | None,
        documents: list[str],
        labels: list[str],
        index_method: str,
        dist_type: str,
        embedding_size: int,
        version: int,
        next_id: int,
        recognizer: str | None = None,
        from_paddle: bool = False,
    ) -> None:
        self._index = index
        # Which recognizer made the embeddings (meta.json "recognizer"; None: a PaddleClas directory, or a
        # vidrec gallery saved before this was recorded). See ``recognizer_mismatch``.
        self.recognizer = recognizer
        self.from_paddle = from_paddle
        self._ids = ids
        self._embeddings = embeddings  # None: read-only (vectors not exactly reconstructable from the index)
        self._documents = documents
        self._labels = labels
        self._index_method = index_method
        self._dist_type = dist_type
        self._d = embedding_size
        self._version = version
        self._next_id = next_id
        self._pos = {int(i): row for row, i in enumerate(ids.tolist())}

    # ---- construction -------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        documents: Sequence[str],
        labels: Sequence[str],
        *,
        index_method: str = "Flat",
        dist_type: str = "IP",
        version: int = 1,
        recognizer: str | None = None,
    ) -> GalleryIndex:
        """A new gallery with ids 0..n-1, at ``version`` (1, or the replaced gallery's version + 1), made by
        the recognizer ``recognizer`` (its identity, saved in meta.json)."""
        metric = _metric(dist_type)
        _check_method(index_method)
        x = _as_matrix(embeddings, what="embeddings")
        docs, labs = _check_texts(documents, labels, len(x))
        ids = np.arange(len(x), dtype=np.int64)
        index = _filled(_new_inner(index_method, metric, x.shape[1], len(x)), x, ids)
        return cls(
            index=index, ids=ids, embeddings=x, documents=docs, labels=labs, index_method=index_method,
            dist_type=dist_type, embedding_size=x.shape[1], version=version, next_id=len(x), recognizer=recognizer,
        )

    @staticmethod
    def stored_version(index_dir: Path) -> int | None:
        """The version of the vidrec gallery saved in ``index_dir`` (None if there is none), without loading it."""
        try:
            return int(json.loads((Path(index_dir) / META).read_text(encoding="utf-8"))["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # ---- properties ---------------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self._ids)

    @property
    def embedding_size(self) -> int:
        return self._d

    @property
    def version(self) -> int:
        return self._version

    @property
    def index_method(self) -> str:
        return self._index_method

    @property
    def dist_type(self) -> str:
        return self._dist_type

    @property
    def read_only(self) -> bool:
        return self._embeddings is None

    @property
    def ids(self) -> np.ndarray:
        return self._ids.copy()

    @property
    def labels(self) -> frozenset[str]:
        """The distinct labels it holds."""
        return frozenset(self._labels)

    def entries(self) -> list[tuple[int, str, str]]:
        """(id, label, stored line) of every entry, in index order."""
        return list(zip(self._ids.tolist(), self._labels, self._documents))

    def ids_for_documents(self, documents: Sequence[str]) -> np.ndarray:
        """Ids whose stored line is one of ``documents`` (PP-ShiTu's ``remove``: by the data_file's lines)."""
        wanted = {d.strip() for d in documents}
        return np.array([i for i, d in zip(self._ids.tolist(), self._documents) if d in wanted], dtype=np.int64)

    # ---- changes ------------------------------------------------------------------------------------------

    def add(self, embeddings: np.ndarray, documents: Sequence[str], labels: Sequence[str]) -> np.ndarray:
        """Add entries; their ids continue from the largest id ever given + 1. Returns the new ids."""
        self._require_writable("add to")
        x = _as_matrix(embeddings, what="embeddings", d=self._d)
        docs, labs = _check_texts(documents, labels, len(x))
        if not len(x):
            return np.empty(0, dtype=np.int64)
        new_ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
        all_x = np.concatenate([self._embeddings, x])
        all_ids = np.concatenate([self._ids, new_ids])
        if _inner(self._index).is_trained:
            self._index.add_with_ids(x, new_ids)
        else:
            # An IVF gallery built empty has nothing to train on until now.
            metric = _METRICS[self._dist_type]
            self._index = _filled(_new_inner(self._index_method, metric, self._d, len(all_x)), all_x, all_ids)
        self._embeddings, self._ids = all_x, all_ids
        self._documents += docs
        self._labels += labs
        self._pos.update({int(i): self.size - len(x) + row for row, i in enumerate(new_ids.tolist())})
        self._next_id += len(x)
        self._version += 1
        return new_ids

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Remove these ids (all must exist, else nothing changes). Returns how many were removed."""
        self._require_writable("remove from")
        wanted = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        if not len(wanted):
            return 0
        unknown = [int(i) for i in wanted if int(i) not in self._pos]
        if unknown:
            raise GalleryError(f"gallery has no id {', '.join(map(str, unknown[:10]))}" + (" ..." if len(unknown) > 10 else ""))
        keep = ~np.isin(self._ids, wanted)
        if self._index_method == "Flat":
            self._index.remove_ids(wanted)
        else:
            # HNSW cannot remove at all, and IndexIDMap2.remove_ids assumes the inner index renumbers like a
            # flat index: around an IVF it silently shifts the ids of later entries (faiss 1.15). So both are
            # rebuilt from the stored embeddings, an IVF keeping its trained centroids.
            self._index = _filled(_empty_like(_inner(self._index), self._d), self._embeddings[keep], self._ids[keep])
        self._embeddings = self._embeddings[keep]
        self._ids = self._ids[keep]
        rows = np.flatnonzero(keep).tolist()
        self._documents = [self._documents[r] for r in rows]
        self._labels = [self._labels[r] for r in rows]
        self._pos = {int(i): row for row, i in enumerate(self._ids.tolist())}
        self._version += 1
        return len(wanted)

    def rebuild(self, *, index_method: str | None = None) -> None:
        """Re-index the stored embeddings from scratch (retraining IVF for the current size), ids unchanged."""
        self._require_writable("rebuild")
        method = self._index_method if index_method is None else index_method
        _check_method(method)
        metric = _METRICS[self._dist_type]
        self._index = _filled(_new_inner(method, metric, self._d, self.size), self._embeddings, self._ids)
        self._index_method = method
        self._version += 1

    # ---- search -------------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> GallerySearchResult:
        """The k best entries for each query row, in one faiss call for the whole batch."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise GalleryError(f"return_k must be a positive integer, got {k!r}")
        q = _as_matrix(queries, what="queries", d=self._d, allow_vector=True)
        if self.size == 0 or len(q) == 0:
            ids = np.full((len(q), k), -1, dtype=np.int64)
            distances = np.zeros((len(q), k), dtype=np.float32)
        else:
            with _search_threads(_threads_for(len(q), self.size)):
                distances, ids = self._index.search(q, int(k))
        if self._dist_type == "L2":
            scores = (1.0 - distances / 2.0).astype(np.float32)
        else:
            scores = distances.astype(np.float32, copy=True)
        scores[ids < 0] = -np.inf
        labels = [[self._labels[self._pos[i]] if i >= 0 else None for i in row] for row in ids.tolist()]
        return GallerySearchResult(ids=ids.astype(np.int64, copy=False), scores=scores, labels=labels)

    # ---- persistence --------------------------------------------------------------------------------------

    def save(self, index_dir: Path) -> None:
        """Write the gallery to ``index_dir`` atomically: readers see the old directory or the new, never a mix.

        Layout: PP-ShiTu's ``vector.index`` (an IndexIDMap2, readable by ``faiss.read_index``) and
        ``id_map.pkl`` ({id: original line}), plus vidrec's ``embeddings.npy``, ``ids.npy``, ``labels.json``
        (row-aligned) and ``meta.json``. A read-only gallery writes only PP-ShiTu's two files.
        """
        index_dir = Path(index_dir)
        id_map = {int(i): d for i, d in zip(self._ids.tolist(), self._documents)}
        serialised = faiss.serialize_index(self._index)
        files: list[tuple[str, Callable[[BinaryIO], object]]] = [
            (VECTOR_INDEX, lambda f: f.write(memoryview(serialised))),
            # Protocol 4: readable by every Python that PaddleClas supports.
            (ID_MAP, lambda f: pickle.dump(id_map, f, protocol=4)),
        ]
        if not self.read_only:
            meta = {
                "format": _FORMAT, "format_version": _FORMAT_VERSION, "version": self._version,
                "index_method": self._index_method, "dist_type": self._dist_type,
                "embedding_size": self._d, "count": self.size, "next_id": self._next_id,
            }
            if self.recognizer is not None:
                meta["recognizer"] = self.recognizer
            files += [
                (EMBEDDINGS, lambda f: np.save(f, self._embeddings, allow_pickle=False)),
                (IDS, lambda f: np.save(f, self._ids, allow_pickle=False)),
                (LABELS, lambda f: f.write(json.dumps(self._labels, ensure_ascii=False).encode("utf-8"))),
                (META, lambda f: f.write(json.dumps(meta, indent=2).encode("utf-8"))),
            ]
        _replace_dir_atomically(index_dir, files)

    @classmethod
    def load(cls, index_dir: Path, *, delimiter: str = "\t") -> GalleryIndex:
        """Load a directory saved by ``save``, or one written by PaddleClas's build_gallery.py.

        For a PaddleClas directory (only vector.index + id_map.pkl) the embeddings are reconstructed from the
        index where that is exact (Flat, IVF-Flat, HNSW-Flat); any other index type loads read-only (search
        works, add/remove raise). Labels are taken from each line: the text after the first ``delimiter``.
        ``id_map.pkl`` is unpickled with only ints and strings allowed, not arbitrary objects.
        """
        index_dir = Path(index_dir)
        handles = _open_snapshot(index_dir)
        try:
            index = _read_index(index_dir, handles[VECTOR_INDEX])
            id_map = _read_id_map(index_dir / ID_MAP, handles[ID_MAP])
            if META in handles:
                return cls._from_vidrec(index_dir, index, id_map, handles)
            return cls._from_paddle(index_dir, index, id_map, delimiter)
        finally:
            for handle in handles.values():
                handle.close()

    @classmethod
    def _from_vidrec(
        cls, index_dir: Path, index: faiss.Index, id_map: dict[int, str], handles: dict[str, BinaryIO]
    ) -> GalleryIndex:
        meta = _read_json(index_dir / META, handles[META])
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise GalleryError(f"{index_dir / META}: not a vidrec gallery meta file (format != {_FORMAT!r})")
        if meta.get("format_version") != _FORMAT_VERSION:
            raise GalleryError(f"{index_dir / META}: format_version {meta.get('format_version')!r} is not {_FORMAT_VERSION}")
        for key in ("version", "index_method", "dist_type", "embedding_size", "count", "next_id"):
            if key not in meta:
                raise GalleryError(f"{index_dir / META}: missing key {key!r}")
        dist_type, method = meta["dist_type"], meta["index_method"]
        _metric(dist_type, where=f"{index_dir / META}: ")
        _check_method(method, where=f"{index_dir / META}: ")
        embeddings = _read_npy(index_dir / EMBEDDINGS, handles[EMBEDDINGS])
        ids = _read_npy(index_dir / IDS, handles[IDS])
        labels = _read_json(index_dir / LABELS, handles[LABELS])
        d, count = meta["embedding_size"], meta["count"]
        if embeddings.dtype != np.float32 or embeddings.shape != (count, d):
            raise GalleryError(f"{index_dir / EMBEDDINGS}: expected float32 ({count}, {d}), found {embeddings.dtype} {embeddings.shape}")
        if ids.dtype != np.int64 or ids.shape != (count,) or len(np.unique(ids)) != count:
            raise GalleryError(f"{index_dir / IDS}: expected {count} distinct int64 ids, found {ids.dtype} {ids.shape}")
        if not isinstance(labels, list) or len(labels) != count or not all(isinstance(s, str) for s in labels):
            raise GalleryError(f"{index_dir / LABELS}: expected a list of {count} strings")
        if index.d != d or _metric_name(index) != dist_type:
            raise GalleryError(f"{index_dir / VECTOR_INDEX}: dimension {index.d} / metric {_metric_name(index)} does not match meta.json ({d} / {dist_type})")
        index_ids = faiss.vector_to_array(index.id_map)
        if index.ntotal != count or not np.array_equal(np.sort(index_ids), np.sort(ids)):
            raise GalleryError(
                f"{index_dir / VECTOR_INDEX}: its ids no longer match {IDS} (changed by another tool, such as "
                f"PaddleClas's build_gallery.py append/remove?); remove vidrec's files to load it as a PaddleClas index"
            )
        missing = [i for i in ids.tolist() if i not in id_map]
        if missing:
            raise GalleryError(f"{index_dir / ID_MAP}: no line for id {missing[0]}")
        return cls(
            index=index, ids=ids, embeddings=embeddings, documents=[id_map[i] for i in ids.tolist()],
            labels=labels, index_method=method, dist_type=dist_type, embedding_size=d,
            version=int(meta["version"]), next_id=int(meta["next_id"]),
            recognizer=meta["recognizer"] if isinstance(meta.get("recognizer"), str) else None,
        )

    @classmethod
    def _from_paddle(cls, index_dir: Path, index: faiss.Index, id_map: dict[int, str], delimiter: str) -> GalleryIndex:
        dist_type = _metric_name(index)
        if dist_type is None:
            raise GalleryError(f"{index_dir / VECTOR_INDEX}: metric {index.metric_type} is neither IP nor L2")
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        documents = []
        for i in ids.tolist():
            if i not in id_map:
                raise GalleryError(f"{index_dir / ID_MAP}: no line for id {i}, which vector.index holds")
            documents.append(id_map[i])
        labels = [_label_of(doc, delimiter, where=f"{index_dir / ID_MAP}: id {i}") for i, doc in zip(ids.tolist(), documents)]
        inner = _inner(index)
        method = _method_of(inner)
        embeddings = _reconstruct_exact(inner) if method is not None else None
        return cls(
            index=index, ids=ids, embeddings=embeddings, documents=documents, labels=labels,
            index_method=method or type(inner).__name__, dist_type=dist_type, embedding_size=index.d,
            version=1, next_id=int(ids.max()) + 1 if len(ids) else 0, from_paddle=True,
        )

    def _require_writable(self, action: str) -> None:
        if self.read_only:
            raise GalleryError(
                f"cannot {action} this gallery: its vector.index ({self._index_method}) cannot give back the exact "
                f"embeddings, so it is read-only; rebuild it from the images with index_method Flat, IVF or HNSW32"
            )


# ---- faiss helpers -----------------------------------------------------------------------------------------


# faiss searches with OpenMP threads. For a small search, starting them costs more than the search: measured on 2
# cores, one query against 3 entries took 0.58 ms with 2 threads and 0.02 ms with one, and 7 ms inside `vidrec
# video`, whose ONNX Runtime threads hold the same cores; one query against 50,000 entries took 33 ms with 2 threads
# and 29 ms with one. Threads pay only when a batch of queries meets a large gallery (8 against 50,000: 119 ms
# with 2, 244 ms with one).
_SMALL_SEARCH = 100_000  # queries × entries under which one thread searches


def recognizer_mismatch(gallery: GalleryIndex, identity: str | None, *, where: Path | str) -> str | None:
    """Why ``gallery`` must not be searched with (or added to by) the recognizer ``identity``, in one line;
    None when it may. Embeddings of two recognizers are not comparable, and mixing them fails silently (wrong
    names at plausible scores), so: a vidrec gallery must record the same identity; one that records none was
    built before vidrec recorded it and is refused too. A PaddleClas directory (no meta.json) records nothing
    and is taken as it is, as PP-ShiTu takes it. ``identity`` None (a recognizer of unknown make) checks nothing."""
    if identity is None or gallery.from_paddle or gallery.recognizer == identity:
        return None
    made = (f"by the recognizer {gallery.recognizer!r}" if gallery.recognizer is not None
            else "by an earlier vidrec, which did not record its recognizer")
    return (f"gallery {where} was built {made}, not by the configured recognizer {identity!r}: its embeddings "
            f"are not comparable; rebuild it with `vidrec gallery build` (or configure the recognizer it was built with)")


def _threads_for(queries: int, entries: int) -> int:
    """How many OpenMP threads a search of ``queries`` rows against ``entries`` entries should use (0: faiss's)."""
    return 1 if queries <= 1 or queries * entries < _SMALL_SEARCH else 0


@contextlib.contextmanager
def _search_threads(n: int) -> Iterator[None]:
    """Run a faiss call with ``n`` OpenMP threads (0: leave faiss's default), restoring the setting after it."""
    if not n:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _metric(dist_type: str, *, where: str = "") -> int:
    if dist_type not in _METRICS:
        raise GalleryError(f"{where}dist_type {dist_type!r} is not one of IP | L2 (hamming is not supported)")
    return _METRICS[dist_type]


def _check_method(method: str, *, where: str = "") -> None:
    # HNSW with another M than 32 only arrives in a PaddleClas-made vector.index; keep it as it is.
    if method not in INDEX_METHODS and not re.fullmatch(r"HNSW[1-9][0-9]*", str(method)):
        raise GalleryError(f"{where}index_method {method!r} is not one of {' | '.join(INDEX_METHODS)}")


def _metric_name(index: faiss.Index) -> str | None:
    return {v: k for k, v in _METRICS.items()}.get(index.metric_type)


def _inner(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.index)


def _new_inner(method: str, metric: int, d: int, n: int) -> faiss.Index:
    """An empty inner index as PaddleClas makes it (index_factory), with better search-time settings."""
    if method == "IVF":
        # PaddleClas's nlist, floored at 1 so that a gallery of under 8 images still trains.
        nlist = max(1, min(n // 8, 65536))
        inner = faiss.index_factory(d, f"IVF{nlist},Flat", metric)
        inner.nprobe = min(nlist, _IVF_MAX_NPROBE)
        # n // 8 points per list is below faiss's 39-per-centroid advice by design; don't print a warning.
        inner.cp.min_points_per_centroid = 1
        return inner
    inner = faiss.index_factory(d, method, metric)
    if method.startswith("HNSW"):
        inner.hnsw.efSearch = _HNSW_EF_SEARCH
    return inner


def _empty_like(inner: faiss.Index, d: int) -> faiss.Index:
    """An empty index of the same kind and settings, trained already where training is needed."""
    if isinstance(inner, faiss.IndexIVF):
        fresh = faiss.IndexIVFFlat(faiss.clone_index(inner.quantizer), d, inner.nlist, inner.metric_type)
        fresh.nprobe = inner.nprobe
        return fresh
    if isinstance(inner, faiss.IndexHNSW):
        fresh = faiss.IndexHNSWFlat(d, inner.hnsw.nb_neighbors(1), inner.metric_type)
        fresh.hnsw.efConstruction = inner.hnsw.efConstruction
        fresh.hnsw.efSearch = inner.hnsw.efSearch
        return fresh
    return faiss.IndexFlat(d, inner.metric_type)


def _filled(inner: faiss.Index, embeddings: np.ndarray, ids: np.ndarray) -> faiss.IndexIDMap2:
    """``inner`` trained (if it needs it and there is data) and filled, wrapped as PaddleClas does."""
    if not inner.is_trained and len(embeddings):
        inner.train(embeddings)
    index = faiss.IndexIDMap2(inner)
    if len(embeddings):
        index.add_with_ids(embeddings, ids)
    return index


def _method_of(inner: faiss.Index) -> str | None:
    """vidrec's name for an index whose vectors come back exactly; None for lossy or unknown types."""
    if isinstance(inner, faiss.IndexFlat):
        return "Flat"
    if type(inner) is faiss.IndexIVFFlat:
        return "IVF"
    if isinstance(inner, faiss.IndexHNSWFlat):
        return f"HNSW{inner.hnsw.nb_neighbors(1)}"
    return None


def _reconstruct_exact(inner: faiss.Index) -> np.ndarray:
    if isinstance(inner, faiss.IndexIVF):
        inner.make_direct_map()  # IVF can only reconstruct by id with a direct map
    if inner.ntotal == 0:
        return np.empty((0, inner.d), dtype=np.float32)
    return np.ascontiguousarray(inner.reconstruct_n(0, inner.ntotal), dtype=np.float32)


def _as_matrix(array: np.ndarray, *, what: str, d: int | None = None, allow_vector: bool = False) -> np.ndarray:
    x = np.asarray(array)
    if allow_vector and x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise GalleryError(f"{what} must be a 2-D array (n, embedding_size), got shape {x.shape}")
    if d is not None and x.shape[1] != d:
        raise GalleryError(f"{what} have dimension {x.shape[1]}, but the gallery's embedding_size is {d}")
    if x.shape[1] < 1:
        raise GalleryError(f"{what} have dimension 0")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
        raise GalleryError(f"{what} row {bad[0]} contains NaN or inf")
    return x


def _check_texts(documents: Sequence[str], labels: Sequence[str], n: int) -> tuple[list[str], list[str]]:
    docs, labs = list(documents), list(labels)
    if len(docs) != n or len(labs) != n:
        raise GalleryError(f"got {n} embeddings, {len(docs)} documents and {len(labs)} labels; they must match")
    for name, texts in (("document", docs), ("label", labs)):
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise GalleryError(f"{name} {row} is a {type(text).__name__}, not a string")
    return docs, labs


def _label_of(document: str, delimiter: str, *, where: str) -> str:
    if delimiter not in document:
        raise GalleryError(f"{where}: line {document!r} has no {show_delimiter(delimiter)!r} (built with another delimiter?)")
    return document.split(delimiter, 1)[1].strip()


# ---- reading -----------------------------------------------------------------------------------------------


def _open_snapshot(index_dir: Path) -> dict[str, BinaryIO]:
    """Open every file of one directory generation before reading any.

    The files are opened relative to one directory handle, so a save that swaps the directory meanwhile cannot
    mix old and new files; if it deletes the old generation mid-open, start again.
    """
    for _ in range(10):
        if not index_dir.is_dir():
            leftovers = sorted(index_dir.parent.glob(f".{index_dir.name}.old-*")) if index_dir.parent.is_dir() else []
            hint = f" (an interrupted save left the previous index at {leftovers[-1]})" if leftovers else ""
            raise GalleryError(f"{index_dir}: gallery index directory not found{hint}")
        dir_fd = os.open(index_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            present = set(os.listdir(dir_fd))
            required = _PADDLE_FILES + (_VIDREC_FILES if META in present else ())
            missing = [name for name in required if name not in present]
            if missing:
                if _replaced(index_dir, dir_fd):
                    continue  # we were listing the previous generation while a save deleted it
                raise GalleryError(f"{index_dir}: missing {', '.join(missing)}")
            handles: dict[str, BinaryIO] = {}
            try:
                for name in required:
                    handles[name] = os.fdopen(os.open(name, os.O_RDONLY, dir_fd=dir_fd), "rb")
            except FileNotFoundError:
                for handle in handles.values():
                    handle.close()
                continue
            return handles
        finally:
            os.close(dir_fd)
    raise GalleryError(f"{index_dir}: kept changing while being loaded")


def _replaced(index_dir: Path, dir_fd: int) -> bool:
    try:
        now = os.stat(index_dir)
    except FileNotFoundError:
        return True
    then = os.fstat(dir_fd)
    return (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino)


def _read_index(index_dir: Path, handle: BinaryIO) -> faiss.Index:
    path = index_dir / VECTOR_INDEX
    try:
        index = faiss.deserialize_index(np.frombuffer(handle.read(), dtype=np.uint8))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise GalleryError(f"{path}: not a faiss index (binary/hamming indexes are not supported): {first}") from None
    # deserialize_index already returns the concrete type; downcasting again would make a second wrapper of
    # the same pointer, and the owning one, once collected, frees the index under it.
    if not isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        raise GalleryError(f"{path}: holds a {type(index).__name__} without an id map; PP-ShiTu writes an IndexIDMap2")
    return index


class _IdMapUnpickler(pickle.Unpickler):
    """Unpickles {int: str}, where the ints may be numpy int64 (PaddleClas's own keys), and nothing else."""

    _ALLOWED = {("numpy", "dtype"), ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_id_map(path: Path, handle: BinaryIO) -> dict[int, str]:
    try:
        raw = _IdMapUnpickler(handle).load()
    except Exception as exc:  # a corrupt pickle can raise nearly anything
        raise GalleryError(f"{path}: not a pickled {{id: line}} map ({exc})") from None
    if not isinstance(raw, dict):
        raise GalleryError(f"{path}: expected a dict of id -> line, found {type(raw).__name__}")
    id_map: dict[int, str] = {}
    for key, value in raw.items():
        if not isinstance(key, (int, np.integer)) or not isinstance(value, str):
            raise GalleryError(f"{path}: entry {key!r}: expected an integer id and a string line")
        id_map[int(key)] = value
    return id_map


def _read_npy(path: Path, handle: BinaryIO) -> np.ndarray:
    try:
        return np.load(handle, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise GalleryError(f"{path}: not a readable .npy array ({exc})") from None


def _read_json(path: Path, handle: BinaryIO) -> object:
    try:
        return json.loads(handle.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise GalleryError(f"{path}: not valid JSON ({exc})") from None


# ---- atomic directory replacement --------------------------------------------------------------------------


def _replace_dir_atomically(index_dir: Path, files: list[tuple[str, Callable[[BinaryIO], object]]]) -> None:
    """Write ``files`` into a fresh sibling directory, fsync it, then swap it into place."""
    if index_dir.exists() and not index_dir.is_dir():
        raise GalleryError(f"{index_dir}: exists and is not a directory")
    if index_dir.is_dir():
        # Replacing a directory deletes what was in it: only ever do that to a gallery.
        strangers = sorted(p.name for p in index_dir.iterdir() if p.name not in _PADDLE_FILES + _VIDREC_FILES)
        if strangers:
            raise GalleryError(f"{index_dir}: refusing to replace it, it holds {', '.join(strangers[:5])} besides gallery files")
    parent = index_dir.parent
    token = uuid.uuid4().hex[:12]
    tmp = parent / f".{index_dir.name}.tmp-{token}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        for name, write in files:
            with open(tmp / name, "xb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
        _fsync_dir(tmp)
        if not index_dir.is_dir():
            os.rename(tmp, index_dir)
        elif _exchange(tmp, index_dir):
            _fsync_dir(parent)
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous generation
        else:
            # No atomic exchange here: two renames. A crash between them leaves the previous generation,
            # complete, at .<name>.old-* (load names it).
            old = parent / f".{index_dir.name}.old-{token}"
            os.rename(index_dir, old)
            try:
                os.rename(tmp, index_dir)
            except OSError:
                os.rename(old, index_dir)
                raise
            _fsync_dir(parent)
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(parent)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise GalleryError(f"{index_dir}: cannot save gallery ({exc.strerror or exc})") from None
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2() -> Callable[..., int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))
