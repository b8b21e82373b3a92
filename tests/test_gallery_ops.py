"""Gallery build / append / remove / list on real crops and the real recognizer.

Counting embeddings: ``CountingRecognizer`` wraps the real recognizer and counts the crops it is asked to
embed, which is how "append embeds only the new lines" is proven.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path
from typing import Sequence

import cv2
import faiss
import numpy as np
import pytest

from config import VidrecConfig, load_config
from models.errors import GalleryError
from models.gallery import GalleryIndex
from models.recognizer import Recognizer
from tests.cli_helpers import assert_one_line_error, run_vidrec
from workers.gallery_job import (
    append_gallery,
    build_gallery,
    list_gallery,
    new_gallery,
    remove_from_gallery,
)
from workers.system import build_recognizer

# Crops of real objects (opencv-doc images fetched by scripts/fetch-media), boxes checked by eye.
CROPS = {
    "whale.png": ("rubberwhale1.png", (221, 92, 318, 183)),
    "shell.png": ("rubberwhale1.png", (59, 140, 151, 178)),
    "wheel.png": ("rubberwhale1.png", (70, 291, 183, 388)),
    "cookies.png": ("box.png", (0, 0, 324, 223)),
    "house.png": ("leuvenA.jpg", (266, 164, 415, 391)),
    "pot.png": ("aloeL.jpg", (710, 808, 1065, 1086)),
}
FIRST = ["whale.png\tgreen whale", "shell.png\tshell", "wheel.png\torange wheel", "cookies.png\tcookie box"]
MORE = ["house.png\tgabled house", "pot.png\taloe pot"]


class CountingRecognizer:
    """The real recognizer; counts the crops it embeds."""

    def __init__(self, inner: Recognizer) -> None:
        self.inner = inner
        self.crops = 0

    @property
    def embedding_size(self) -> int:
        return self.inner.embedding_size

    @property
    def model_path(self) -> Path:
        return self.inner.model_path

    def embed(self, crops_rgb: Sequence[np.ndarray]) -> np.ndarray:
        self.crops += len(crops_rgb)
        return self.inner.embed(crops_rgb)


@pytest.fixture(scope="module")
def real_recognizer(model_dir: Path) -> Recognizer:
    return build_recognizer(load_config())


@pytest.fixture()
def recognizer(real_recognizer: Recognizer) -> CountingRecognizer:
    return CountingRecognizer(real_recognizer)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory, repo_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("crops")
    for name, (source, (x1, y1, x2, y2)) in CROPS.items():
        path = repo_dir / ".cache" / "media" / source
        assert path.is_file(), f"{path} missing: run scripts/fetch-media"
        cv2.imwrite(str(root / name), cv2.imread(str(path))[y1:y2, x1:x2])
    return root


def _write(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _cfg(data_file: Path, image_root: Path, index_dir: Path, **index_process: object) -> VidrecConfig:
    # One recognizer crop per gallery image, so that counts are of images; the grid views of the default
    # (gallery_augment: grid9) are counted in test_grid_views_embed_each_large_image_ten_times.
    index_process.setdefault("gallery_augment", "none")
    overrides = [
        f"IndexProcess.data_file={data_file}",
        f"IndexProcess.image_root={image_root}",
        f"IndexProcess.index_dir={index_dir}",
    ] + [f"IndexProcess.{key}={value}" for key, value in index_process.items()]
    return load_config(None, overrides)


def _label_of_image(index_dir: Path, recognizer: CountingRecognizer, image: Path) -> tuple[str | None, float]:
    gallery = GalleryIndex.load(index_dir)
    rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
    found = gallery.search(recognizer.inner.embed([rgb]), 1)
    return found.labels[0][0], float(found.scores[0, 0])


def test_grid_views_embed_each_large_image_ten_times(tmp_path: Path, image_root: Path,
                                                     recognizer: CountingRecognizer) -> None:
    from models.gallery_views import GRID_MIN_SIDE

    sides = [min(cv2.imread(str(image_root / line.split("\t")[0])).shape[:2]) for line in FIRST]
    built = new_gallery(_cfg(_write(tmp_path / "first.txt", FIRST), image_root, tmp_path / "index",
                             gallery_augment="grid9"), recognizer)
    # one entry per image whatever its views; an image under GRID_MIN_SIDE is embedded alone
    assert built.entries == 4
    assert recognizer.crops == sum(10 if side >= GRID_MIN_SIDE else 1 for side in sides)
    assert any(side >= GRID_MIN_SIDE for side in sides)


def test_append_embeds_only_the_new_lines(tmp_path: Path, image_root: Path, recognizer: CountingRecognizer) -> None:
    index_dir = tmp_path / "index"
    built = new_gallery(_cfg(_write(tmp_path / "first.txt", FIRST), image_root, index_dir), recognizer)
    assert (built.entries, built.version, recognizer.crops) == (4, 1, 4)

    appended = append_gallery(_cfg(_write(tmp_path / "more.txt", MORE), image_root, index_dir), recognizer)
    assert recognizer.crops == 4 + 2  # the 4 already enrolled images were not embedded again
    assert (appended.entries, appended.changed, appended.embedded, appended.version) == (6, 2, 2, 2)
    listing = list_gallery(_cfg(tmp_path / "first.txt", image_root, index_dir))
    assert [(row.id, row.label) for row in listing.rows] == [
        (0, "green whale"), (1, "shell"), (2, "orange wheel"), (3, "cookie box"), (4, "gabled house"), (5, "aloe pot"),
    ]
    assert listing.version == 2
    assert listing.lines()[4] == "4\tgabled house\thouse.png"
    # the appended images are found under their labels, and a label with a space is kept whole
    assert _label_of_image(index_dir, recognizer, image_root / "house.png") == ("gabled house", pytest.approx(1.0, abs=1e-5))
    assert _label_of_image(index_dir, recognizer, image_root / "whale.png")[0] == "green whale"


def test_a_line_already_in_the_index_is_a_duplicate_named_by_file_and_line(
    tmp_path: Path, image_root: Path, recognizer: CountingRecognizer
) -> None:
    index_dir = tmp_path / "index"
    new_gallery(_cfg(_write(tmp_path / "first.txt", FIRST), image_root, index_dir), recognizer)
    before = recognizer.crops
    # line 3 repeats an enrolled entry, spacing aside: (path, label) is what identifies an entry
    again = _write(tmp_path / "again.txt", ["# new objects", MORE[0], "shell.png\t shell ", MORE[1]])
    with pytest.raises(GalleryError) as err:
        append_gallery(_cfg(again, image_root, index_dir), recognizer)
    message = str(err.value)
    assert message.startswith(f"{again}:3: duplicate") and str(index_dir) in message and "(id 1)" in message
    assert recognizer.crops == before  # refused before embedding anything
    assert GalleryIndex.load(index_dir).version == 1  # and nothing saved

    twice = _write(tmp_path / "twice.txt", [MORE[0], MORE[1], MORE[0]])
    with pytest.raises(GalleryError, match=rf"^{twice}:3: duplicate: the same entry as line 1$"):
        append_gallery(_cfg(twice, image_root, index_dir), recognizer)
    assert recognizer.crops == before


def test_removing_a_line_not_in_the_index_names_file_and_line(tmp_path: Path, image_root: Path, recognizer: CountingRecognizer) -> None:
    index_dir = tmp_path / "index"
    new_gallery(_cfg(_write(tmp_path / "first.txt", FIRST), image_root, index_dir), recognizer)
    gone = _write(tmp_path / "gone.txt", [FIRST[1], "house.png\tgabled house"])
    with pytest.raises(GalleryError) as err:
        remove_from_gallery(_cfg(gone, image_root, index_dir))
    assert str(err.value) == f"{gone}:2: not in the gallery {index_dir}: 'house.png\\tgabled house'"
    gallery = GalleryIndex.load(index_dir)
    assert (gallery.size, gallery.version) == (4, 1)  # nothing removed, not even line 1


@pytest.mark.parametrize("index_method", ["Flat", "IVF", "HNSW32"])
def test_remove_works_for_every_method_without_the_images(
    index_method: str, tmp_path: Path, image_root: Path, recognizer: CountingRecognizer
) -> None:
    images = tmp_path / "images"
    shutil.copytree(image_root, images)
    index_dir = tmp_path / "index"
    new_gallery(_cfg(_write(tmp_path / "all.txt", FIRST + MORE), images, index_dir, index_method=index_method), recognizer)
    shutil.rmtree(images)  # PaddleX#2869: removal must not need the images

    removed = remove_from_gallery(_cfg(_write(tmp_path / "rm.txt", [MORE[0], FIRST[0]]), images, index_dir))
    assert (removed.changed, removed.entries, removed.version) == (2, 4, 2)
    gallery = GalleryIndex.load(index_dir)
    assert gallery.index_method == index_method
    assert sorted(gallery.ids.tolist()) == [1, 2, 3, 5]
    # the removed objects are no longer found; the others still are
    label, _ = _label_of_image(index_dir, recognizer, image_root / "house.png")
    assert label != "gabled house"
    assert _label_of_image(index_dir, recognizer, image_root / "pot.png")[0] == "aloe pot"
    # and PaddleClas sees the same through plain faiss + pickle
    index = faiss.read_index(str(index_dir / "vector.index"))
    assert index.ntotal == 4
    with open(index_dir / "id_map.pkl", "rb") as f:
        assert sorted(pickle.load(f)) == [1, 2, 3, 5]


def test_paddleclas_layout_round_trip_with_plain_faiss_and_pickle(
    tmp_path: Path, image_root: Path, recognizer: CountingRecognizer
) -> None:
    """A directory written the way PaddleClas's build_gallery.py writes it, appended to and removed from by
    vidrec, then read back and searched the way PaddleClas's predict_system.py reads it."""
    rgb = [cv2.cvtColor(cv2.imread(str(image_root / line.split("\t")[0])), cv2.COLOR_BGR2RGB) for line in FIRST]
    x = recognizer.inner.embed(rgb)
    index = faiss.IndexIDMap2(faiss.index_factory(x.shape[1], "Flat", faiss.METRIC_INNER_PRODUCT))
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    index_dir = tmp_path / "paddle_index"
    index_dir.mkdir()
    faiss.write_index(index, str(index_dir / "vector.index"))
    with open(index_dir / "id_map.pkl", "wb") as f:
        pickle.dump({np.int64(i): line for i, line in enumerate(FIRST)}, f)

    append_gallery(_cfg(_write(tmp_path / "more.txt", MORE), image_root, index_dir), recognizer)
    remove_from_gallery(_cfg(_write(tmp_path / "rm.txt", [FIRST[1]]), image_root, index_dir))

    index = faiss.read_index(str(index_dir / "vector.index"))
    with open(index_dir / "id_map.pkl", "rb") as f:
        id_map = pickle.load(f)
    assert id_map == {0: FIRST[0], 2: FIRST[2], 3: FIRST[3], 4: MORE[0], 5: MORE[1]}
    assert sorted(faiss.vector_to_array(index.id_map).tolist()) == sorted(id_map)
    pot = cv2.cvtColor(cv2.imread(str(image_root / "pot.png")), cv2.COLOR_BGR2RGB)
    scores, ids = index.search(recognizer.inner.embed([pot]), 1)
    assert id_map[int(ids[0, 0])] == "pot.png\taloe pot" and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    # PaddleClas takes the label as the second whitespace field ("aloe"); vidrec keeps "aloe pot" whole
    assert [row.label for row in list_gallery(_cfg(tmp_path / "rm.txt", image_root, index_dir)).rows][-1] == "aloe pot"


