"""The gallery routes of `vidrec serve`'s HTTP API: what the gallery holds, add images, remove entries.

``GalleryService`` is called from the HTTP thread(s) of the supervisor, which loads no model. Every method
returns a JSON-able dict or raises a ``workers.service_errors.RequestRefused`` (one line); changes run one at a time (a lock here,
and the gallery's lock file against `vidrec gallery` commands run beside the service).

    info()        200 {"index_dir", "version", "entries", "labels": {label: count}}
    entries()     200 {"index_dir", "version", "entries": [{"id", "label", "path"}, ...]}  (offset/limit)
    add(body)     201 {"added", "version", "entries"}
                  body {"items": [{"path", "label"}, ...]} or one {"path", "label"}
    remove(body)  200 {"removed", "version", "entries"}
                  body {"labels": [...]} (every entry with one of these labels) or {"paths": [...]}

The body becomes gallery items (``models/gallery_file.GalleryItem``) handed to the same changes as `vidrec
gallery` (``models/gallery_changes.py``); an error about item ``i`` comes back as ``items[i]``. ``add`` embeds
the images with the recognizer in a child process (the context passed in: the service uses 'spawn'), so that
the supervisor loads no model and a recognizer that crashes or hangs costs a 500 or a 504, never the service;
the child gets the items pickled and runs ``append_items``, which saves the new version atomically like any
append, and the running inference worker's GalleryWatcher picks it up. ``remove`` needs no model and runs
``remove_items`` here, on the selected entries.

Path confinement: an image path is taken relative to the allowed root (``Service.gallery_image_root``, null:
``IndexProcess.image_root``) and must still be inside it once symlinks and ``..`` are resolved; an absolute
path is accepted only when it lies inside the root too. The entry stores the resolved path relative to
``IndexProcess.image_root`` when the allowed root is inside it (as `vidrec gallery build` stores data_file
paths), else relative to the allowed root; the child reads it relative to that base, so a message names the
image as stored, never the server's folders. Whoever can write into the root is trusted: a file swapped for a
symlink between the check and the child's read is not caught.

Statuses: 400 a malformed body (unknown key, wrong type, bad path or label, a file that is missing, outside
the root or not an image); 404 no gallery configured, or a label/path to remove that is not in it; 409 an
entry already in the gallery, or a gallery that cannot change (read-only); 500 the append process failed
(its one-line error) or the gallery cannot be read; 503 another change is in progress; 504 the append took
longer than ``timeout_s`` (the child is stopped; a change saves atomically, so the gallery is the old one or
the new one).
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import posixpath
import re
import signal
import stat
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from config import ConfigError, VidrecConfig
from models.errors import GalleryError, ModelError
from models.gallery import GalleryIndex
from models.gallery_changes import GalleryItemError, GallerySettings, append_items, remove_items, stored_keys
from models.gallery_file import GalleryItem, line_key
from workers.gallery_job import gallery_settings
from workers.service_errors import Conflict, Failed, Invalid, NotFound, TimedOut, Unavailable

log = logging.getLogger(__name__)

MAX_ITEMS = 1000
MAX_LABEL_CHARS = 256
MAX_PATH_CHARS = 4096
DEFAULT_TIMEOUT_S = 300.0
BUSY_WAIT_S = 2.0

# File signatures of the formats OpenCV's imread decodes (the child decodes; this refuses obvious non-images).
_SIGNATURES: tuple[tuple[int, bytes], ...] = (
    (0, b"\xff\xd8\xff"),  # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),  # PNG
    (0, b"BM"),  # BMP
    (0, b"II*\x00"), (0, b"MM\x00*"),  # TIFF
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n"), (0, b"\xff\x4f\xff\x51"),  # JPEG 2000
    (0, b"P1"), (0, b"P2"), (0, b"P3"), (0, b"P4"), (0, b"P5"), (0, b"P6"),  # PNM
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class GalleryService:
    """Thread-safe gallery view and changes for the HTTP API (see the module docstring)."""

    def __init__(
        self,
        cfg: VidrecConfig,
        *,
        mp_context: Any = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_items: int = MAX_ITEMS,
        busy_wait_s: float = BUSY_WAIT_S,
    ) -> None:
        self.cfg = cfg
        self._ctx = mp_context if mp_context is not None else mp.get_context("spawn")
        self.timeout_s = float(timeout_s)
        self.max_items = int(max_items)
        self.busy_wait_s = float(busy_wait_s)
        self._lock = threading.Lock()

    # ---- reading -------------------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        gallery, index_dir = self._load()
        labels = Counter(label for _, label, _ in gallery.entries())
        return {
            "index_dir": str(index_dir),
            "version": gallery.version,
            "entries": gallery.size,
            "labels": dict(sorted(labels.items())),
        }

    def entries(self, *, offset: int = 0, limit: int = MAX_ITEMS) -> dict[str, Any]:
        """Entries by id (``vidrec gallery list``), ``limit`` of them from ``offset``."""
        if offset < 0 or limit < 1 or limit > MAX_ITEMS:
            raise Invalid(f"offset must be >= 0 and limit 1..{MAX_ITEMS}")
        gallery, index_dir = self._load()
        delimiter = self.cfg.IndexProcess.delimiter
        rows = sorted(gallery.entries())
        return {
            "index_dir": str(index_dir),
            "version": gallery.version,
            "total": len(rows),
            "entries": [
                {"id": i, "label": label, "path": line_key(line, delimiter)[0]}
                for i, label, line in rows[offset : offset + limit]
            ],
        }

    # ---- changes -------------------------------------------------------------------------------------------

    def add(self, body: Any) -> dict[str, Any]:
        """Embed and add images (201). The whole request is checked before anything runs."""
        requested = self._add_items(body)
        with self._change():
            settings = self._settings()
            base, root = self._roots()
            delimiter = settings.delimiter
            items: list[GalleryItem] = []
            seen: dict[tuple[str, str | None], int] = {}
            for n, (path_text, label) in enumerate(requested):
                where = f"items[{n}].path" if isinstance(body, dict) and "items" in body else "path"
                resolved = _confined_image(path_text, root, where)
                relative = resolved.relative_to(base).as_posix()
                # The stored line must read back as this (path, label): what `vidrec gallery remove` names it by.
                if relative != relative.strip() or relative.startswith("#") or delimiter in relative:
                    raise Invalid(f"{where} {path_text!r}: a gallery image name may not start or end with a space, start with '#' "
                        f"or contain the data_file delimiter",
                    )
                item = GalleryItem(path=Path(relative), label=label, line=f"{relative}{delimiter}{label}")
                key = line_key(item.line, delimiter)
                if key in seen:
                    raise Invalid(f"{where} {path_text!r}: the same image and label as items[{seen[key]}]")
                seen[key] = n
                items.append(item)
            stored = stored_keys(self._load_at(settings.index_dir), delimiter)
            for key in seen:
                if key in stored:
                    raise Conflict(f"{key[0]!r} with label {key[1]!r} is already in the gallery (id {stored[key][0]})")
            result = self._run_append(items, dataclasses.replace(settings, image_root=base))
        log.info("gallery API: added %d entries; version %d, %d entries", result["added"], result["version"], result["entries"])
        return result

    def remove(self, body: Any) -> dict[str, Any]:
        """Remove every entry with one of the labels, or one of the image paths (200)."""
        kind, wanted = self._remove_selection(body)
        with self._change():
            settings = self._settings()
            gallery = self._load_at(settings.index_dir)
            by_value: dict[str, list[GalleryItem]] = {}
            for _, label, line in gallery.entries():
                path, _ = line_key(line, settings.delimiter)
                value = label if kind == "labels" else posixpath.normpath(path)
                by_value.setdefault(value, []).append(GalleryItem(path=Path(path), label=label, line=line))
            items: list[GalleryItem] = []
            for value in wanted:
                key = value if kind == "labels" else posixpath.normpath(value)
                found = by_value.get(key)
                if not found:
                    what = "label" if kind == "labels" else "image path"
                    raise NotFound(f"{what} {value!r} is not in the gallery; nothing removed")
                items.extend(found)
            try:
                summary = remove_items(list(dict.fromkeys(items)), settings)
            except GalleryItemError as exc:
                # Another process (`vidrec gallery remove`) took it meanwhile.
                raise Conflict(f"entry[{exc.index}]: {exc.reason}") from None
            except GalleryError as exc:
                raise Conflict(str(exc)) from None
        log.info("gallery API: removed %d entries; version %d, %d entries", summary.changed, summary.version, summary.entries)
        return {"removed": summary.changed, "version": summary.version, "entries": summary.entries}

    # ---- request bodies ------------------------------------------------------------------------------------

    def _add_items(self, body: Any) -> list[tuple[str, str]]:
        if not isinstance(body, dict):
            raise Invalid(f"body must be a JSON object, got {type(body).__name__}")
        if "items" in body:
            _no_unknown_keys(body, ("items",), "body", hint="items, or path and label")
            items = body["items"]
            if not isinstance(items, list):
                raise Invalid(f"items must be a list, got {type(items).__name__}")
            if not items:
                raise Invalid("items is empty")
            if len(items) > self.max_items:
                raise Invalid(f"items has {len(items)} entries; at most {self.max_items} per request")
            return [_item(item, f"items[{n}]") for n, item in enumerate(items)]
        _no_unknown_keys(body, ("path", "label"), "body", hint="items, or path and label")
        return [_item(body, "")]

    def _remove_selection(self, body: Any) -> tuple[str, list[str]]:
        if not isinstance(body, dict):
            raise Invalid(f"body must be a JSON object, got {type(body).__name__}")
        _no_unknown_keys(body, ("labels", "paths"), "body", hint="labels or paths")
        given = [key for key in ("labels", "paths") if key in body]
        if len(given) != 1:
            raise Invalid("body needs exactly one of labels, paths")
        kind = given[0]
        values = body[kind]
        if not isinstance(values, list):
            raise Invalid(f"{kind} must be a list of strings, got {type(values).__name__}")
        if not values:
            raise Invalid(f"{kind} is empty")
        if len(values) > self.max_items:
            raise Invalid(f"{kind} has {len(values)} entries; at most {self.max_items} per request")
        out = []
        for n, value in enumerate(values):
            where = f"{kind}[{n}]"
            if not isinstance(value, str):
                raise Invalid(f"{where} must be a string, got {type(value).__name__}")
            value = value.strip()
            if not value or _CONTROL.search(value):
                raise Invalid(f"{where} must be non-empty, without TAB, newline or control characters")
            out.append(value)
        return kind, out

    # ---- helpers -------------------------------------------------------------------------------------------

    def _index_dir(self) -> Path:
        index_dir = self.cfg.IndexProcess.index_dir
        if index_dir is None:
            raise NotFound("no gallery configured (IndexProcess.index_dir is not set)")
        return Path(index_dir)

    def _load(self) -> tuple[GalleryIndex, Path]:
        index_dir = self._index_dir()
        return self._load_at(index_dir), index_dir

    def _load_at(self, index_dir: Path) -> GalleryIndex:
        if not index_dir.exists():
            raise NotFound(f"no gallery at {index_dir} yet (make one with `vidrec gallery build`)")
        try:
            return GalleryIndex.load(index_dir, delimiter=self.cfg.IndexProcess.delimiter)
        except GalleryError as exc:
            raise Failed(str(exc)) from None

    def _roots(self) -> tuple[Path, Path]:
        """(base the stored paths are relative to, the allowed root), both resolved."""
        svc_root = self.cfg.Service.gallery_image_root
        image_root = self.cfg.IndexProcess.image_root
        setting = "Service.gallery_image_root" if svc_root is not None else "IndexProcess.image_root"
        try:
            root = Path(svc_root if svc_root is not None else image_root).resolve(strict=True)
        except (OSError, RuntimeError):
            root = None
        if root is None or not root.is_dir():
            raise Failed(f"{setting} {svc_root if svc_root is not None else image_root} is not a directory")
        try:
            base = Path(image_root).resolve(strict=True)
        except (OSError, RuntimeError):
            base = root
        return (base if root.is_relative_to(base) else root), root

    def _change(self) -> "_Held":
        if not self._lock.acquire(timeout=self.busy_wait_s):
            raise Unavailable("another gallery change is in progress; try again")
        return _Held(self._lock)

    def _settings(self) -> GallerySettings:
        return gallery_settings(self.cfg, self._index_dir())

    def _run_append(self, items: list[GalleryItem], settings: GallerySettings) -> dict[str, Any]:
        receiver, sender = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=append_main, args=(self.cfg, items, settings, sender, logging.getLogger().getEffectiveLevel()),
            name="vidrec-gallery-append", daemon=True,
        )
        process.start()
        sender.close()  # so that a child that dies without answering reads as EOF here
        answer: Any = None
        try:
            answer = _receive(receiver, process, self.timeout_s)
        finally:
            receiver.close()
            _reap(process, stop=answer in (None, "timeout"))
        if answer is None:
            raise Failed(f"gallery append process exited with code {process.exitcode} without an answer")
        if answer == "timeout":
            raise TimedOut(f"gallery append did not finish within {self.timeout_s:g} s and was stopped; the gallery keeps its "
                f"version unless the save was already under way (see the gallery's version)",
            )
        kind, payload = answer
        if kind == "ok":
            return payload
        if kind == "item":
            index, reason = payload
            raise Invalid(_first_line(f"items[{index}]: {reason}"))
        raise (Invalid if kind == "invalid" else Failed)(_first_line(payload))


class _Held:
    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


# ---- the append child process ------------------------------------------------------------------------------


def append_main(cfg: VidrecConfig, items: list[GalleryItem], settings: GallerySettings, conn: Any,
                log_level: int = logging.WARNING) -> None:
    """Entry point of the append child: ``append_items`` with the real recognizer; answers on ``conn``.

    Answers: ("ok", the API's body), ("item", (index, reason)) about one item, ("invalid", message) a gallery
    that refuses the change, ("error", message) anything else.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service's Ctrl-C is the supervisor's to handle
    logging.basicConfig(level=max(log_level, logging.WARNING), format="vidrec[gallery-append]: %(message)s", stream=sys.stderr, force=True)
    try:
        from workers.system import build_recognizer

        summary = append_items(items, build_recognizer(cfg), settings)
        answer: tuple[str, Any] = ("ok", {"added": summary.changed, "version": summary.version, "entries": summary.entries})
    except GalleryItemError as exc:
        answer = ("item", (exc.index, exc.reason))
    except GalleryError as exc:
        answer = ("invalid", str(exc))
    except (ConfigError, ModelError) as exc:
        answer = ("error", str(exc))
    except Exception as exc:  # noqa: BLE001 - reported to the API as a 500
        logging.getLogger(__name__).exception("gallery append failed")
        answer = ("error", f"gallery append failed: {type(exc).__name__}: {exc}")
    conn.send(answer)
    conn.close()


def _receive(receiver: Any, process: Any, timeout_s: float) -> Any:
    """The child's answer, None if it died without one, "timeout" when it took too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        if receiver.poll(min(remaining, 1.0)):
            try:
                return receiver.recv()
            except (EOFError, OSError):
                return None
        if not process.is_alive() and not receiver.poll(0):
            return None


def _reap(process: Any, *, stop: bool) -> None:
    """Wait for a child that answered (it is exiting); stop one that did not."""
    if not stop:
        process.join(10)
    if process.is_alive():
        process.terminate()
        process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)


# ---- checks ------------------------------------------------------------------------------------------------


def _no_unknown_keys(body: dict[str, Any], allowed: tuple[str, ...], where: str, *, hint: str) -> None:
    unknown = [key for key in body if key not in allowed]
    if unknown:
        prefix = "" if where == "body" else f"{where}: "
        raise Invalid(f"{prefix}unknown key {unknown[0]!r} (allowed: {hint})")


def _item(item: Any, where: str) -> tuple[str, str]:
    """(path text, stripped label) of one {"path", "label"} item."""
    if not isinstance(item, dict):
        raise Invalid(f"{where} must be an object with path and label, got {type(item).__name__}")
    if where:
        _no_unknown_keys(item, ("path", "label"), where, hint="path, label")
    dot = f"{where}." if where else ""
    for key in ("path", "label"):
        if key not in item:
            raise Invalid(f"missing key {dot}{key}")
        if not isinstance(item[key], str):
            raise Invalid(f"{dot}{key} must be a string, got {type(item[key]).__name__}")
    path, label = item["path"], item["label"].strip()
    if not path.strip() or len(path) > MAX_PATH_CHARS or _CONTROL.search(path):
        raise Invalid(f"{dot}path must be non-empty, at most {MAX_PATH_CHARS} characters, without TAB, newline or control characters")
    if not label:
        raise Invalid(f"{dot}label is empty")
    if len(label) > MAX_LABEL_CHARS or _CONTROL.search(label):
        raise Invalid(f"{dot}label must be at most {MAX_LABEL_CHARS} characters, without TAB, newline or control characters")
    return path, label


def _confined_image(path_text: str, root: Path, where: str) -> Path:
    """The resolved file ``path_text`` names under ``root``: inside it, a regular file, an image."""
    given = Path(path_text)
    candidate = given if given.is_absolute() else root / given
    try:
        # Not strict: where the file is missing, an outside path must still read "outside", never "missing".
        resolved = candidate.resolve(strict=False)
    except (OSError, RuntimeError):
        raise Invalid(f"{where} {path_text!r}: cannot be resolved (a symlink loop?)") from None
    if not resolved.is_relative_to(root):
        raise Invalid(f"{where} {path_text!r} is outside the gallery image root")
    try:
        info = os.stat(resolved)
    except OSError:
        raise Invalid(f"{where} {path_text!r}: no such file under the gallery image root") from None
    if not stat.S_ISREG(info.st_mode):
        raise Invalid(f"{where} {path_text!r} is not a regular file")
    try:
        with open(resolved, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise Invalid(f"{where} {path_text!r}: cannot read ({exc.strerror or exc})") from None
    if not any(head[offset : offset + len(magic)] == magic for offset, magic in _SIGNATURES) and not _is_webp(head):
        raise Invalid(f"{where} {path_text!r} is not an image (JPEG, PNG, BMP, WebP, TIFF, JPEG 2000 or PNM)")
    return resolved


def _is_webp(head: bytes) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _first_line(message: str) -> str:
    """A child's message as the one line an API error is."""
    return message.splitlines()[0] if message.strip() else "unknown error"
