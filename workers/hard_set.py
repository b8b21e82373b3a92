"""The hard set: a gallery of real photos and distractors, queried with hard views of the photos it holds
and of objects it does not hold (issue 13).

Two splits, ``tune`` (to choose variants and thresholds) and ``report`` (to report them), built from
disjoint photos, each with about 20 known objects (3 hard views each, ``models/hard_views.py``), about
70 distractors in the gallery, and unknown objects (3 hard views each) that the gallery does not hold.

Where the photos come from (all real, none made here):
- Debian's opencv-doc examples (``scripts/fetch-media`` puts them in ``.cache/media/``): the object photos,
  the synthetic/text/chessboard images used as distractors, and frames of its videos (vtest.avi, tree.avi,
  Megamind.avi);
- the four shared photos (``<shared>/media/photos``: bus, dog, person, zidane);
- matplotlib's sample photos (grace_hopper.jpg, Minduka_Present_Blue_Pack.png; matplotlib is pinned
  through supervision);
- ``samples/bikes.mp4`` (street footage in the repo).

How the objects were chosen: every natural photo of those sources is one object, except nine wide ones
whose left and right halves show visibly different things (Zidane / Ancelotti; the ball player / the shirt
man; a walker with a dog / a horse; a dog / a bicycle; facade / tower; brick house / street; toys / a
yellow box; graffiti figure / rooster; citrus / kiwi and grapes), which give two objects each; both halves
of a photo always have the same split and role. A photo with a near-duplicate in the sources (a stereo or
video pair: aloeL/R, graf1/3, leuvenA/B, left/right, box/box_in_scene, …) is used once and its partner
never, so that no distractor or unknown is the same object under another name. Distractors are the
synthetic and text images, the chessboard calibration photos and crops of video frames; the tune split
takes the first half of each video, the report split the second. Unknown objects are the remaining photos
plus Megamind frames (its first half for tune, second half for report).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import cv2
import numpy as np

from models.hard_views import crop, hard_view

REPO = Path(__file__).resolve().parent.parent
VIEWS_PER_OBJECT = 3
DISTRACTORS_PER_SPLIT = 70
Split = Literal["tune", "report"]

LEFT = (0.0, 0.0, 0.5, 1.0)
RIGHT = (0.5, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class PhotoObject:
    """One object: a photo (by source and file name), or a region of it as fractions (x0, y0, x1, y1)."""

    label: str
    source: Literal["ocv", "shared", "matplotlib"]
    name: str
    region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)


def _halves(label_left: str, label_right: str, source: Literal["ocv", "shared"], name: str) -> list[PhotoObject]:
    return [PhotoObject(label_left, source, name, LEFT), PhotoObject(label_right, source, name, RIGHT)]


def _whole(source: Literal["ocv", "shared", "matplotlib"], names: Sequence[str]) -> list[PhotoObject]:
    return [PhotoObject(Path(name).stem.replace("_", " "), source, name) for name in names]


KNOWN: dict[Split, list[PhotoObject]] = {
    "tune": [
        *_halves("zidane", "ancelotti", "shared", "zidane.jpg"),
        *_halves("walker with dog", "horse", "shared", "person.jpg"),
        *_halves("facade", "tower", "ocv", "home.jpg"),
        *_halves("whale and toys", "yellow box", "ocv", "rubberwhale1.png"),
        *_whole("ocv", ["HappyFish.jpg", "aero1.jpg", "apple.jpg", "blox.jpg", "box.png", "butterfly.jpg",
                        "chicky_512.png", "left.jpg", "messi5.jpg", "orange.jpg", "smarties.png",
                        "starry_night.jpg"]),
    ],
    "report": [
        *_halves("ball player", "shirt man", "ocv", "basketball1.png"),
        *_halves("dog", "bicycle", "shared", "dog.jpg"),
        *_halves("brick house", "street", "ocv", "leuvenA.jpg"),
        *_halves("graffiti figure", "rooster", "ocv", "graf1.png"),
        *_whole("ocv", ["WindowsLogo.jpg", "aloeL.jpg", "baboon.jpg", "board.jpg", "building.jpg", "cards.png",
                        "ela_original.jpg", "licenseplate_motion.jpg", "ml.png", "opencv-logo.png",
                        "squirrel_cls.jpg"]),
        *_whole("shared", ["bus.jpg"]),
    ],
}
UNKNOWN_PHOTOS: dict[Split, list[PhotoObject]] = {
    "tune": [
        *_halves("citrus", "kiwi and grapes", "ocv", "fruits.jpg"),
        *_whole("ocv", ["LinuxLogo.jpg", "stuff.jpg"]),
        *_whole("matplotlib", ["grace_hopper.jpg"]),
    ],
    "report": [
        *_whole("ocv", ["pca_test1.jpg", "sudoku.png", "Blender_Suzanne1.jpg"]),
        *_whole("matplotlib", ["Minduka_Present_Blue_Pack.png"]),
    ],
}
UNKNOWN_FRAMES = {"tune": 5, "report": 6}  # Megamind.avi frames, so that each split has ~30 unknown views
SYNTHETIC: dict[Split, list[str]] = {
    "tune": ["pic1.png", "pic3.png", "pic5.png", "detect_blob.png", "notes.png", "imageTextN.png",
             "imageTextR.png", "ellipses.jpg", "mask.png", "templ.png"],
    "report": ["pic2.png", "pic4.png", "pic6.png", "digits.png", "text_defocus.jpg", "text_motion.jpg",
               "gradient.png", "tmpl.png", "chessboard.png"],
}
CHESSBOARDS: dict[Split, list[str]] = {
    "tune": [f"{side}{i:02d}.jpg" for side in ("left", "right") for i in (1, 2, 3, 4, 5, 6, 7)],
    "report": [f"{side}{i:02d}.jpg" for side in ("left", "right") for i in (8, 9, 11, 12, 13, 14)],
}
# Distractor frames per video (vtest.avi fills the rest up to DISTRACTORS_PER_SPLIT).
VIDEO_DISTRACTORS = {"tree.avi": 10, "bikes.mp4": 20}

# Every opencv-doc file the hard set reads (scripts/fetch-media fetches them).
OCV_FILES = sorted(
    {o.name for objs in (*KNOWN.values(), *UNKNOWN_PHOTOS.values()) for o in objs if o.source == "ocv"}
    | {n for names in (*SYNTHETIC.values(), *CHESSBOARDS.values()) for n in names}
    | {"vtest.avi", "tree.avi", "Megamind.avi"}
)


@dataclass(frozen=True)
class HardSet:
    """Where one split of the hard set was written; paths in the list files are relative to ``root``."""

    split: Split
    root: Path
    gallery_file: Path  # known photos + distractors: image<TAB>label
    queries_file: Path  # hard views of known photos
    unknown_file: Path  # hard views of objects the gallery does not hold
    known: int
    distractors: int
    queries: int
    unknown_queries: int

    def summary(self) -> str:
        return (f"hard set {self.split}: gallery {self.known} known + {self.distractors} distractors, "
                f"{self.queries} queries, {self.unknown_queries} unknown queries ({self.root})")


@dataclass(frozen=True)
class MediaDirs:
    ocv: Path  # opencv-doc examples (.cache/media)
    shared_photos: Path
    matplotlib: Path
    bikes: Path

    @staticmethod
    def default() -> MediaDirs:
        import matplotlib  # only for where its sample photos are

        shared = Path(os.environ.get("VIDREC_SHARED_DIR", REPO.parent / "shared"))
        return MediaDirs(
            ocv=REPO / ".cache" / "media",
            shared_photos=shared / "media" / "photos",
            matplotlib=Path(matplotlib.get_data_path()) / "sample_data",
            bikes=REPO / "samples" / "bikes.mp4",
        )

    def path(self, obj: PhotoObject) -> Path:
        folder = {"ocv": self.ocv, "shared": self.shared_photos, "matplotlib": self.matplotlib}[obj.source]
        return folder / obj.name


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        hint = " (run scripts/fetch-media)" if ".cache" in str(path) else ""
        raise FileNotFoundError(f"hard set: cannot read photo {path}{hint}")
    return np.ascontiguousarray(image[:, :, ::-1])


def _region(image: np.ndarray, region: tuple[float, float, float, float]) -> np.ndarray:
    h, w = image.shape[:2]
    x0, y0, x1, y1 = region
    return image[round(y0 * h):round(y1 * h), round(x0 * w):round(x1 * w)].copy()


def _frames(path: Path, split: Split, count: int) -> list[np.ndarray]:
    """``count`` frames evenly spread over the split's half of the video (first half tune, second report).
    Frames are counted by reading: a container's frame count can be wrong (tree.avi says 444, holds 68)."""
    total = _count_frames(path)
    start, stop = (0, total // 2) if split == "tune" else (total // 2, total)
    wanted = set(np.linspace(start, stop - 1, count).round().astype(int).tolist())
    capture = cv2.VideoCapture(str(path))
    try:
        out: list[np.ndarray] = []
        for index in range(max(wanted) + 1):
            ok = capture.grab()
            if ok and index in wanted:
                ok, frame = capture.retrieve()
                out.append(np.ascontiguousarray(frame[:, :, ::-1]))
            if not ok:
                raise ValueError(f"hard set: {path} ended at frame {index} of {total}")
        return out
    finally:
        capture.release()


def _count_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise FileNotFoundError(f"hard set: cannot open video {path}")
    try:
        total = 0
        while capture.grab():
            total += 1
        return total
    finally:
        capture.release()


def _write(path: Path, image_rgb: np.ndarray) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), image_rgb[:, :, ::-1], params):
        raise OSError(f"hard set: cannot write {path}")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def build_hard_set(out_dir: Path, *, split: Split = "tune", seed: int = 0, media: MediaDirs | None = None) -> HardSet:
    """Write one split of the hard set under ``out_dir`` (images/ and the three list files) and return it.
    The same split and seed write the same files."""
    if split not in KNOWN:
        raise ValueError(f"hard set split must be 'tune' or 'report', got {split!r}")
    media = media or MediaDirs.default()
    rng = np.random.default_rng([seed, 0 if split == "tune" else 1])
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)

    # Distractors: synthetic and text images, chessboards, crops of video frames (half to 3/4 of the frame:
    # street scenes that differ from frame to frame even where the camera stands still).
    distractors: list[tuple[str, np.ndarray]] = []
    for name in SYNTHETIC[split] + CHESSBOARDS[split]:
        distractors.append((f"distractor {Path(name).stem}", _read_rgb(media.ocv / name)))
    counts = dict(VIDEO_DISTRACTORS)
    counts["vtest.avi"] = DISTRACTORS_PER_SPLIT - len(distractors) - sum(counts.values())
    for video, count in counts.items():
        path = media.bikes if video == "bikes.mp4" else media.ocv / video
        for i, frame in enumerate(_frames(path, split, count)):
            view = crop(frame, area=float(rng.uniform(0.5, 0.75)), rng=rng)
            distractors.append((f"distractor {Path(video).stem} {split} {i}", view))

    gallery_lines: list[str] = []
    for label, image in distractors:
        name = f"images/{_slug(label)}.jpg"
        _write(out_dir / name, image)
        gallery_lines.append(f"{name}\t{label}")

    def views_of(label: str, image: np.ndarray, kind: str) -> list[str]:
        lines = []
        for v in range(VIEWS_PER_OBJECT):
            other = distractors[int(rng.integers(len(distractors)))][1]
            view, params = hard_view(image, other=other, rng=rng)
            name = f"images/{kind}_{_slug(label)}_{v}.png"
            _write(out_dir / name, view)
            lines.append(f"{name}\t{label}")
        return lines

    query_lines: list[str] = []
    for obj in KNOWN[split]:
        image = _region(_read_rgb(media.path(obj)), obj.region)
        name = f"images/known_{_slug(obj.label)}.jpg"
        _write(out_dir / name, image)
        gallery_lines.append(f"{name}\t{obj.label}")
        query_lines += views_of(obj.label, image, "query")

    unknown_lines: list[str] = []
    unknown_objects = [(f"unknown {o.label}", _region(_read_rgb(media.path(o)), o.region)) for o in UNKNOWN_PHOTOS[split]]
    unknown_objects += [(f"unknown megamind {split} {i}", frame)
                        for i, frame in enumerate(_frames(media.ocv / "Megamind.avi", split, UNKNOWN_FRAMES[split]))]
    for label, image in unknown_objects:
        unknown_lines += views_of(label, image, "unknown")

    files = {"gallery.txt": gallery_lines, "queries.txt": query_lines, "unknown.txt": unknown_lines}
    for file_name, lines in files.items():
        (out_dir / file_name).write_text("\n".join(lines) + "\n")
    return HardSet(
        split=split, root=out_dir, gallery_file=out_dir / "gallery.txt", queries_file=out_dir / "queries.txt",
        unknown_file=out_dir / "unknown.txt", known=len(KNOWN[split]), distractors=len(distractors),
        queries=len(query_lines), unknown_queries=len(unknown_lines),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workers.hard_set OUT_DIR [--split tune|report] [--seed N]``: write one split."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m workers.hard_set", description=main.__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--split", choices=("tune", "report"), default="tune")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_hard_set(args.out_dir, split=args.split, seed=args.seed).summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
