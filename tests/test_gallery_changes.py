"""Gallery changes by items (models/gallery_changes.py): errors name the item by its index, on the sample photos
and the real recognizer. How callers turn an index into words (``file:line``, ``items[i]``) is tested through
them: tests/test_gallery_ops.py and tests/test_gallery_api.py.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from config import load_config
from models.gallery import GalleryIndex
from models.gallery_changes import (
    GalleryItemError,
    GallerySettings,
    append_items,
    build_from_items,
    first_repeat,
    remove_items,
)
from models.gallery_file import GalleryItem, line_key
from models.recognizer import Recognizer
from workers.system import build_recognizer

PHOTOS = ("taxi_f36.jpg", "cyclist_f120.jpg", "parked_bicycle_f216.jpg")


def _item(path: str, label: str, line: str | None = None) -> GalleryItem:
    return GalleryItem(path=Path(path), label=label, line=line if line is not None else f"{path}\t{label}")


@pytest.mark.parametrize(
    "line, delimiter, key",
    [
        ("a.jpg\tcat", "\t", ("a.jpg", "cat")),  # the plain case
        ("a.jpg\t cat ", "\t", ("a.jpg", "cat")),  # spacing around the label is not part of it
        ("a.jpg\tred car", "\t", ("a.jpg", "red car")),  # a label keeps its inner spaces
        ("a.jpg|cat|tabby", "|", ("a.jpg", "cat|tabby")),  # split at the first delimiter only
        ("a.jpg cat", "\t", ("a.jpg cat", None)),  # no delimiter: the whole line, no label
    ],
)
def test_line_key(line: str, delimiter: str, key: tuple[str, str | None]) -> None:
    assert line_key(line, delimiter) == key


@pytest.mark.parametrize(
    "items, repeat",
    [
        ([_item("a.jpg", "cat"), _item("b.jpg", "cat")], None),  # two images, one label
        ([_item("a.jpg", "cat"), _item("a.jpg", "dog")], None),  # one image, two labels: two entries
        ([_item("a.jpg", "cat"), _item("b.jpg", "dog"), _item("a.jpg", "cat", "a.jpg\t cat")], (2, 0)),  # spacing aside
        ([_item("a.jpg", "cat"), _item("b.jpg", "dog"), _item("b.jpg", "dog"), _item("a.jpg", "cat")], (2, 1)),  # the first repeat
        ([], None),  # nothing to repeat
    ],
)
def test_first_repeat(items: list[GalleryItem], repeat: tuple[int, int] | None) -> None:
    assert first_repeat(items, "\t") == repeat


# ---- changes on the real recognizer ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recognizer(model_dir: Path) -> Recognizer:
    return build_recognizer(load_config())


@pytest.fixture()
def images(tmp_path: Path, repo_dir: Path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    for name in PHOTOS:
        shutil.copy(repo_dir / "samples" / "gallery" / name, root / name)
    (root / "notes.jpg").write_text("not an image\n", encoding="utf-8")
    return root


@pytest.fixture()
def settings(tmp_path: Path, images: Path) -> GallerySettings:
    # Items name their images relative to image_root, as the HTTP API's do.
    return GallerySettings(index_dir=tmp_path / "index", image_root=images, batch_size=1)


@pytest.fixture()
def built(settings: GallerySettings, recognizer: Recognizer) -> GallerySettings:
    summary = build_from_items([_item("taxi_f36.jpg", "taxi")], recognizer, settings)
    assert (summary.entries, summary.version, summary.embedded) == (1, 1, 1)
    return settings


def _version(settings: GallerySettings) -> int:
    return GalleryIndex.load(settings.index_dir).version


@pytest.mark.parametrize(
    "items, index, reason",
    [
        # the third item repeats the second, spacing aside
        (
            [_item("cyclist_f120.jpg", "cyclist"), _item("parked_bicycle_f216.jpg", "bike"),
             _item("parked_bicycle_f216.jpg", "bike", "parked_bicycle_f216.jpg\tbike ")],
            2, "duplicate: the same entry as item 1",
        ),
        # the second item is the entry already built
        (
            [_item("cyclist_f120.jpg", "cyclist"), _item("taxi_f36.jpg", "taxi")],
            1, "duplicate: 'taxi_f36.jpg\\ttaxi' is already in the gallery {index_dir} (id 0)",
        ),
        # the third item is no image: found in the third batch of one (batch_size 1), named as the item gives it
        (
            [_item("cyclist_f120.jpg", "cyclist"), _item("parked_bicycle_f216.jpg", "bike"), _item("notes.jpg", "x")],
            2, "cannot read image notes.jpg",
        ),
        # a file that is not there is no more readable
        ([_item("missing.jpg", "x")], 0, "cannot read image missing.jpg"),
    ],
)
def test_append_names_the_item_at_fault_and_saves_nothing(
    built: GallerySettings, recognizer: Recognizer, items: list[GalleryItem], index: int, reason: str
) -> None:
    with pytest.raises(GalleryItemError) as info:
        append_items(items, recognizer, built)
    assert info.value.index == index
    assert info.value.reason.startswith(reason.format(index_dir=built.index_dir)), info.value.reason
    assert _version(built) == 1


def test_append_then_remove_by_items(built: GallerySettings, recognizer: Recognizer) -> None:
    added = append_items([_item("cyclist_f120.jpg", "cyclist"), _item("parked_bicycle_f216.jpg", "parked bicycle")], recognizer, built)
    assert (added.changed, added.embedded, added.entries, added.version) == (2, 2, 3, 2)
    gallery = GalleryIndex.load(built.index_dir)
    assert [(i, label, line) for i, label, line in gallery.entries()] == [
        (0, "taxi", "taxi_f36.jpg\ttaxi"), (1, "cyclist", "cyclist_f120.jpg\tcyclist"),
        (2, "parked bicycle", "parked_bicycle_f216.jpg\tparked bicycle"),
    ]
    # removal matches the line's key, spacing aside, and reads no image: the item's file need not exist
    removed = remove_items([_item("elsewhere/taxi_f36.jpg", "taxi", "taxi_f36.jpg\t taxi")], built)
    assert (removed.changed, removed.entries, removed.version) == (1, 2, 3)


def test_remove_names_the_item_not_in_the_gallery_and_removes_nothing(built: GallerySettings) -> None:
    with pytest.raises(GalleryItemError) as info:
        remove_items([_item("taxi_f36.jpg", "taxi"), _item("taxi_f36.jpg", "cab")], built)
    assert (info.value.index, info.value.reason) == (1, f"not in the gallery {built.index_dir}: 'taxi_f36.jpg\\tcab'")
    gallery = GalleryIndex.load(built.index_dir)
    assert (gallery.size, gallery.version) == (1, 1)
