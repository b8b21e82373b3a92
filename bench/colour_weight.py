"""How much colour layout to fuse into the multilayer embedding (models/colour_features.py): the weight sweep.

    VIDREC_MODEL_DIR=../shared/models .venv/bin/python -m bench.colour_weight [--weights 0 0.5 0.7 0.85 1 1.2 1.4]

Two kinds of query, each with a tune part (where the weight is chosen) and a report part (only reported):

* **the hard set** (workers/hard_set.py, as bench/retrieval_variants.py): objects under hard views; recall@1
  and mAP, gallery images with their grid9 views. Tune = seeds 0, 1, 2 of the tune split, report = the
  report split (other photos).
* **pedestrians** (the vtest.avi enrol-and-find scenario of tests/test_retrieval_quality.py: four people
  enrolled from one detector box each, truth by its ``_track`` rule): for each person, every person box of
  the frames of its truth track (enrolment frame left out) ranked by similarity to its enrolment; average
  precision with the truth box as the one relevant box per frame; the mean over the people. Tune = A and B,
  report = C and D (the splits of bench/tracking_ab.py).

The network runs once per crop; the colour descriptor once per crop; each weight only fuses them again. The
chosen weight maximises the sum of the hard set's tune recall@1 and the pedestrians' tune mean AP: one
measure of each kind of query, neither allowed to decide alone.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.retrieval_variants import LITE0_OPS, build_models, read_list, scores_of  # noqa: E402
from config import load_config  # noqa: E402
from models.colour_features import ColourSpec, colour_histograms, fuse  # noqa: E402
from models.gallery_views import gallery_views, mean_embedding  # noqa: E402
from models.recognizer import Recognizer  # noqa: E402
from models.shitu import crop_boxes  # noqa: E402
from stream.sources import open_source  # noqa: E402
from tests.media import fetched_media  # noqa: E402
from tests.test_retrieval_quality import MATCH_IOU, PEDESTRIANS, WINDOW, _iou, _track  # noqa: E402
from workers.hard_set import build_hard_set  # noqa: E402
from workers.system import build_detector  # noqa: E402

PEOPLE = list(PEDESTRIANS)
SPLITS = {"tune": PEOPLE[:2], "report": PEOPLE[2:], "all": PEOPLE}


class Parts:
    """A crop's network embedding and colour descriptor, each computed once, fused per weight."""

    def __init__(self, recognizer: Recognizer, crops: list[np.ndarray]) -> None:
        self.network = recognizer.embed(crops)
        self.colour = colour_histograms(crops, ColourSpec())

    def at(self, weight: float) -> np.ndarray:
        return self.network if weight == 0 else fuse(self.network, self.colour, weight)


def hard_set_scores(recognizer: Recognizer, work: Path, weights: list[float]) -> dict[float, dict[str, dict]]:
    splits = {f"tune{s}": build_hard_set(work / f"tune{s}", split="tune", seed=s) for s in (0, 1, 2)}
    splits["report"] = build_hard_set(work / "report", split="report", seed=0)
    out: dict[float, dict[str, dict]] = {w: {} for w in weights}
    for name, hard in splits.items():
        gallery = read_list(hard, hard.gallery_file)
        queries = read_list(hard, hard.queries_file) + read_list(hard, hard.unknown_file)
        views = [gallery_views(image, "grid9") for image, _ in gallery]
        view_parts = Parts(recognizer, [v for vs in views for v in vs])
        query_parts = Parts(recognizer, [image for image, _ in queries])
        bounds = np.cumsum([0] + [len(vs) for vs in views])
        for w in weights:
            fused = view_parts.at(w)
            g = np.stack([mean_embedding(fused[a:b]) for a, b in zip(bounds[:-1], bounds[1:])])
            out[w][name] = scores_of(g, [lab for _, lab in gallery], query_parts.at(w), [lab for _, lab in queries])
    return out