def test_embedding_size_differing_from_the_index_names_both(tmp_path: Path, image_root: Path, recognizer: CountingRecognizer) -> None:
    index_dir = tmp_path / "index16"
    vectors = np.eye(16, dtype=np.float32)[:2]
    GalleryIndex.build(vectors, FIRST[:2], ["green whale", "shell"]).save(index_dir)
    with pytest.raises(GalleryError) as err:
        append_gallery(_cfg(_write(tmp_path / "more.txt", MORE), image_root, index_dir), recognizer)
    message = str(err.value)
    assert str(index_dir) in message and "16-d" in message and "1840-d" in message
    assert recognizer.crops == 0


def test_build_follows_index_operation_as_paddleclas_does(tmp_path: Path, image_root: Path, recognizer: CountingRecognizer) -> None:
    index_dir = tmp_path / "index"
    build_gallery(_cfg(_write(tmp_path / "first.txt", FIRST), image_root, index_dir), recognizer)
    summary = build_gallery(_cfg(_write(tmp_path / "more.txt", MORE), image_root, index_dir, index_operation="append"), recognizer)
    assert (summary.operation, summary.entries, summary.version, recognizer.crops) == ("append", 6, 2, 6)
    summary = build_gallery(_cfg(tmp_path / "more.txt", image_root, index_dir, index_operation="remove"), recognizer)
    assert (summary.operation, summary.entries, summary.version, recognizer.crops) == ("remove", 4, 3, 6)
    summary = build_gallery(_cfg(tmp_path / "more.txt", image_root, index_dir), recognizer)
    # a new build over version 3 continues the numbering, so running jobs see a change
    assert (summary.operation, summary.entries, summary.version) == ("new", 2, 4)


