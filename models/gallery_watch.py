"""Pick up a changed gallery directory without a restart (PaddleNLP#4112: PP-ShiTu needs one).

``GalleryWatcher.poll()`` is cheap enough to call between every batch: at most every ``interval_s`` it
stats the index directory and its files (no reads), and only when that signature changed does it load the
gallery. vidrec saves swap the whole directory in one step, so a load sees one complete version; a gallery
that does not load (corrupt, half written by another tool, the wrong embedding size) leaves the current one
in place and logs one warning naming the directory and the problem, until the directory changes again.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

from models.errors import GalleryError
from models.gallery import ID_MAP, META, VECTOR_INDEX, GalleryIndex, recognizer_mismatch

log = logging.getLogger(__name__)

_WATCHED = (META, VECTOR_INDEX, ID_MAP)
_Signature = tuple[tuple[int, int, int, int] | None, ...]


def _stat(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


class GalleryWatcher:
    """Watches ``index_dir`` for a new gallery version; not thread-safe (call ``poll`` from one loop)."""

    def __init__(
        self,
        index_dir: Path,
        *,
        current: GalleryIndex | None,
        delimiter: str = "\t",
        embedding_size: int | None = None,
        interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        recognizer: str | None = None,
    ) -> None:
        self.index_dir = Path(index_dir)
        self.delimiter = delimiter
        self.embedding_size = embedding_size
        self.recognizer = recognizer  # the running recognizer's identity: a gallery built by another is refused
        self.interval_s = interval_s
        self._clock = clock
        self._last_check: float | None = None
        self._missing_seen = False
        self.load_errors = 0  # changed galleries that could not be loaded (the previous one stayed)
        self.last_error: str | None = None  # why the newest change was refused; None once one loads
        self._signature: _Signature | None = self._current_signature()
        if current is not None and self._saved_version() not in (None, current.version):
            # Changed between the caller's load and now: load it on the first poll.
            self._signature = None

    def _current_signature(self) -> _Signature:
        return (_stat(self.index_dir), *(_stat(self.index_dir / name) for name in _WATCHED))

    def _saved_version(self) -> int | None:
        try:
            meta = json.loads((self.index_dir / META).read_text(encoding="utf-8"))
            return int(meta["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def poll(self) -> GalleryIndex | None:
        """A newly loaded gallery when index_dir changed since the last look and loads cleanly; else None."""
        now = self._clock()
        if self._last_check is not None and now - self._last_check < self.interval_s:
            return None
        self._last_check = now
        return self.check()

    def check(self) -> GalleryIndex | None:
        """``poll`` without the interval."""
        signature = self._current_signature()  # before loading: a change during the load is seen next time
        if signature == self._signature:
            return None
        if signature[0] is None and not self._missing_seen:
            # A directory swap without an atomic exchange leaves a moment with no directory: look again first.
            self._missing_seen = True
            return None
        self._missing_seen = False
        self._signature = signature
        # Whatever a bad directory makes the load raise (GalleryError for what it checks; faiss: RuntimeError;
        # numpy: ValueError; a huge file: MemoryError) must not stop a running job.
        try:
            gallery = GalleryIndex.load(self.index_dir, delimiter=self.delimiter)
            mismatch = recognizer_mismatch(gallery, self.recognizer, where=self.index_dir)
            if mismatch is not None:
                raise GalleryError(mismatch)
            if self.embedding_size is not None and gallery.embedding_size != self.embedding_size:
                raise GalleryError(
                    f"holds {gallery.embedding_size}-d embeddings, the recognizer makes {self.embedding_size}-d ones"
                )
        except (GalleryError, OSError, RuntimeError, ValueError, EOFError, MemoryError) as exc:
            problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not isinstance(exc, (GalleryError, OSError)):
                problem = f"{type(exc).__name__}: {problem}"
            log.warning("gallery %s changed but was not loaded, keeping the previous one: %s", self.index_dir, problem)
            self.load_errors += 1
            self.last_error = problem
            return None
        self.last_error = None
        log.info("gallery %s: version %d loaded (%d entries)", self.index_dir, gallery.version, gallery.size)
        return gallery
