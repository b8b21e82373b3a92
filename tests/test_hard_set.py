"""workers/hard_set.py: the two splits have the issue's shape, use disjoint photos, and are reproducible."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from workers.hard_set import KNOWN, UNKNOWN_PHOTOS, build_hard_set


def _lines(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hard")
    return {split: build_hard_set(root / split, split=split, seed=0) for split in ("tune", "report")}


def test_each_split_has_the_issues_shape(splits) -> None:
    for hard in splits.values():
        gallery = _lines(hard.gallery_file)
        queries = _lines(hard.queries_file)
        unknown = _lines(hard.unknown_file)
        assert (hard.known, hard.distractors) == (20, 70)
        assert len(gallery) == 90 and len(queries) == 60 and len(unknown) == 30
        gallery_labels = {label for _, label in gallery}
        assert len(gallery_labels) == 90  # every gallery entry is its own object
        assert {label for _, label in queries} <= gallery_labels
        assert not {label for _, label in unknown} & gallery_labels
        for name, _ in gallery + queries + unknown:
            assert (hard.root / name).is_file(), name


def test_splits_use_disjoint_photos(splits) -> None:
    sources = {split: {(o.source, o.name) for o in KNOWN[split] + UNKNOWN_PHOTOS[split]} for split in KNOWN}
    assert not sources["tune"] & sources["report"]
    digests = {}
    for split, hard in splits.items():
        digests[split] = {hashlib.sha256((hard.root / name).read_bytes()).hexdigest()
                          for name, _ in _lines(hard.gallery_file)}
    assert not digests["tune"] & digests["report"]


def test_same_seed_same_files_other_seed_other_views(tmp_path: Path, splits) -> None:
    again = build_hard_set(tmp_path / "again", split="tune", seed=0)
    other = build_hard_set(tmp_path / "other", split="tune", seed=1)
    first = splits["tune"]
    name = _lines(first.queries_file)[0][0]
    assert (again.root / name).read_bytes() == (first.root / name).read_bytes()
    assert (other.root / name).read_bytes() != (first.root / name).read_bytes()
    with pytest.raises(ValueError, match="split"):
        build_hard_set(tmp_path / "bad", split="test")  # type: ignore[arg-type]
