"""The gallery API backend (workers/gallery_api.py) on real photos, the real recognizer and a real spawn child.

The gallery is built once per module from samples/gallery (its data_file less the parked bicycle, which the
API adds); each test works on a fresh copy of it. Layout of the image folders:

    images/                 IndexProcess.image_root (taxi, cyclist, parked bicycle photos)
      uploads/              Service.gallery_image_root: the only folder the API may read
        parked.jpg          a real photo
        links/again.jpg     -> ../parked.jpg (a symlink that stays inside)
        to_taxi.jpg         -> ../taxi_f36.jpg (inside images/ but outside uploads/)
        escape.jpg          -> outside/secret.jpg
        notes.jpg           text
        broken.jpg          a JPEG signature and then garbage
        folder.jpg/         a directory
    outside/secret.jpg      a real photo outside every root
"""
from __future__ import annotations

import multiprocessing as mp
import shutil
from http import HTTPStatus
from pathlib import Path

import cv2
import pytest

from config import VidrecConfig, load_config
from models.gallery import GalleryIndex
from models.gallery_views import gallery_views, mean_embedding
from models.recognizer import Recognizer
from workers.gallery_api import GalleryService
from workers.gallery_job import list_gallery, new_gallery
from workers.http_api import status_of
from workers.service_errors import RequestRefused
from workers.system import build_recognizer

SPAWN = mp.get_context("spawn")
HELD_BACK = "parked_bicycle_f216.jpg"


