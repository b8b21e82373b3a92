"""Gallery items and PP-ShiTu's ``data_file``: one ``relative/path<delimiter>label`` line per gallery image.

A ``GalleryItem`` is one image, its label and its line (the document stored for it); ``line_key`` is what
identifies an entry. ``read_data_file`` turns a data_file into items that remember their line numbers.

PaddleClas asserts "at least two fields" and nothing else (FAQ Q2.5.1); here every malformed line is a
``GalleryError`` naming the file and line, so a bad gallery fails before any image is embedded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.errors import GalleryError

# How a delimiter is shown in messages: a bare tab or space is invisible in a one-line error.
_SHOWN = {"\t": "<TAB>", " ": "<SPACE>"}


def show_delimiter(delimiter: str) -> str:
    return _SHOWN.get(delimiter, delimiter)


@dataclass(frozen=True)
class GalleryItem:
    """One gallery image: its file, its label, and ``line``, the ``path<delimiter>label`` text PP-ShiTu stores
    as the id's document (what ``line_key`` identifies the entry by)."""

    path: Path
    label: str
    line: str


@dataclass(frozen=True)
class GalleryEntry(GalleryItem):
    """A gallery item read from a data_file: ``line`` is the stripped original line, ``line_number`` where it is."""

    line_number: int


def line_key(line: str, delimiter: str) -> tuple[str, str | None]:
    """(image path, label) of a stored line, each stripped; (line, None) for a line without the delimiter.

    What identifies a gallery entry, so that "a.jpg<TAB>cat" and "a.jpg<TAB> cat" are the same one.
    """
    if delimiter not in line:
        return line.strip(), None
    path, label = line.split(delimiter, 1)
    return path.strip(), label.strip()


def read_data_file(
    data_file: Path,
    image_root: Path,
    delimiter: str = "\t",
    *,
    check_images: bool = True,
) -> list[GalleryEntry]:
    """Parse ``data_file``; paths are joined to ``image_root``. Blank lines and ``#`` comments are skipped.

    The label is everything after the first delimiter, stripped. PP-ShiTu takes the second
    whitespace-separated field instead, which cuts "red car" to "red"; labels with spaces survive here.
    """
    data_file = Path(data_file)
    image_root = Path(image_root)
    if not delimiter:
        raise GalleryError(f"{data_file}: delimiter must not be empty")
    if not data_file.is_file():
        raise GalleryError(f"{data_file}: data file not found")
    if check_images and not image_root.is_dir():
        raise GalleryError(f"{data_file}: image_root {image_root} is not a directory")
    try:
        # utf-8-sig: a file saved by a Windows editor starts with a BOM that would stick to the first path.
        text = data_file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line_number = exc.object[: exc.start].count(b"\n") + 1
        raise GalleryError(f"{data_file}:{line_number}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise GalleryError(f"{data_file}: cannot read data file ({exc.strerror})") from None

    shown = show_delimiter(delimiter)
    entries: list[GalleryEntry] = []
    for line_number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{data_file}:{line_number}"
        # Leading whitespace is indentation, never part of a path; trailing is kept so that
        # "a.jpg<TAB>" reports an empty label rather than a missing delimiter.
        body = raw.lstrip()
        if delimiter not in body:
            found = "spaces" if delimiter != " " and " " in stripped else "no delimiter"
            raise GalleryError(f"{where}: expected {shown!r} between image path and label, found {found}")
        path_text, label_text = body.split(delimiter, 1)
        relative, label = path_text.strip(), label_text.strip()
        if not relative:
            raise GalleryError(f"{where}: empty image path before {shown!r}")
        if not label:
            raise GalleryError(f"{where}: empty label after {shown!r}")
        path = image_root / relative
        if check_images and not path.is_file():
            raise GalleryError(f"{where}: image {relative!r} not found (looked for {path})")
        entries.append(GalleryEntry(path=path, label=label, line=stripped, line_number=line_number))
    if not entries:
        raise GalleryError(f"{data_file}: no entries (only blank lines or comments)")
    return entries
