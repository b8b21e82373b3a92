"""A running `vidrec video` picks up gallery changes without a restart, and survives a broken one.

The end-to-end tests run the real CLI on the first 720 frames of vtest.avi (pedestrians, a white van parked at the
top right the whole time; every 3rd frame) in a subprocess, follow its results in the JSONL ``.partial`` file as
they are written, and change the gallery with the real `vidrec gallery` commands meanwhile.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pytest

from models.gallery import GalleryIndex
from models.gallery_watch import GalleryWatcher
from tests.cli_helpers import REPO, ffmpeg, read_jsonl, run_vidrec

# vtest.avi, frame 0: the parked white van (the detector's "car" box there, checked by eye) and a walker.
VAN_BOX = (652, 42, 724, 96)
WALKER_BOX = (251, 219, 283, 310)
VAN = "white van"
DEADLINE_S = 600


# ---- GalleryWatcher on its own -----------------------------------------------------------------------------


def _gallery(n: int, seed: int, d: int = 8) -> GalleryIndex:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return GalleryIndex.build(x, [f"{i}.jpg\tlabel {i}" for i in range(n)], [f"label {i}" for i in range(n)])


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watcher_loads_a_new_version_once(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    gallery = _gallery(3, 0)
    gallery.save(index_dir)
    watcher = GalleryWatcher(index_dir, current=gallery, embedding_size=8)
    assert watcher.check() is None
    gallery.add(np.eye(8, dtype=np.float32)[:1], ["x.jpg\tx"], ["x"])
    gallery.save(index_dir)
    fresh = watcher.check()
    assert fresh is not None and (fresh.version, fresh.size) == (2, 4)
    assert watcher.check() is None


def test_watcher_looks_at_most_every_interval(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    gallery = _gallery(3, 0)
    gallery.save(index_dir)
    clock = _Clock()
    watcher = GalleryWatcher(index_dir, current=gallery, interval_s=0.5, clock=clock)
    assert watcher.poll() is None  # t=0: looked, nothing new
    gallery.remove([0])
    gallery.save(index_dir)
    clock.now = 0.2
    assert watcher.poll() is None  # too soon to look
    clock.now = 0.5
    fresh = watcher.poll()
    assert fresh is not None and fresh.version == 2


def test_watcher_keeps_the_old_gallery_on_a_broken_one_and_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    index_dir = tmp_path / "index"
    gallery = _gallery(3, 0)
    gallery.save(index_dir)
    watcher = GalleryWatcher(index_dir, current=gallery)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a faiss index")
    os.replace(garbage, index_dir / "vector.index")
    with caplog.at_level(logging.WARNING, logger="models.gallery_watch"):
        assert watcher.check() is None
        assert watcher.check() is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(index_dir) in warnings[0] and "not a faiss index" in warnings[0]
    # a good save after it is picked up
    gallery.remove([1])
    gallery.save(index_dir)
    fresh = watcher.check()
    assert fresh is not None and fresh.version == 2


def test_watcher_refuses_another_embedding_size(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    index_dir = tmp_path / "index"
    _gallery(3, 0, d=8).save(index_dir)
    watcher = GalleryWatcher(index_dir, current=None, embedding_size=8)
    _gallery(3, 0, d=16).save(index_dir)
    with caplog.at_level(logging.WARNING, logger="models.gallery_watch"):
        assert watcher.check() is None
    assert "16-d embeddings, the recognizer makes 8-d" in caplog.text


def test_watcher_waits_one_look_before_calling_a_missing_directory_a_problem(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    index_dir = tmp_path / "index"
    gallery = _gallery(3, 0)
    gallery.save(index_dir)
    watcher = GalleryWatcher(index_dir, current=gallery)
    moved = tmp_path / "moved"
    os.rename(index_dir, moved)
    with caplog.at_level(logging.WARNING, logger="models.gallery_watch"):
        assert watcher.check() is None
        assert caplog.records == []  # maybe a two-rename swap in progress
        assert watcher.check() is None
    assert "gallery index directory not found" in caplog.text


def test_watcher_notices_a_change_made_before_it_started(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    gallery = _gallery(3, 0)
    gallery.save(index_dir)
    loaded = GalleryIndex.load(index_dir)
    gallery.remove([2])
    gallery.save(index_dir)  # saved between the caller's load and the watcher's start
    fresh = GalleryWatcher(index_dir, current=loaded).check()
    assert fresh is not None and fresh.version == 2


# ---- a running `vidrec video` -------------------------------------------------------------------------------


class RunningVideo:
    """`vidrec video --json OUT` in a subprocess; its results are read as they reach OUT.partial."""

    def __init__(self, tmp_path: Path, *args: str | Path) -> None:
        self.out = tmp_path / "results.jsonl"
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.err_path = tmp_path / "video.stderr"
        env = dict(os.environ)
        env.pop("VIDREC_DEBUG", None)
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "video", *map(str, args), "--json", str(self.out), "--no-progress"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=self._err, text=True,
        )
        self.results: list[dict[str, Any]] = []
        self.arrival: list[float] = []  # monotonic time each result was read
        self._handle = None
        self._pending = ""

    def refresh(self) -> None:
        """Take in the complete lines written so far."""
        if self._handle is None:
            if not self.partial.exists():
                return
            self._handle = open(self.partial, encoding="utf-8")  # keeps reading it after the final rename
        self._pending += self._handle.read()
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self.results.append(json.loads(line))
            self.arrival.append(time.monotonic())

    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        """Poll until ``condition()`` holds; fail if the job ends first or the deadline passes."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            self.refresh()
            if condition():
                return
            if self.proc.poll() is not None:
                self.refresh()
                if condition():
                    return
                pytest.fail(f"vidrec video ended (exit {self.proc.returncode}) before {what}; "
                            f"{len(self.results)} results\n{self.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {DEADLINE_S} s; {len(self.results)} results")
            time.sleep(0.05)

    def finish(self) -> list[dict[str, Any]]:
        self.proc.wait(timeout=DEADLINE_S)
        self._err.close()
        assert self.proc.returncode == 0, self.stderr()
        self.refresh()
        final = read_jsonl(self.out)
        assert final == self.results
        return final

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()
        if self._handle is not None:
            self._handle.close()


