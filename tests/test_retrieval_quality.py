"""How well the real recognizer + gallery name real objects: photo pairs, and pedestrians in real footage.

The recognizer is EfficientNet-Lite0 trained on ImageNet classification, never on retrieval or person
re-identification, as the default ``efficientnet_lite0_mlc`` embeds with it (pooled maps of blocks 10, 14 and
15, issue 13, fused with the crop's colour layout); these floors record what it does, so that a change to preprocessing, cropping or the
gallery that makes it worse fails here.
"""
from __future__ import annotations

from pathlib import Path

import cv2

from config import load_config
from models.shitu import RecognizedBox
from stream.sources import open_source
from workers.gallery_job import eval_gallery, new_gallery
from workers.system import build_recognizer, build_system
from tests.media import fetched_media

# Two views of the same object: (image, box) for the gallery, (image, box) for the query. All from Debian's
# opencv-doc examples (scripts/fetch-media); boxes chosen by hand and checked by eye on crops of both views.
PAIRS = {
    # the cookie box alone, then in a cluttered scene, rotated and partly covered
    "bastoncini box": (("box.png", (0, 0, 324, 223)), ("box_in_scene.png", (100, 160, 258, 293))),
    # the figure and rooster of a graffiti wall, from a second viewpoint ~40 degrees away
    "graffiti figure": (("graf1.png", (200, 150, 680, 600)), ("graf3.png", (250, 150, 620, 600))),
    # two people in consecutive frames of a video (grey)
    "ball player": (("basketball1.png", (30, 60, 190, 480)), ("basketball2.png", (30, 60, 190, 480))),
    "shirt man": (("basketball1.png", (350, 20, 640, 480)), ("basketball2.png", (350, 20, 640, 480))),
    # five objects in consecutive frames of Middlebury's RubberWhale
    "green whale": (("rubberwhale1.png", (221, 92, 318, 183)), ("rubberwhale2.png", (221, 92, 318, 183))),
    "shell": (("rubberwhale1.png", (59, 140, 151, 178)), ("rubberwhale2.png", (59, 140, 151, 178))),
    "orange D": (("rubberwhale1.png", (151, 226, 302, 323)), ("rubberwhale2.png", (151, 226, 302, 323))),
    "orange wheel": (("rubberwhale1.png", (70, 291, 183, 388)), ("rubberwhale2.png", (70, 291, 183, 388))),
    "yellow box": (("rubberwhale1.png", (393, 253, 584, 388)), ("rubberwhale2.png", (393, 253, 584, 388))),
    # a gabled house in two overlapping shots of a panorama (different position in frame and perspective)
    "gabled house": (("leuvenA.jpg", (266, 164, 415, 391)), ("leuvenB.jpg", (516, 196, 642, 407))),
    # the pot of a stereo pair (Middlebury Aloe)
    "aloe pot": (("aloeL.jpg", (710, 808, 1065, 1086)), ("aloeR.jpg", (608, 808, 972, 1086))),
    # two books photographed from two sides
    "let us c": (("left.jpg", (87, 134, 270, 380)), ("right.jpg", (217, 112, 351, 325))),
    "electronics book": (("left.jpg", (261, 108, 406, 329)), ("right.jpg", (316, 108, 551, 421))),
    # a page of text, then rotated and scaled
    "text page": (("imageTextN.png", (0, 0, 556, 257)), ("imageTextR.png", (0, 0, 556, 323))),
}
# Queries of objects the gallery does not hold, so that the threshold sees wrong top-1 matches.
UNKNOWN = ("bus.jpg", "dog.jpg", "person.jpg", "zidane.jpg")


def test_photo_pairs_recall_and_map(tmp_path: Path, photos_dir: Path, model_dir: Path) -> None:
    root = tmp_path / "crops"
    root.mkdir()
    gallery_lines, query_lines = [], []
    for label, views in PAIRS.items():
        for side, (image, (x1, y1, x2, y2)) in zip(("g", "q"), views):
            name = f"{label.replace(' ', '_')}_{side}.png"
            crop = cv2.imread(str(fetched_media(image)))[y1:y2, x1:x2]
            assert crop.size, (label, image)
            cv2.imwrite(str(root / name), crop)
            (gallery_lines if side == "g" else query_lines).append(f"{name}\t{label}")
    for photo in UNKNOWN:
        cv2.imwrite(str(root / photo), cv2.imread(str(photos_dir / photo)))
        query_lines.append(f"{photo}\tunknown {Path(photo).stem}")
    (tmp_path / "gallery.txt").write_text("\n".join(gallery_lines) + "\n")
    (tmp_path / "query.txt").write_text("\n".join(query_lines) + "\n")
    cfg = load_config(None, [
        f"IndexProcess.data_file={tmp_path / 'gallery.txt'}",
        f"IndexProcess.image_root={root}",
        f"IndexProcess.index_dir={tmp_path / 'index'}",
    ])
    recognizer = build_recognizer(cfg)
    new_gallery(cfg, recognizer)
    report = eval_gallery(cfg, recognizer, tmp_path / "query.txt")
    print(f"\n{len(PAIRS)} photo pairs + {len(UNKNOWN)} unknown queries:")
    print("\n".join(report.lines()))

    assert report.answerable == len(PAIRS) >= 8
    # Measured: all 14 pairs right at rank 1 (recall@1 1.000, mAP 1.000), as with efficientnet_lite0 before
    # (whose closest calls were the cookie box, 0.655 to its own crop vs 0.385 to the next object, and the
    # electronics book, 0.763 vs 0.571).
    # The floor allows one of the 14 to slip to rank 2, no more: one pair can hinge on a crop's pixel
    # rounding, two would be a real loss.
    assert report.recall[1] >= 13 / 14
    assert report.recall[5] == 1.0
    assert report.mean_ap >= (13 + 1 / 2) / 14
    # The suggested threshold must separate them from the unknown photos without losing a right match.
    assert report.suggestion is not None and report.suggestion.recall == 1.0