@pytest.fixture(scope="module")
def recognizer(model_dir: Path) -> Recognizer:
    return build_recognizer(load_config())


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory, repo_dir: Path, recognizer: Recognizer) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("gallery-api")
    samples = repo_dir / "samples" / "gallery"
    images = base / "images"
    images.mkdir()
    for photo in samples.glob("*.jpg"):
        shutil.copy(photo, images / photo.name)
    lines = [
        line for line in (samples / "data_file.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith(HELD_BACK)
    ]
    assert len(lines) == 2, lines
    (base / "build.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    uploads = images / "uploads"
    (uploads / "links").mkdir(parents=True)
    (uploads / "folder.jpg").mkdir()
    shutil.copy(samples / HELD_BACK, uploads / "parked.jpg")
    (uploads / "links" / "again.jpg").symlink_to("../parked.jpg")
    (uploads / "to_taxi.jpg").symlink_to("../taxi_f36.jpg")
    outside = base / "outside"
    outside.mkdir()
    shutil.copy(samples / "taxi_f36.jpg", outside / "secret.jpg")
    (uploads / "escape.jpg").symlink_to(outside / "secret.jpg")
    (uploads / "notes.jpg").write_text("not an image, whatever its name says\n", encoding="utf-8")
    (uploads / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 50)

    pristine = base / "pristine"
    new_gallery(_config(pristine, images, uploads, data_file=base / "build.txt"), recognizer)
    return {"base": base, "images": images, "uploads": uploads, "outside": outside, "pristine": pristine}


def _config(index_dir: Path, images: Path, uploads: Path | None, **extra: object) -> VidrecConfig:
    overrides = [f"IndexProcess.index_dir={index_dir}", f"IndexProcess.image_root={images}"]
    if uploads is not None:
        overrides.append(f"Service.gallery_image_root={uploads}")
    if "data_file" in extra:
        overrides.append(f"IndexProcess.data_file={extra['data_file']}")
    return load_config(None, overrides)


@pytest.fixture()
def index_dir(tmp_path: Path, layout: dict[str, Path]) -> Path:
    target = tmp_path / "index"
    shutil.copytree(layout["pristine"], target)
    return target


@pytest.fixture()
def cfg(index_dir: Path, layout: dict[str, Path]) -> VidrecConfig:
    return _config(index_dir, layout["images"], layout["uploads"])


@pytest.fixture()
def service(cfg: VidrecConfig) -> GalleryService:
    return GalleryService(cfg, mp_context=SPAWN, timeout_s=120)


def snapshot(index_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(index_dir.iterdir())}


def refused(call, body: object, status: int) -> str:
    with pytest.raises(RequestRefused) as info:
        call(body)
    message = str(info.value)
    assert status_of(info.value) == status, message
    assert "\n" not in message
    return message


# ---- reading -----------------------------------------------------------------------------------------------


def test_info_reads_the_saved_gallery(service: GalleryService, index_dir: Path) -> None:
    assert service.info() == {"index_dir": str(index_dir), "version": 1, "entries": 2, "labels": {"cyclist": 1, "taxi": 1}}
    listed = service.entries()
    assert listed["total"] == 2
    assert [(row["id"], row["label"], row["path"]) for row in listed["entries"]] == [
        (0, "taxi", "taxi_f36.jpg"), (1, "cyclist", "cyclist_f120.jpg"),
    ]


def test_no_gallery_configured_is_404(layout: dict[str, Path]) -> None:
    service = GalleryService(load_config(None, [f"IndexProcess.image_root={layout['images']}"]), mp_context=SPAWN)
    calls = [(lambda _: service.info(), None), (service.add, {"path": "parked.jpg", "label": "x"}), (service.remove, {"labels": ["taxi"]})]
    for call, body in calls:
        assert "IndexProcess.index_dir" in refused(call, body, HTTPStatus.NOT_FOUND)


# ---- add ---------------------------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_add_embeds_in_a_child_and_saves_a_new_version(
    service: GalleryService, cfg: VidrecConfig, index_dir: Path, layout: dict[str, Path], recognizer: Recognizer
) -> None:
    # one relative path, and an absolute path through a symlink that stays inside the root
    body = {"items": [
        {"path": "parked.jpg", "label": "parked bicycle"},
        {"path": str(layout["uploads"] / "links" / "again.jpg"), "label": " bike "},
    ]}
    assert service.add(body) == {"added": 2, "version": 2, "entries": 4}

    listing = list_gallery(cfg)  # what `vidrec gallery list` prints
    assert listing.version == 2
    assert listing.lines()[2:] == ["2\tparked bicycle\tuploads/parked.jpg", "3\tbike\tuploads/parked.jpg"]
    assert service.info()["labels"] == {"bike": 1, "cyclist": 1, "parked bicycle": 1, "taxi": 1}
    # the stored embeddings are the recognizer's: the mean of the photo's gallery views (the default
    # gallery_augment, grid9) finds its own entries at cosine 1
    gallery = GalleryIndex.load(index_dir)
    rgb = cv2.cvtColor(cv2.imread(str(layout["uploads"] / "parked.jpg")), cv2.COLOR_BGR2RGB)
    views = gallery_views(rgb, cfg.IndexProcess.gallery_augment)
    found = gallery.search(mean_embedding(recognizer.embed(views))[None, :], 2)
    assert sorted(found.ids[0].tolist()) == [2, 3]
    assert found.scores[0].tolist() == pytest.approx([1.0, 1.0], abs=1e-4)

    # the same entry again is a conflict, refused before any child runs
    before = snapshot(index_dir)
    message = refused(service.add, {"path": "parked.jpg", "label": "parked bicycle"}, HTTPStatus.CONFLICT)
    assert "'uploads/parked.jpg' with label 'parked bicycle' is already in the gallery (id 2)" in message
    assert snapshot(index_dir) == before


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("../../etc/passwd", "is outside the gallery image root"),
        ("/etc/passwd", "is outside the gallery image root"),
        ("../taxi_f36.jpg", "is outside the gallery image root"),  # an image, but in image_root, not uploads/
        ("to_taxi.jpg", "is outside the gallery image root"),  # a symlink out of the root
        ("escape.jpg", "is outside the gallery image root"),
        ("../../outside/secret.jpg", "is outside the gallery image root"),
        ("../../outside/missing.jpg", "is outside the gallery image root"),  # outside first, whether it exists or not
        ("links/../../../outside/secret.jpg", "is outside the gallery image root"),
        ("missing.jpg", "no such file under the gallery image root"),
        ("notes.jpg", "is not an image"),
        ("folder.jpg", "is not a regular file"),
    ],
)
def test_paths_outside_the_root_or_not_images_are_refused(
    service: GalleryService, index_dir: Path, path: str, fragment: str
) -> None:
    before = snapshot(index_dir)
    message = refused(service.add, {"items": [{"path": "parked.jpg", "label": "ok"}, {"path": path, "label": "x"}]}, HTTPStatus.BAD_REQUEST)
    assert message.startswith(f"items[1].path {path!r}"), message
    assert fragment in message
    assert str(index_dir.parent) not in message and "secret" not in message.replace(path, "")
    assert snapshot(index_dir) == before
    assert service.info()["version"] == 1


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"path": "parked.jpg", "label": "x", "force": True}, "unknown key 'force'"),
        ({"items": [{"path": "parked.jpg", "label": "x"}], "label": "x"}, "unknown key 'label'"),
        ({"items": [{"path": "parked.jpg", "label": "x", "id": 3}]}, "items[0]: unknown key 'id'"),
        ({"items": [{"path": "parked.jpg", "label": "   "}]}, "items[0].label is empty"),
        ({"path": "parked.jpg", "label": ""}, "label is empty"),
        ({"path": "parked.jpg", "label": "a\tb"}, "label must be"),
        ({"path": "parked.jpg", "label": "a\nb"}, "label must be"),
        ({"path": "parked.jpg\n", "label": "x"}, "path must be"),
        ({"path": "parked.jpg"}, "missing key label"),
        ({"path": 3, "label": "x"}, "path must be a string"),
        ({"items": "parked.jpg"}, "items must be a list"),
        ({"items": []}, "items is empty"),
        ({"items": [["parked.jpg", "x"]]}, "items[0] must be an object"),
        ({"items": [{"path": "parked.jpg", "label": "x"}] * 2}, "the same image and label as items[0]"),
        ({"items": [{"path": "parked.jpg", "label": "x"}] * 1001}, "at most 1000 per request"),
    ],
)
def test_malformed_add_bodies_are_400_naming_the_key(service: GalleryService, index_dir: Path, body: dict, fragment: str) -> None:
    before = snapshot(index_dir)
    assert fragment in refused(service.add, body, HTTPStatus.BAD_REQUEST)
    assert snapshot(index_dir) == before