def _iou(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _van_named(result: dict[str, Any]) -> bool:
    return any(obj["label"] == VAN and _iou(obj["bbox"], VAN_BOX) >= 0.5 for obj in result["objects"])


def _named(result: dict[str, Any], label: str) -> bool:
    return any(obj["label"] == label for obj in result["objects"])


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory, vtest_avi: Path) -> Path:
    root = tmp_path_factory.mktemp("vtest_crops")
    capture = cv2.VideoCapture(str(vtest_avi))
    ok, frame = capture.read()
    capture.release()
    assert ok
    for name, (x1, y1, x2, y2) in (("van.png", VAN_BOX), ("walker.png", WALKER_BOX)):
        cv2.imwrite(str(root / name), frame[y1:y2, x1:x2])
    return root


def _gallery_config(data_file: Path, image_root: Path, index_dir: Path) -> list[str]:
    return ["-o", f"IndexProcess.data_file={data_file}", "-o", f"IndexProcess.image_root={image_root}",
            "-o", f"IndexProcess.index_dir={index_dir}"]


# The first 720 frames (72 s), every 3rd of them: 240 results. The gallery changes happen within the first
# seconds of the run, and the rest only shows that the job carries on. With tracking a result costs ~30 ms of CPU,
# so the job runs at 12-37 results/s while the `vidrec gallery` commands start up beside it: version 3 came from
# result 55-66 on (CI; two busy-loop processes on 2 cores), the broken gallery's warning after result ~22 (so its
# 20 more results end at ~42). 240 results leave a margin of about three times what the changes took.
CLIP_FRAMES = 720
EVERY_NTH = 3
FRAMES = list(range(0, CLIP_FRAMES, EVERY_NTH))