def pedestrian_aps(recognizer: Recognizer, weights: list[float]) -> dict[float, list[float]]:
    """Per weight, each person's average precision (order of ``PEOPLE``)."""
    wanted = {i for start, _ in PEDESTRIANS.values() for i in range(start - WINDOW, start + WINDOW + 1)}
    frames: dict[int, np.ndarray] = {}
    with open_source(fetched_media("vtest.avi")) as source:
        for frame in source:
            if frame.index in wanted:
                frames[frame.index] = frame.image_bgr
            if frame.index == max(wanted):
                break
    # The scenario's detector settings: more, weaker boxes (tests/test_retrieval_quality.py).
    cfg = load_config(None, ["Global.threshold=0.3", "Global.max_det_results=10"])
    detector = build_detector(cfg)
    person = list(detector.class_names).index("person")
    boxes = {}
    for index in sorted(frames):
        found = detector.detect([frames[index]])[0]
        boxes[index] = [tuple(float(v) for v in xyxy) for xyxy, c in zip(found.xyxy, found.class_id) if c == person]

    class _Box:  # what ``_track`` reads
        def __init__(self, xyxy: tuple) -> None:
            self.xyxy, self.det_class_id = xyxy, person

    truth = {p: _track({i: [_Box(b) for b in bs] for i, bs in boxes.items()}, start, box, person)
             for p, (start, box) in PEDESTRIANS.items()}
    items = [(p, PEDESTRIANS[p][0], tuple(float(v) for v in PEDESTRIANS[p][1])) for p in PEOPLE]
    items += [(None, i, b) for i in sorted(boxes) for b in boxes[i]]
    crops = [crop_boxes(cv2.cvtColor(frames[i], cv2.COLOR_BGR2RGB), np.array([b], dtype=np.float32))[0]
             for _, i, b in items]
    parts = Parts(recognizer, crops)
    row = {(i, b): n for n, (p, i, b) in enumerate(items) if p is None}
    out = {}
    for w in weights:
        e = parts.at(w)
        sims = e[len(PEOPLE):] @ e[:len(PEOPLE)].T
        aps = []
        for k, p in enumerate(PEOPLE):
            scored = [(sims[row[(i, b)] - len(PEOPLE), k], _iou(b, t) >= MATCH_IOU)
                      for i, t in truth[p].items() if i != PEDESTRIANS[p][0] for b in boxes[i]]
            scored.sort(key=lambda pair: -pair[0])
            hits = np.array([rel for _, rel in scored], dtype=float)
            precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
            aps.append(float((precision * hits).sum() / max(hits.sum(), 1)))
        out[w] = aps
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=float, nargs="+", default=[0, 0.5, 0.7, 0.85, 1.0, 1.2, 1.4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vidrec-colour-") as tmp:
        work = Path(tmp)
        path = build_models(work / "models", {"multilayer"})["multilayer"]
        recognizer = Recognizer(path, LITE0_OPS)
        hard = hard_set_scores(recognizer, work, args.weights)
        people = pedestrian_aps(recognizer, args.weights)
    print("| colour weight | hard tune r@1 | hard tune mAP | pedestrians tune AP (A, B) | tune sum | "
          "hard report r@1 | hard report mAP | pedestrians report AP (C, D) | pedestrians all four AP |")
    print("|---|---|---|---|---|---|---|---|---|")
    best = max(args.weights, key=lambda w: np.mean([hard[w][f"tune{s}"]["recall@1"] for s in (0, 1, 2)])
               + np.mean(people[w][:2]))
    for w in args.weights:
        tune_r1 = np.mean([hard[w][f"tune{s}"]["recall@1"] for s in (0, 1, 2)])
        tune_map = np.mean([hard[w][f"tune{s}"]["mAP"] for s in (0, 1, 2)])
        aps = people[w]
        mark = " (chosen)" if w == best else ""
        print(f"| {w:g}{mark} | {tune_r1:.3f} | {tune_map:.3f} | {np.mean(aps[:2]):.3f} | {tune_r1 + np.mean(aps[:2]):.3f} | "
              f"{hard[w]['report']['recall@1']:.3f} | {hard[w]['report']['mAP']:.3f} | {np.mean(aps[2:]):.3f} | "
              f"{np.mean(aps):.3f} |")
    print(f"chosen on the tune parts: weight {best:g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
