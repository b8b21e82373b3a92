"""Regenerate samples/gallery/: object crops cut from single frames of samples/bikes.mp4.

Each entry is the detector's box of one object in one frame (frame index and box recorded in
data_file.txt's comment lines), so the demo and tests enrol an object from one frame and look for it
in the others. Run: VIDREC_MODEL_DIR=../shared/models .venv/bin/python samples/make_gallery.py
"""
from __future__ import annotations

from pathlib import Path

import cv2

from config import load_config
from stream.sources import open_source
from workers.system import build_detector

HERE = Path(__file__).resolve().parent
# (label, frame index, COCO class of the box to take)
ENROL = [
    ("cyclist", 120, "person"),
    ("taxi", 36, "car"),
    ("parked bicycle", 216, "bicycle"),
]


def main() -> None:
    detector = build_detector(load_config())
    wanted = {frame: (label, cls) for label, frame, cls in ENROL}
    out = HERE / "gallery"
    out.mkdir(exist_ok=True)
    lines = ["# image<TAB>label; crops of samples/bikes.mp4 made by samples/make_gallery.py"]
    with open_source(HERE / "bikes.mp4") as source:
        for frame in source:
            if frame.index not in wanted:
                continue
            label, cls = wanted[frame.index]
            dets = detector.detect([frame.image_bgr])[0]
            names = [detector.class_names[c] for c in dets.class_id]
            best = max((i for i, n in enumerate(names) if n == cls), key=lambda i: dets.confidence[i])
            x1, y1, x2, y2 = (int(round(v)) for v in dets.xyxy[best])
            name = f"{label.replace(' ', '_')}_f{frame.index}.jpg"
            cv2.imwrite(str(out / name), frame.image_bgr[y1:y2, x1:x2], [cv2.IMWRITE_JPEG_QUALITY, 92])
            lines.append(f"# frame {frame.index}, {cls} box [{x1}, {y1}, {x2}, {y2}]")
            lines.append(f"{name}\t{label}")
    (out / "data_file.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
