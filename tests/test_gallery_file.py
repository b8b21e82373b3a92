"""PP-ShiTu data_file parsing: good files, and one-line errors that name the file and line."""
from __future__ import annotations

from pathlib import Path

import pytest

from models.errors import GalleryError
from models.gallery_file import GalleryEntry, read_data_file

IMAGES = ("a.jpg", "b.jpg", "sub/c d.jpg")


@pytest.fixture()
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "gallery"
    for name in IMAGES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\xff\xd8\xff")  # existence is all the reader checks
    return root


def _write(tmp_path: Path, text: str, *, raw: bytes | None = None) -> Path:
    path = tmp_path / "data_file.txt"
    path.write_bytes(raw if raw is not None else text.encode("utf-8"))
    return path


GOOD = [
    # (id, text, delimiter, expected [(relative path, label, line, line_number)])
    ("plain", "a.jpg\tcat\nb.jpg\tdog\n", "\t",
     [("a.jpg", "cat", "a.jpg\tcat", 1), ("b.jpg", "dog", "b.jpg\tdog", 2)]),
    ("comments and blank lines", "# gallery\n\na.jpg\tcat\n   \n  # b.jpg\tdog\nb.jpg\tdog", "\t",
     [("a.jpg", "cat", "a.jpg\tcat", 3), ("b.jpg", "dog", "b.jpg\tdog", 6)]),
    ("label with spaces survives", "a.jpg\tred car  \n", "\t", [("a.jpg", "red car", "a.jpg\tred car", 1)]),
    ("path with spaces", "sub/c d.jpg\tcat\n", "\t", [("sub/c d.jpg", "cat", "sub/c d.jpg\tcat", 1)]),
    ("space delimiter, label keeps its spaces", "a.jpg red car\nb.jpg dog\n", " ",
     [("a.jpg", "red car", "a.jpg red car", 1), ("b.jpg", "dog", "b.jpg dog", 2)]),
    ("custom delimiter", "a.jpg|cat|tabby\n", "|", [("a.jpg", "cat|tabby", "a.jpg|cat|tabby", 1)]),
    ("CRLF line ends", "a.jpg\tcat\r\nb.jpg\tdog\r\n", "\t",
     [("a.jpg", "cat", "a.jpg\tcat", 1), ("b.jpg", "dog", "b.jpg\tdog", 2)]),
]


@pytest.mark.parametrize(("text", "delimiter", "expected"), [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_good_files(tmp_path: Path, image_root: Path, text: str, delimiter: str, expected: list) -> None:
    entries = read_data_file(_write(tmp_path, text), image_root, delimiter)
    assert entries == [
        GalleryEntry(path=image_root / rel, label=label, line=line, line_number=number)
        for rel, label, line, number in expected
    ]


def test_utf8_bom_is_not_part_of_the_first_path(tmp_path: Path, image_root: Path) -> None:
    entries = read_data_file(_write(tmp_path, "", raw="a.jpg\tкот\n".encode("utf-8-sig")), image_root)
    assert entries[0].path == image_root / "a.jpg" and entries[0].label == "кот"


BAD = [
    # (id, text, delimiter, message after "<data_file>")
    ("space separated", "a.jpg\tcat\nb.jpg dog\n", "\t",
     ":2: expected '<TAB>' between image path and label, found spaces"),
    ("no delimiter at all", "a.jpg\n", "\t", ":1: expected '<TAB>' between image path and label, found no delimiter"),
    ("missing image", "a.jpg\tcat\n\nmissing.jpg\tdog\n", "\t", ":3: image 'missing.jpg' not found"),
    ("empty label", "a.jpg\t   \n", "\t", ":1: empty label after '<TAB>'"),
    ("empty path", "a.jpg|cat\n|dog\n", "|", ":2: empty image path before '|'"),
    ("empty label, space delimiter", "a.jpg \n", " ", ":1: empty label after '<SPACE>'"),
    ("only comments", "# nothing\n\n   \n", "\t", ": no entries (only blank lines or comments)"),
    ("empty file", "", "\t", ": no entries"),
]


@pytest.mark.parametrize(("text", "delimiter", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_files_name_file_and_line(tmp_path: Path, image_root: Path, text: str, delimiter: str, message: str) -> None:
    data_file = _write(tmp_path, text)
    with pytest.raises(GalleryError) as caught:
        read_data_file(data_file, image_root, delimiter)
    text_of_error = str(caught.value)
    assert text_of_error.startswith(f"{data_file}{message}"), text_of_error
    assert "\n" not in text_of_error


def test_missing_data_file(tmp_path: Path, image_root: Path) -> None:
    with pytest.raises(GalleryError, match="data_file.txt: data file not found"):
        read_data_file(tmp_path / "data_file.txt", image_root)


def test_not_utf8_names_the_line(tmp_path: Path, image_root: Path) -> None:
    with pytest.raises(GalleryError, match=r"data_file.txt:2: not UTF-8"):
        read_data_file(_write(tmp_path, "", raw=b"a.jpg\tcat\nb.jpg\t\xff\n"), image_root)


def test_image_check_can_be_turned_off(tmp_path: Path) -> None:
    entries = read_data_file(_write(tmp_path, "missing.jpg\tdog\n"), tmp_path / "nowhere", check_images=False)
    assert entries[0].path == tmp_path / "nowhere" / "missing.jpg"


def test_missing_image_root(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match="image_root .*nowhere is not a directory"):
        read_data_file(_write(tmp_path, "a.jpg\tcat\n"), tmp_path / "nowhere")
