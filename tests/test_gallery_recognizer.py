"""A gallery records the recognizer that made it; one made by another recognizer is refused, never mixed.

Embeddings of two recognizers are not comparable: searching one with the other names objects wrongly at
plausible scores. So each vidrec gallery's meta.json names its recognizer (issue 13), and every place that
reads a gallery for a recognizer checks it: the system at start-up, the live reload of a running job,
append and eval. A PaddleClas index_dir (no meta.json) is taken as it is, as PP-ShiTu takes it.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from config import load_config
from models.errors import GalleryError
from models.gallery import GalleryIndex, recognizer_mismatch
from models.gallery_watch import GalleryWatcher
from workers.gallery_job import append_gallery, eval_gallery, new_gallery
from workers.system import build_recognizer, build_system


def _gallery(tmp_path: Path, name: str, recognizer: str | None) -> GalleryIndex:
    gallery = GalleryIndex.build(np.eye(2, 4, dtype=np.float32), ["a.jpg\ta", "b.jpg\tb"], ["a", "b"], recognizer=recognizer)
    gallery.save(tmp_path / name)
    return GalleryIndex.load(tmp_path / name)


@pytest.mark.parametrize(("recorded", "paddle", "configured", "refused"), [
    ("lite0_ml: v1", False, "lite0_ml: v1", None),                        # the same recognizer
    ("lite0: avg v1", False, "lite0_ml: v1", "by the recognizer 'lite0: avg v1'"),  # another one
    (None, False, "lite0_ml: v1", "by an earlier vidrec"),               # saved before vidrec recorded it
    (None, True, "lite0_ml: v1", None),                                  # PaddleClas's own index_dir
    ("lite0: avg v1", False, None, None),                                # a recognizer of unknown make
])
def test_recognizer_mismatch(tmp_path: Path, recorded, paddle, configured, refused) -> None:
    gallery = _gallery(tmp_path, "g", recorded)
    assert gallery.recognizer == recorded
    if paddle:
        for name in ("embeddings.npy", "ids.npy", "labels.json", "meta.json"):
            (tmp_path / "g" / name).unlink()
        gallery = GalleryIndex.load(tmp_path / "g")
        assert gallery.from_paddle
    message = recognizer_mismatch(gallery, configured, where=tmp_path / "g")
    if refused is None:
        assert message is None
    else:
        assert refused in message and "rebuild it with `vidrec gallery build`" in message and "\n" not in message


@pytest.fixture(scope="module")
def lite0_gallery(tmp_path_factory: pytest.TempPathFactory, photos) -> tuple[Path, list[str]]:
    """A gallery of three photos built by today's Lite0 recognizer (efficientnet_lite0, 1280-d)."""
    root = tmp_path_factory.mktemp("recognizers")
    lines = []
    for name in ("dog", "bus", "zidane"):
        cv2.imwrite(str(root / f"{name}.jpg"), np.ascontiguousarray(photos[name][:, :, ::-1]))
        lines.append(f"{name}.jpg\t{name}")
    (root / "gallery.txt").write_text("\n".join(lines) + "\n")
    overrides = [f"IndexProcess.data_file={root / 'gallery.txt'}", f"IndexProcess.image_root={root}",
                 f"IndexProcess.index_dir={root / 'index'}"]
    lite0 = load_config(None, overrides + ["Global.rec_inference_model_dir=efficientnet_lite0",
                                           "IndexProcess.embedding_size=1280"])
    new_gallery(lite0, build_recognizer(lite0))
    return root, overrides


def test_a_gallery_of_another_recognizer_is_refused_at_start_append_and_eval(lite0_gallery, model_dir: Path) -> None:
    root, overrides = lite0_gallery
    meta = json.loads((root / "index" / "meta.json").read_text())
    assert meta["recognizer"].startswith("efficientnet_lite0: avg v1")
    cfg = load_config(None, overrides)  # the default recognizer, efficientnet_lite0_ml
    expected = "was built by the recognizer 'efficientnet_lite0: avg v1"
    with pytest.raises(GalleryError, match=expected):
        build_system(cfg)
    recognizer = build_recognizer(cfg)
    with pytest.raises(GalleryError, match=expected):
        append_gallery(cfg, recognizer)
    with pytest.raises(GalleryError, match=expected):
        eval_gallery(cfg, recognizer, root / "gallery.txt")
    # the recognizer that built it still loads it
    lite0 = load_config(None, overrides + ["Global.rec_inference_model_dir=efficientnet_lite0",
                                           "IndexProcess.embedding_size=1280"])
    assert build_system(lite0).gallery.size == 3


def test_a_running_job_keeps_its_gallery_when_another_recognizers_replaces_it(lite0_gallery, tmp_path: Path) -> None:
    root, _ = lite0_gallery
    current = _gallery(tmp_path, "mine", "efficientnet_lite0_ml: v1")
    watcher = GalleryWatcher(root / "index", current=current, recognizer="efficientnet_lite0_ml: v1")
    watcher._signature = None  # as if index_dir had just changed under it
    assert watcher.check() is None
    assert watcher.load_errors == 1 and "was built by the recognizer 'efficientnet_lite0: avg v1" in watcher.last_error


def test_a_gallery_saved_before_recognizers_were_recorded_is_refused(lite0_gallery, tmp_path: Path) -> None:
    root, overrides = lite0_gallery
    old = tmp_path / "old"
    GalleryIndex.load(root / "index").save(old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["recognizer"]
    (old / "meta.json").write_text(json.dumps(meta))
    lite0 = load_config(None, overrides + [f"IndexProcess.index_dir={old}", "IndexProcess.embedding_size=1280",
                                           "Global.rec_inference_model_dir=efficientnet_lite0"])
    with pytest.raises(GalleryError, match="built by an earlier vidrec, which did not record its recognizer"):
        build_system(lite0)