def test_append_to_a_missing_index_says_to_build_first(tmp_path: Path, image_root: Path, recognizer: CountingRecognizer) -> None:
    index_dir = tmp_path / "nothing"
    with pytest.raises(GalleryError, match="no gallery there yet; make one with `vidrec gallery build`"):
        append_gallery(_cfg(_write(tmp_path / "more.txt", MORE), image_root, index_dir), recognizer)


# ---- through the command line -------------------------------------------------------------------------------


def test_cli_append_remove_list(tmp_path: Path, image_root: Path, model_dir: Path) -> None:
    index_dir = tmp_path / "index"

    def config(data_file: Path) -> list[str]:
        return ["-o", f"IndexProcess.data_file={data_file}", "-o", f"IndexProcess.image_root={image_root}",
                "-o", f"IndexProcess.index_dir={index_dir}"]

    first, more = _write(tmp_path / "first.txt", FIRST), _write(tmp_path / "more.txt", MORE)
    assert run_vidrec("gallery", "build", *config(first)).returncode == 0
    proc = run_vidrec("gallery", "append", *config(more))
    assert proc.returncode == 0, proc.stderr
    assert "appended 2 entries; now 6 entries, 6 labels, version 2" in proc.stderr

    proc = run_vidrec("gallery", "append", *config(more))
    assert_one_line_error(proc, f"{more}:1: duplicate", str(index_dir))

    proc = run_vidrec("gallery", "remove", *config(_write(tmp_path / "rm.txt", [FIRST[0]])))
    assert proc.returncode == 0, proc.stderr
    proc = run_vidrec("gallery", "remove", *config(tmp_path / "rm.txt"))
    assert_one_line_error(proc, f"{tmp_path / 'rm.txt'}:1: not in the gallery")

    proc = run_vidrec("gallery", "list", *config(first))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "1\tshell\tshell.png",
        "2\torange wheel\twheel.png",
        "3\tcookie box\tcookies.png",
        "4\tgabled house\thouse.png",
        "5\taloe pot\tpot.png",
    ]
    assert "version 3, 5 entries, 5 labels, Flat, IP, 1840-d" in proc.stderr