@pytest.mark.timeout(180)
def test_an_image_the_child_cannot_decode_is_its_one_line_400(service: GalleryService, index_dir: Path) -> None:
    before = snapshot(index_dir)
    message = refused(service.add, {"items": [{"path": "parked.jpg", "label": "ok"}, {"path": "broken.jpg", "label": "x"}]}, HTTPStatus.BAD_REQUEST)
    assert message == "items[1]: cannot read image uploads/broken.jpg", message
    assert snapshot(index_dir) == before


@pytest.mark.timeout(60)
def test_a_child_past_its_timeout_is_stopped_and_changes_nothing(cfg: VidrecConfig, index_dir: Path) -> None:
    service = GalleryService(cfg, mp_context=SPAWN, timeout_s=0.05)  # less than a Python start, let alone the recognizer
    before = snapshot(index_dir)
    assert "did not finish within 0.05 s and was stopped" in refused(service.add, {"path": "parked.jpg", "label": "x"}, HTTPStatus.GATEWAY_TIMEOUT)
    assert snapshot(index_dir) == before


def test_a_change_in_progress_makes_another_wait_then_503(cfg: VidrecConfig, index_dir: Path) -> None:
    service = GalleryService(cfg, mp_context=SPAWN, busy_wait_s=0.2)
    with service._change():  # what add/remove hold while they run
        assert "in progress" in refused(service.remove, {"labels": ["taxi"]}, HTTPStatus.SERVICE_UNAVAILABLE)
    assert service.remove({"labels": ["taxi"]})["removed"] == 1


# ---- remove ------------------------------------------------------------------------------------------------


def test_remove_by_label_and_by_path(service: GalleryService, cfg: VidrecConfig, index_dir: Path) -> None:
    assert service.remove({"labels": ["taxi"]}) == {"removed": 1, "version": 2, "entries": 1}
    assert list_gallery(cfg).lines() == ["1\tcyclist\tcyclist_f120.jpg"]
    assert service.remove({"paths": ["./cyclist_f120.jpg"]}) == {"removed": 1, "version": 3, "entries": 0}
    assert service.info() == {"index_dir": str(index_dir), "version": 3, "entries": 0, "labels": {}}


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"labels": ["taxi", "unicorn"]}, HTTPStatus.NOT_FOUND, "label 'unicorn' is not in the gallery; nothing removed"),
        ({"paths": ["nowhere.jpg"]}, HTTPStatus.NOT_FOUND, "image path 'nowhere.jpg' is not in the gallery"),
        ({"labels": ["taxi"], "paths": ["taxi_f36.jpg"]}, HTTPStatus.BAD_REQUEST, "exactly one of labels, paths"),
        ({"label": "taxi"}, HTTPStatus.BAD_REQUEST, "unknown key 'label'"),
        ({"labels": "taxi"}, HTTPStatus.BAD_REQUEST, "labels must be a list"),
        ({"labels": []}, HTTPStatus.BAD_REQUEST, "labels is empty"),
        ({"labels": [""]}, HTTPStatus.BAD_REQUEST, "labels[0] must be non-empty"),
        ({"labels": [7]}, HTTPStatus.BAD_REQUEST, "labels[0] must be a string"),
    ],
)
def test_bad_removals_change_nothing(service: GalleryService, index_dir: Path, body: dict, status: int, fragment: str) -> None:
    before = snapshot(index_dir)
    assert fragment in refused(service.remove, body, status)
    assert snapshot(index_dir) == before