@pytest.fixture(scope="module")
def vtest_head(tmp_path_factory: pytest.TempPathFactory, vtest_avi: Path) -> Path:
    """The first CLIP_FRAMES frames of vtest.avi, stream-copied: it starts on a key frame and has no B-frames,
    so every frame decodes to the very pixels of the whole file (checked here, frame by frame)."""
    head = tmp_path_factory.mktemp("vtest_head") / "vtest_head.avi"
    ffmpeg("-i", str(vtest_avi), "-map", "0:v", "-c", "copy", "-frames:v", str(CLIP_FRAMES), str(head))
    whole, cut = cv2.VideoCapture(str(vtest_avi)), cv2.VideoCapture(str(head))
    try:
        assert int(cut.get(cv2.CAP_PROP_FRAME_COUNT)) == CLIP_FRAMES
        for index in range(CLIP_FRAMES):
            ok_whole, frame_whole = whole.read()
            ok_cut, frame_cut = cut.read()
            assert ok_whole and ok_cut, index
            np.testing.assert_array_equal(frame_cut, frame_whole, err_msg=f"frame {index}")
        assert not cut.read()[0]
    finally:
        whole.release()
        cut.release()
    return head


def _video_args(vtest_avi: Path, index_dir: Path) -> list[str | Path]:
    # threshold 0.3 / 10 boxes: the van (a "car" at ~0.65) is then among the boxes in nearly every frame
    return [vtest_avi, "--every-nth", str(EVERY_NTH), "-o", f"IndexProcess.index_dir={index_dir}", "-o", "Global.threshold=0.3",
            "-o", "Global.max_det_results=10", "-o", "IndexProcess.score_thres=0.8"]


def _frames_naming_the_van(root: Path, crops: Path, vtest_head: Path, data_file_text: str) -> set[int]:
    """The frames in which a run whose gallery holds ``data_file_text`` from its start names the van.

    With tracking (the default) the van is not named on every frame whatever the gallery: walkers pass in front
    of it (frames ~156–186 of the clip), the detector loses it or scores it under the tracker's activation
    threshold, and the fresh track that follows is unnamed until its votes settle. A running job's gallery
    change is judged on the frames this reference run names it in, so where in the clip the change lands (it
    depends on the machine's speed) does not decide the outcome.
    """
    root.mkdir()
    data_file, index_dir, out = root / "data_file.txt", root / "index", root / "reference.jsonl"
    data_file.write_text(data_file_text)
    build = run_vidrec("gallery", "build", *_gallery_config(data_file, crops, index_dir))
    assert build.returncode == 0, build.stderr
    video = run_vidrec("video", *_video_args(vtest_head, index_dir), "--json", out, "--no-progress")
    assert video.returncode == 0, video.stderr
    results = read_jsonl(out)
    assert [r["frame_index"] for r in results] == FRAMES
    named = {r["frame_index"] for r in results if _van_named(r)}
    assert len(named) >= 0.6 * len(FRAMES), f"the reference run names the van in {len(named)} frames"
    return named