# vtest.avi: four pedestrians, each enrolled from ONE frame by its detector box (chosen as people walking
# apart from others, boxes checked by eye): (frame, box).
PEDESTRIANS = {
    "A dark coat": (100, (347, 198, 378, 276)),
    "B jeans": (180, (500, 221, 533, 310)),
    "C black suit": (540, (638, 285, 679, 389)),
    "D blonde": (620, (373, 423, 430, 575)),
}
WINDOW = 20  # frames on each side of the enrolment frame
TRACK_IOU = 0.3
MATCH_IOU = 0.5


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _track(results: dict[int, list[RecognizedBox]], start: int, box, person_class: int) -> dict[int, tuple]:
    """Ground truth by position alone: from the enrolled box, follow the person box of best IoU (>= 0.3)
    with the previous one, frame by frame, up to WINDOW frames each way; stop where it is lost."""
    track = {start: tuple(box)}
    for step in (1, -1):
        current = tuple(box)
        for index in range(start + step, start + step * (WINDOW + 1), step):
            candidates = [(_iou(current, b.xyxy), b.xyxy) for b in results.get(index, []) if b.det_class_id == person_class]
            candidates = [c for c in candidates if c[0] >= TRACK_IOU]
            if not candidates:
                break
            current = max(candidates)[1]
            track[index] = current
    return track


def test_pedestrians_enrolled_from_one_frame_are_named_in_nearby_frames(tmp_path: Path, vtest_avi: Path, model_dir: Path) -> None:
    wanted = {i for start, _ in PEDESTRIANS.values() for i in range(start - WINDOW, start + WINDOW + 1)}
    frames = {}
    with open_source(vtest_avi) as source:
        for frame in source:
            if frame.index in wanted:
                frames[frame.index] = frame.image_bgr
            if frame.index == max(wanted):
                break  # nothing later is looked at: spare decoding the rest of the clip
    lines = []
    for label, (start, (x1, y1, x2, y2)) in PEDESTRIANS.items():
        name = f"{label.split()[0]}.png"
        cv2.imwrite(str(tmp_path / name), frames[start][y1:y2, x1:x2])
        lines.append(f"{name}\t{label}")
    (tmp_path / "people.txt").write_text("\n".join(lines) + "\n")
    cfg = load_config(None, [
        f"IndexProcess.data_file={tmp_path / 'people.txt'}",
        f"IndexProcess.image_root={tmp_path}",
        f"IndexProcess.index_dir={tmp_path / 'index'}",
        # more, weaker boxes so that the tracks are not lost in groups
        "Global.threshold=0.3", "Global.max_det_results=10",
        # People look alike to an ImageNet feature: a stricter score than the default's for objects, and a
        # smaller margin than the defaults, fitted on objects (four enrolled people are all alike)
        "IndexProcess.score_thres=0.8", "IndexProcess.margin_thres=0.08",
    ])
    new_gallery(cfg, build_recognizer(cfg))
    system = build_system(cfg)
    person = system.detector.class_names.index("person")
    results = {index: system.run([frames[index]]).boxes[0] for index in sorted(frames)}

    # Per frame and person, within the person's track (the enrolment frame itself left out):
    # recall = the track's box carries the person's label; precision = boxes carrying the label lie on
    # the track's box. Outside the track nothing is known, so nothing is counted there.
    tp = fp = fn = 0
    for label, (start, box) in PEDESTRIANS.items():
        track = _track(results, start, box, person)
        assert len(track) >= WINDOW, f"{label}: track lost after {len(track)} frames"
        hits = wrong = 0
        for index, truth in track.items():
            if index == start:
                continue
            named = [b for b in results[index] if b.label == label]
            on_track = any(_iou(b.xyxy, truth) >= MATCH_IOU for b in named)
            hits += on_track
            wrong += len(named) - on_track
        misses = len(track) - 1 - hits
        print(f"{label}: {len(track) - 1} frames, named {hits}, missed {misses}, on someone else {wrong}")
        tp, fp, fn = tp + hits, fp + wrong, fn + misses
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(f"pedestrians: precision {precision:.3f}, recall {recall:.3f} at score_thres 0.8, margin_thres 0.08")
    # Measured with efficientnet_lite0_mlc (the network's features fused with the crop's colour layout): 0.912 /
    # 0.844; without the colour (efficientnet_lite0_ml) 0.71 / 0.68, and efficientnet_lite0 0.72 / 0.51 at its 0.75:
    # an ImageNet feature tells dark-coated walkers apart only so far; where the colours of coat, trousers and
    # hair sit tells most of them apart. "A dark coat" is still named in only 16 of 40 frames. The floors sit
    # about 0.06 under the measurement, to catch a real loss rather than a box moving by a pixel.
    assert precision >= 0.85
    assert recall >= 0.78
