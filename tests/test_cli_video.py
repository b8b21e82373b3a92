"""`vidrec video` end to end through the real CLI, real models and real footage."""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import pytest

from config import load_config
from stream.messages import load_schema
from stream.sources import open_source
from tests.cli_helpers import read_jsonl, run_vidrec
from workers.system import build_detector
from tests.schema_check import validate

SCHEMA = load_schema()

# bikes.mp4 is a montage of shots; frames 75–137 are one shot of a helmeted cyclist standing by his
# bike (checked by eye), partly hidden by a passing vehicle in its middle.
CYCLIST_SHOT = range(75, 138)


def test_bus_photo_finds_bus_and_three_persons(tmp_path: Path, photos_dir: Path) -> None:
    out = tmp_path / "bus.jsonl"
    proc = run_vidrec("video", photos_dir / "bus.jpg", "--json", out)
    assert proc.returncode == 0, proc.stderr
    [result] = read_jsonl(out)
    validate(result, SCHEMA)
    assert (result["width"], result["height"]) == (810, 1080)
    classes = [obj["det_class"] for obj in result["objects"]]
    assert "bus" in classes and classes.count("person") >= 3, classes
    bus = next(obj for obj in result["objects"] if obj["det_class"] == "bus")
    x1, y1, x2, y2 = bus["bbox"]
    assert x2 - x1 > 0.8 * 810 and 0 <= y1 < y2 <= 1080  # the bus spans the photo's width
    assert result["pts"] is None and result["gallery_version"] is None


def test_video_writes_schema_valid_jsonl_and_annotated_mp4(tmp_path: Path, bikes_mp4: Path) -> None:
    jsonl, mp4 = tmp_path / "r.jsonl", tmp_path / "a.mp4"
    proc = run_vidrec("video", bikes_mp4, "--every-nth", "5", "--json", jsonl, "--out", mp4, "-o", "Global.batch_size=4")
    assert proc.returncode == 0, proc.stderr
    results = read_jsonl(jsonl)
    for result in results:
        validate(result, SCHEMA)
    assert [r["frame_index"] for r in results] == list(range(0, 250, 5))
    assert {r["stream_id"] for r in results} == {"bikes"}
    pts = [r["pts"] for r in results]
    assert pts == sorted(pts) and pts[1] == pytest.approx(0.2)  # 25 fps, every 5th frame
    assert all(r["latency_ms"]["total"] >= r["latency_ms"]["detect"] > 0 for r in results)
    assert sum(len(r["objects"]) for r in results) > 20  # people, cars and bikes are found
    with av.open(str(mp4)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert (stream.codec_context.width, stream.codec_context.height) == (640, 272)
    assert frames == len(results)
    assert not list(tmp_path.glob("*.partial"))


def test_folder_of_images_is_a_sequence(tmp_path: Path, photos_dir: Path) -> None:
    out = tmp_path / "photos.jsonl"
    proc = run_vidrec("video", photos_dir, "--json", out)
    assert proc.returncode == 0, proc.stderr
    results = read_jsonl(out)
    assert [r["frame_index"] for r in results] == [0, 1, 2, 3]
    assert [(r["width"], r["height"]) for r in results] == [(810, 1080), (768, 576), (640, 424), (1280, 720)]


@pytest.fixture(scope="module")
def cyclist_gallery(tmp_path_factory: pytest.TempPathFactory, bikes_mp4: Path, model_dir: Path) -> Path:
    """Enrol the cyclist from ONE frame (120): crop the detector's person box, build a gallery with the CLI."""
    root = tmp_path_factory.mktemp("gallery")
    detector = build_detector(load_config())
    with open_source(bikes_mp4) as source:
        frame = next(f for f in source if f.index == 120)
    dets = detector.detect([frame.image_bgr])[0]
    person = max(
        (i for i, c in enumerate(dets.class_id) if detector.class_names[c] == "person"), key=lambda i: dets.confidence[i]
    )
    x1, y1, x2, y2 = (int(round(v)) for v in dets.xyxy[person])
    cv2.imwrite(str(root / "cyclist.jpg"), frame.image_bgr[y1:y2, x1:x2])
    # a distractor label, from a different shot (a parked bike, frame 216)
    with open_source(bikes_mp4) as source:
        other = next(f for f in source if f.index == 216)
    cv2.imwrite(str(root / "bike.jpg"), other.image_bgr[22:208, 260:507])
    (root / "data_file.txt").write_text("cyclist.jpg\tthe cyclist\nbike.jpg\tparked bike\n")
    index_dir = root / "index"
    proc = run_vidrec(
        "gallery", "build",
        "-o", f"IndexProcess.data_file={root / 'data_file.txt'}",
        "-o", f"IndexProcess.image_root={root}",
        "-o", f"IndexProcess.index_dir={index_dir}",
    )
    assert proc.returncode == 0, proc.stderr
    assert (index_dir / "vector.index").is_file() and (index_dir / "id_map.pkl").is_file()
    return index_dir


@pytest.mark.parametrize(
    "tracking, recall_floor",
    [
        # per frame (PP-ShiTu per image): every box of every frame is recognised (measured 18 of 18)
        ("false", 0.8),
        # per track: measured 14 of 18; a track has no id on its object's first frame and is named on its second
        # attempt (min_votes 2), so each of the shot's two tracks starts with two unnamed frames. The gallery holds
        # one person, an individual (Tracker.unique_labels): the bicycle under the cyclist, whose box holds most of
        # them, also matches the enrolled crop (0.72 with efficientnet_lite0_mlc, whose colour layout they share);
        # frame by frame PP-ShiTu's NMS drops that box, with tracking the one-track-per-individual rule does.
        ("true", 0.7),
    ],
)
def test_enrolled_object_is_found_in_later_frames(tmp_path: Path, bikes_mp4: Path, cyclist_gallery: Path,
                                                  tracking: str, recall_floor: float) -> None:
    out = tmp_path / "r.jsonl"
    proc = run_vidrec(
        "video", bikes_mp4, "--every-nth", "2", "--json", out,
        "-o", f"IndexProcess.index_dir={cyclist_gallery}", "-o", "IndexProcess.score_thres=0.7",
        "-o", f"Tracker.enabled={tracking}", "-o", "Tracker.unique_labels=true",
    )
    assert proc.returncode == 0, proc.stderr
    results = read_jsonl(out)
    assert {r["gallery_version"] for r in results} == {1}

    def named(result: dict, label: str) -> bool:
        return any(obj["label"] == label for obj in result["objects"])

    # Recall: in the cyclist's shot, every other frame where the detector sees a person (not frame
    # 120 itself), the person is named "the cyclist" — a label with a space, kept whole.
    shot = [r for r in results if r["frame_index"] in CYCLIST_SHOT and r["frame_index"] != 120
            and any(o["det_class"] == "person" for o in r["objects"])]
    assert len(shot) >= 10
    found = sum(named(r, "the cyclist") for r in shot)
    assert found / len(shot) >= recall_floor, f"named in {found} of {len(shot)} frames"
    # The name sits on the person box, not on the whole frame.
    for r in shot:
        for obj in r["objects"]:
            if obj["label"] == "the cyclist":
                assert obj["det_class"] == "person"
    # Precision: never named outside its shot.
    outside = [r["frame_index"] for r in results if r["frame_index"] not in CYCLIST_SHOT and named(r, "the cyclist")]
    assert outside == []