def test_running_video_picks_up_append_then_remove(tmp_path: Path, crops: Path, vtest_head: Path, model_dir: Path) -> None:
    index_dir = tmp_path / "index"
    first = tmp_path / "first.txt"
    first.write_text("walker.png\twalker in black\n")
    van = tmp_path / "van.txt"
    van.write_text(f"van.png\t{VAN}\n")
    assert run_vidrec("gallery", "build", *_gallery_config(first, crops, index_dir)).returncode == 0

    video = RunningVideo(tmp_path, *_video_args(vtest_head, index_dir))
    try:
        video.wait_for("a first result", lambda: len(video.results) > 0)
        assert video.results[0]["gallery_version"] == 1

        append = run_vidrec("gallery", "append", *_gallery_config(van, crops, index_dir))
        assert append.returncode == 0, append.stderr
        video.refresh()
        appended_at, frame_at_append = time.monotonic(), len(video.results)
        video.wait_for("version 2 naming the van", lambda: any(r["gallery_version"] == 2 and _van_named(r) for r in video.results))
        first_v2 = next(i for i, r in enumerate(video.results) if r["gallery_version"] == 2)
        print(f"append -> version 2: {video.arrival[first_v2] - appended_at:.2f} s, "
              f"{first_v2 - frame_at_append} results after the append returned (result {frame_at_append})")

        remove = run_vidrec("gallery", "remove", *_gallery_config(van, crops, index_dir))
        assert remove.returncode == 0, remove.stderr
        video.refresh()
        removed_at, frame_at_remove = time.monotonic(), len(video.results)
        video.wait_for("version 3", lambda: any(r["gallery_version"] == 3 for r in video.results))
        first_v3 = next(i for i, r in enumerate(video.results) if r["gallery_version"] == 3)
        print(f"remove -> version 3: {video.arrival[first_v3] - removed_at:.2f} s, "
              f"{first_v3 - frame_at_remove} results after the remove returned (result {frame_at_remove})")
        results = video.finish()
    finally:
        video.kill()

    assert [r["frame_index"] for r in results] == FRAMES
    versions = [r["gallery_version"] for r in results]
    assert versions == sorted(versions) and set(versions) == {1, 2, 3}
    by_version = {v: [r for r in results if r["gallery_version"] == v] for v in (1, 2, 3)}
    assert len(by_version[3]) > 0
    # The van is named only while version 2 is live, and only on the van.
    assert not any(_named(r, VAN) for r in by_version[1] + by_version[3])
    for r in by_version[2]:
        for obj in r["objects"]:
            if obj["label"] == VAN:
                assert _iou(obj["bbox"], VAN_BOX) >= 0.5, obj
    # Named on the frames a run with version 2's gallery from its start names it in, from the first frame
    # version 2 named it on (the wait above saw it): its votes restart at the change and settle on the next frames.
    reference = _frames_naming_the_van(tmp_path / "reference", crops, vtest_head,
                                       f"walker.png\twalker in black\nvan.png\t{VAN}\n")
    version_2 = by_version[2]
    first_named = next(i for i, r in enumerate(version_2) if _van_named(r))
    settled = [r for r in version_2[first_named:] if r["frame_index"] in reference]
    named = sum(_van_named(r) for r in settled)
    print(f"van named in {named} of the {len(settled)} version-2 frames from its first naming on (result {first_named} "
          f"of {len(version_2)}) that a run with this gallery from the start names it in")
    assert named >= 0.9 * len(settled)
    assert "version 2 loaded" in video.stderr() and "version 3 loaded" in video.stderr()


def test_running_video_keeps_its_gallery_when_the_new_one_is_broken(
    tmp_path: Path, crops: Path, vtest_head: Path, model_dir: Path
) -> None:
    index_dir = tmp_path / "index"
    data_file = tmp_path / "van.txt"
    data_file.write_text(f"van.png\t{VAN}\n")
    assert run_vidrec("gallery", "build", *_gallery_config(data_file, crops, index_dir)).returncode == 0

    video = RunningVideo(tmp_path, *_video_args(vtest_head, index_dir))
    try:
        video.wait_for("the van named", lambda: any(_van_named(r) for r in video.results))
        # Another tool overwrites vector.index with something that is not an index.
        garbage = tmp_path / "garbage.index"
        garbage.write_bytes(b"\x00" * 64)
        os.replace(garbage, index_dir / "vector.index")
        video.wait_for("the warning", lambda: "was not loaded" in video.stderr())
        seen = len(video.results)
        print(f"warning after result {seen} of {len(FRAMES)}")
        video.wait_for("20 more results", lambda: len(video.results) >= seen + 20)
        results = video.finish()
    finally:
        video.kill()

    assert [r["frame_index"] for r in results] == FRAMES
    assert {r["gallery_version"] for r in results} == {1}
    # still recognising with the old gallery, where a run with it and no broken one names the van
    reference = _frames_naming_the_van(tmp_path / "reference", crops, vtest_head, f"van.png\t{VAN}\n")
    after = [r for r in results[seen:] if r["frame_index"] in reference]
    assert len(after) > 0
    assert sum(_van_named(r) for r in after) >= 0.9 * len(after)
    warnings = [line for line in video.stderr().splitlines() if "was not loaded" in line]
    assert len(warnings) == 1, video.stderr()
    assert str(index_dir) in warnings[0] and "not a faiss index" in warnings[0]
