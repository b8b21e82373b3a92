"""Recognizer variants on the hard set (issue 13): recall@1/5, mAP, unknown queries' scores, and cost per crop.

    .venv/bin/python -m bench.retrieval_variants [--rounds 5] [--tune-seeds 0 1 2] [--json out.json]
    .venv/bin/python -m bench.retrieval_variants --learn-centre   # writes models/data/efficientnet_lite0_ml_centre.npz

Every variant is a real ONNX recognizer converted from the pinned EfficientNet-Lite0 weights
(models/export/efficientnet_lite.py), run through models/recognizer.py with the default preprocessing:
- ``today``: the classifier head's average-pooled 1280-d feature (``efficientnet_lite0``), one gallery
  embedding per image;
- ``GeM``: the same feature map pooled by GeM (p = 3);
- ``flip``: the query embedded twice (as is and mirrored) and averaged: twice the recognizer work;
- ``grid9``: each gallery image's embedding is the mean over itself and nine crops
  (models/gallery_views.py): ten runs per gallery image at build time, nothing per query;
- ``multilayer``: the pooled, centred maps of blocks 10, 14 and 15 (``efficientnet_lite0_ml``);
- ``colour``: fused with the crop's colour layout, HSV histograms of 3 horizontal bands
  (models/colour_features.py; ``efficientnet_lite0_mlc``, its weight chosen by bench/colour_weight.py).

Quality: the tune split (mean over ``--tune-seeds``: the same photos, other hard views) is where variants
are chosen; the report split (seed 0, other photos) is only reported. Cost: the query-side recognizer work
on ``--crops`` of the report split's query crops (one batch), the variants' runs alternated within each
round (``timing``); per round, each variant's wall and process-CPU time divided by today's; medians over
rounds. ``--cost-only`` runs just that.

``--json`` also writes, per variant and split, each query's top-1 score, the score of the best entry with
another label and whether the top-1 is right: what the acceptance rule is chosen from
(bench/acceptance_rule.py).

``--learn-centre`` learns the multilayer embedding's part means from the tune split's gallery (seed 0), each
image with its grid9 views: gallery images only, never queries, never the report split.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.export.efficientnet_lite import (
    MULTILAYER_CENTRE,
    MULTILAYER_PARTS,
    convert_efficientnet_lite0,
    default_weights_path,
    split_parts,
)
from models.colour_features import ColourSpec
from models.gallery_eval import mean_average_precision, recall_at_k, relevance
from models.gallery_views import GalleryAugment, gallery_views, mean_embedding
from models.recognizer import Recognizer
from models.runtime import open_model
from models.preprocess_rec import build_rec_preprocess, preprocess_batch
from workers.hard_set import HardSet, build_hard_set

LITE0_OPS = [
    {"ResizeImage": {"size": 224}},
    {"NormalizeImage": {"scale": 1.0, "mean": [127.0, 127.0, 127.0], "std": [128.0, 128.0, 128.0], "order": "hwc"}},
    {"ToCHWImage": None},
]


@dataclass(frozen=True)
class Variant:
    name: str
    embedding: str  # converter embedding: avg | gem | multilayer
    augment: GalleryAugment = "none"
    flip: bool = False
    colour: bool = False  # fused with the crop's colour layout (models/colour_features.py, default ColourSpec)

    @property
    def recognizer_key(self) -> str:
        return self.embedding + (" + colour" if self.colour else "")


VARIANTS = (
    Variant("today (avg head)", "avg"),
    Variant("GeM p3 head", "gem"),
    Variant("avg head + flip", "avg", flip=True),
    Variant("avg head + grid9", "avg", "grid9"),
    Variant("GeM p3 head + grid9", "gem", "grid9"),
    Variant("multilayer", "multilayer"),
    Variant("multilayer + flip", "multilayer", flip=True),
    Variant("multilayer + grid9", "multilayer", "grid9"),
    Variant("multilayer + grid9 + flip", "multilayer", "grid9", flip=True),
    Variant("multilayer + colour + grid9", "multilayer", "grid9", colour=True),
)


def build_recognizers(paths: dict[str, Path], variants: tuple[Variant, ...] | list[Variant]) -> dict[str, Recognizer]:
    """One recognizer per ``Variant.recognizer_key`` (a model, with or without the colour descriptor)."""
    return {v.recognizer_key: Recognizer(paths[v.embedding], LITE0_OPS, colour=ColourSpec() if v.colour else None)
            for v in variants}


def read_list(hard: HardSet, list_file: Path) -> list[tuple[np.ndarray, str]]:
    import cv2

    out = []
    for line in list_file.read_text().splitlines():
        if line:
            name, label = line.split("\t")
            out.append((cv2.imread(str(hard.root / name))[:, :, ::-1].copy(), label))
    return out


def embed_queries(recognizer: Recognizer, images: list[np.ndarray], flip: bool) -> np.ndarray:
    emb = recognizer.embed(images)
    if flip:
        emb = emb + recognizer.embed([np.ascontiguousarray(i[:, ::-1]) for i in images])
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return emb


def embed_gallery(recognizer: Recognizer, images: list[np.ndarray], augment: GalleryAugment) -> np.ndarray:
    return np.stack([mean_embedding(recognizer.embed(gallery_views(image, augment))) for image in images])


def scores_of(gallery: np.ndarray, gallery_labels: list[str], queries: np.ndarray, query_labels: list[str]) -> dict:
    """Ranking metrics of known queries, and per query (known and unknown) the top-1 label's score, the best
    score of another label, and whether the top-1 is right."""
    sims = queries @ gallery.T
    order = np.argsort(-sims, axis=1, kind="stable")
    labels = np.asarray(gallery_labels)
    ranked = [labels[row].tolist() for row in order]
    known = np.asarray([q in set(gallery_labels) for q in query_labels])
    rel = relevance([q for q, k in zip(query_labels, known) if k], [r for r, k in zip(ranked, known) if k])
    counts = {label: gallery_labels.count(label) for label in set(gallery_labels)}
    top1 = sims[np.arange(len(sims)), order[:, 0]]
    second = np.array([max((s for s, lab in zip(sims[i], gallery_labels) if lab != ranked[i][0]), default=-1.0)
                       for i in range(len(sims))])
    return {
        "recall@1": recall_at_k(rel, 1), "recall@5": recall_at_k(rel, 5),
        "mAP": mean_average_precision(rel, [counts[q] for q, k in zip(query_labels, known) if k]),
        "queries": [{"known": bool(k), "right": bool(k and r[0] == q), "top1": float(t), "second": float(s)}
                    for q, k, r, t, s in zip(query_labels, known, ranked, top1, second)],
    }


def evaluate_split(recognizer: Recognizer, hard: HardSet, variant: Variant) -> dict:
    gallery = read_list(hard, hard.gallery_file)
    queries = read_list(hard, hard.queries_file) + read_list(hard, hard.unknown_file)
    g = embed_gallery(recognizer, [i for i, _ in gallery], variant.augment)
    q = embed_queries(recognizer, [i for i, _ in queries], variant.flip)
    return scores_of(g, [lab for _, lab in gallery], q, [lab for _, lab in queries])


def build_models(out: Path, embeddings: set[str]) -> dict[str, Path]:
    return {e: convert_efficientnet_lite0(default_weights_path(), out / e, embedding=e) for e in sorted(embeddings)}


def timing(recognizers: dict[str, Recognizer], crops: list[np.ndarray], rounds: int) -> dict[str, dict]:
    """Cost of each variant's query-side work on ``crops``, the variants alternated within each round (order
    reversed every other round); per round, each variant's time divided by today's in the same round.
    Both wall time and process CPU time (all threads): on a shared machine the CPU time is the steadier
    measure of the work, the wall time what a caller waits. Medians over rounds."""
    wall: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v.name: [] for v in VARIANTS}
    for v in VARIANTS:  # warm-up: first runs allocate
        embed_queries(recognizers[v.recognizer_key], crops[:4], v.flip)
    for r in range(rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for v in order:
            rec = recognizers[v.recognizer_key]
            w0, c0 = time.perf_counter(), time.process_time()
            embed_queries(rec, crops, v.flip)
            wall[v.name].append(time.perf_counter() - w0)
            cpu[v.name].append(time.process_time() - c0)
    base = VARIANTS[0].name
    return {name: {"crops_per_s": len(crops) / statistics.median(wall[name]),
                   "cost_ratio": statistics.median(x / b for x, b in zip(wall[name], wall[base])),
                   "cpu_ratio": statistics.median(x / b for x, b in zip(cpu[name], cpu[base])),
                   "cpu_ms_per_crop": 1000 * statistics.median(cpu[name]) / len(crops)}
            for name in wall}


def learn_centre(work: Path) -> Path:
    """Part means of the multilayer embedding over the tune gallery's images and their grid9 views."""
    hard = build_hard_set(work / "tune0", split="tune", seed=0)
    raw_dir = work / "raw"
    # Converting with centre=None is what state_dict_to_onnx does when the centre is not applied:
    # write that graph directly (it also outputs the uncentred parts).
    from models.export.efficientnet_lite import load_checked_state_dict, state_dict_to_onnx
    import onnx

    state, _ = load_checked_state_dict(default_weights_path(), None)
    raw_dir.mkdir(parents=True, exist_ok=True)
    model_path = raw_dir / "raw.onnx"
    onnx.save(state_dict_to_onnx(state, source="lite0", embedding="multilayer", centre=None), str(model_path))
    model = open_model(model_path)
    pipeline = build_rec_preprocess(LITE0_OPS)
    rows = []
    for image, _ in read_list(hard, hard.gallery_file):
        views = gallery_views(image, "grid9")
        (raw,) = model.run({"x": preprocess_batch(views, pipeline)}, ["raw_parts"])
        rows.append(raw)
    parts = split_parts(np.concatenate(rows))
    MULTILAYER_CENTRE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(MULTILAYER_CENTRE, **{name: parts[name].mean(axis=0).astype(np.float32) for name in MULTILAYER_PARTS})
    return MULTILAYER_CENTRE


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--learn-centre", action="store_true")
    parser.add_argument("--cost-only", action="store_true", help="only the cost rounds (on the report split's crops)")
    parser.add_argument("--crops", type=int, default=32, help="crops per timed run (report split's queries)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vidrec-variants-") as tmp:
        work = Path(tmp)
        if args.learn_centre:
            print(f"wrote {learn_centre(work)}")
            return 0
        splits = {} if args.cost_only else {
            f"tune{s}": build_hard_set(work / f"tune{s}", split="tune", seed=s) for s in args.tune_seeds}
        splits["report"] = build_hard_set(work / "report", split="report", seed=0)
        paths = build_models(work / "models", {v.embedding for v in VARIANTS})
        recognizers = build_recognizers(paths, VARIANTS)
        results: dict[str, dict] = {}
        if not args.cost_only:
            for v in VARIANTS:
                results[v.name] = {name: evaluate_split(recognizers[v.recognizer_key], hard, v) for name, hard in splits.items()}
        report = splits["report"]
        crops = [i for i, _ in read_list(report, report.queries_file) + read_list(report, report.unknown_file)]
        cost = timing(recognizers, crops[:args.crops], args.rounds)
    if args.cost_only:
        print("| variant | crops/s (wall) | wall vs today | CPU ms per crop | CPU vs today |")
        print("|---|---|---|---|---|")
        for v in VARIANTS:
            c = cost[v.name]
            print(f"| {v.name} | {c['crops_per_s']:.1f} | {c['cost_ratio']:.2f}x | {c['cpu_ms_per_crop']:.1f} | {c['cpu_ratio']:.2f}x |")
        return 0
    tunes = [f"tune{s}" for s in args.tune_seeds]
    print("| variant | tune r@1 | tune r@5 | tune mAP | report r@1 | report r@5 | report mAP | crops/s | CPU per crop vs today |")
    print("|---|---|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        res = results[v.name]
        tune = {m: float(np.mean([res[t][m] for t in tunes])) for m in ("recall@1", "recall@5", "mAP")}
        rep = res["report"]
        print(f"| {v.name} | {tune['recall@1']:.3f} | {tune['recall@5']:.3f} | {tune['mAP']:.3f} | "
              f"{rep['recall@1']:.3f} | {rep['recall@5']:.3f} | {rep['mAP']:.3f} | "
              f"{cost[v.name]['crops_per_s']:.1f} | {cost[v.name]['cpu_ratio']:.2f}x |")
    if args.json is not None:
        args.json.write_text(json.dumps({"results": results, "cost": cost, "tune_splits": tunes}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
