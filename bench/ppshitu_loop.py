"""`vidrec video` against a PP-ShiTu-style loop on the same models, alternated in one process (issue 13, part 5).

    VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/ppshitu_loop.py --rounds 3
    VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/ppshitu_loop.py --rounds 1 --profile
    # before/after a change, alternated (the script from this checkout, the code from each):
    .venv/bin/python bench/ab_checkouts.py --before /tmp/vidrec-before --after . --rounds 2 -- \
        $PWD/bench/ppshitu_loop.py --rounds 1 --index-dir $PWD/out/sample_index

The PP-ShiTu-style loop does per frame what PaddleClas's ``deploy/python/predict_system.py`` does per image
(docs/ppshitu-compat.md): the detector at batch 1; the top ``max_det_results`` boxes above
``threshold`` plus the whole frame; for each box, crop, embed at batch 1 (one recognizer call per crop) and search
the gallery for ``return_k`` (one search per crop), keep the top-1 at ``score_thres``; greedy NMS over the kept
boxes by score; then one JSON line per frame. It uses the very objects ``vidrec video`` uses (one
``build_system``: PicoDet-S 320, the configured recognizer with its preprocessing, the gallery, the same ONNX
Runtime sessions and thread settings), and decodes with the same source (PyAV), so the gap is how the work is
driven, not what runs. With ``--loop-precision fp32`` (the default) the loop gets its own ``build_system`` at
``Global.precision=fp32``, as PP-ShiTu runs these networks on a CPU, while ``vidrec video`` runs what
``Global.precision`` picks (the int8 recognizer where its guard passed, docs/int8.md): the same networks and
weights, vidrec's own quantized copy. ``--loop-precision same`` compares the driving alone.

``vidrec video`` runs as the command does (``run_video_job``: decode, ``RecognitionStep``, JSONL to a temporary
file) with ``Tracker.enabled=false`` (issue 13 compares the two without tracking, whose gain is issue 11's) and
otherwise the configuration given with ``-o`` (default: the defaults).

Per round the two run back to back, A B then B A the next round, over the whole clip (vtest.avi, the crowded
opencv-doc clip, by default). Printed: frames/s of each per round, their ratio per round and the median ratio.
``--profile`` adds one more pass of each with stage clocks (decode, detector, crop preprocessing, recognizer,
search, the rest) to say where time goes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Appended, not inserted: with PYTHONPATH=<another checkout> (bench/ab_checkouts.py) that checkout's vidrec runs.
sys.path.append(str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from config import load_config  # noqa: E402
from models.nms import nms_xyxy  # noqa: E402
from models.shitu import ShituSystem, crop_boxes, with_whole_frame  # noqa: E402
from sample_gallery import ensure_gallery  # noqa: E402
from stream.sources import open_source  # noqa: E402
from tests.media import fetched_media  # noqa: E402
from workers.system import build_system  # noqa: E402
from workers.video_job import VideoOutputs, run_video_job  # noqa: E402

TRACKER_OFF = "Tracker.enabled=false"


class Clocks:
    """Seconds per stage, summed (``--profile``); a no-op context when profiling is off."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, obj: object, method: str, stage: str) -> None:
        """Time every call of ``obj.method`` as ``stage``."""
        inner = getattr(obj, method)

        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - t0

        setattr(obj, method, timed)

    def unwrap(self, obj: object, method: str) -> None:
        if method in vars(obj):
            delattr(obj, method)


def ppshitu_loop(cfg, system: ShituSystem, clip: Path, out_path: Path, clocks: Clocks) -> int:
    """predict_system.py's per-image steps over every frame of ``clip``; returns frames done."""
    g, index = cfg.Global, cfg.IndexProcess
    assert system.recognizer is not None and system.gallery is not None
    frames = 0
    decode_s = 0.0
    with open(out_path, "w") as out, open_source(clip) as source:
        it = iter(source)
        while True:
            t0 = time.perf_counter()
            frame = next(it, None)
            decode_s += time.perf_counter() - t0
            if frame is None:
                break
            image = frame.image_bgr
            (det,) = system.detector.detect([image])  # batch 1, as PP-ShiTu asserts
            boxes, det_scores, _ = with_whole_frame(det, width=frame.width, height=frame.height)
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)  # PP-ShiTu reads images as RGB once
            kept_boxes, kept_labels, kept_scores = [], [], []
            for box, crop in zip(boxes, crop_boxes(rgb, boxes)):
                embedding = system.recognizer.embed([crop])  # one crop per call
                found = system.gallery.search(embedding, index.return_k)  # one search per crop
                label, score = found.labels[0][0], float(found.scores[0, 0])
                if label is not None and score >= index.score_thres:
                    kept_boxes.append(box)
                    kept_labels.append(label)
                    kept_scores.append(score)
            objects = []
            if kept_boxes:
                keep = nms_xyxy(np.asarray(kept_boxes), np.asarray(kept_scores, np.float32), g.rec_nms_thresold)
                objects = [{"bbox": [float(v) for v in kept_boxes[i]], "rec_docs": kept_labels[i],
                            "rec_scores": kept_scores[i]} for i in keep]
            out.write(json.dumps({"frame_index": frame.index, "objects": objects}) + "\n")
            frames += 1
    clocks.seconds["decode"] += decode_s
    return frames


def vidrec_video(cfg, system: ShituSystem, clip: Path, out_path: Path) -> int:
    summary = run_video_job(cfg, system, clip, VideoOutputs(json_path=out_path, video_path=None),
                            class_names=system.detector.class_names, progress=False)
    return summary.frames


def profiled(name: str, run, system: ShituSystem, clocks: Clocks) -> tuple[int, float]:  # noqa: ANN001
    """One pass with stage clocks on the system's parts; returns (frames, seconds)."""
    parts = [(system.detector, "detect", "detector (preprocess + run + decode boxes)"),
             (system.recognizer, "embed", "recognizer (crop preprocess + run)"),
             (system.gallery, "search", "gallery search")]
    for obj, method, stage in parts:
        if hasattr(obj, method):
            clocks.wrap(obj, method, stage)
    t0 = time.perf_counter()
    try:
        frames = run()
    finally:
        for obj, method, _ in parts:
            clocks.unwrap(obj, method)
    return frames, time.perf_counter() - t0


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", type=Path, nargs="?", help="default: vtest.avi (scripts/fetch-media)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--index-dir", type=Path, default=REPO / "out" / "sample_index")
    parser.add_argument("--profile", action="store_true", help="one more pass of each with stage clocks")
    parser.add_argument("-o", dest="override", action="append", default=[], help="more vidrec -o overrides (both)")
    parser.add_argument("--video-o", dest="video_override", action="append", default=[],
                        help="-o overrides for vidrec video only (e.g. Global.cpu_num_threads=1): the loop keeps the defaults")
    parser.add_argument("--loop-precision", choices=("same", "fp32"), default="fp32",
                        help="fp32 (default): the loop runs the fp32 models, as PP-ShiTu does on a CPU, and vidrec "
                             "video what Global.precision picks (int8 where its guard passed); same: one system")
    args = parser.parse_args()
    ensure_gallery(args.index_dir)
    clip = args.clip or fetched_media("vtest.avi")
    overrides = [f"IndexProcess.index_dir={args.index_dir}", TRACKER_OFF, *args.override]
    if args.video_override and args.loop_precision == "same":
        parser.error("--video-o needs the loop's own system: leave out --loop-precision same")
    cfg = load_config(None, [*overrides, *args.video_override])
    system = build_system(cfg)
    # The same networks and weights either way; what differs with fp32 is vidrec's int8 copy (issue 13 part 3).
    loop_cfg = cfg if args.loop_precision == "same" else load_config(None, [*overrides, "Global.precision=fp32"])
    loop_system = system if args.loop_precision == "same" else build_system(loop_cfg)
    loop_name, video_name = "PP-ShiTu-style loop", "vidrec video (tracking off)"
    fps: dict[str, list[float]] = {loop_name: [], video_name: []}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.jsonl"
        runs = {loop_name: lambda: ppshitu_loop(loop_cfg, loop_system, clip, out, Clocks(False)),
                video_name: lambda: vidrec_video(cfg, system, clip, out)}
        with open_source(clip) as source:  # warm-up: the runtimes' first runs of the crop counts this clip has
            for frame, _ in zip(source, range(30)):
                for warmed in {id(system): system, id(loop_system): loop_system}.values():
                    warmed.run([frame.image_bgr])
        for k in range(args.rounds):
            order = [loop_name, video_name] if k % 2 == 0 else [video_name, loop_name]
            for name in order:
                t0 = time.perf_counter()
                frames = runs[name]()
                fps[name].append(frames / (time.perf_counter() - t0))
                print(f"round {k + 1}: {name}: {fps[name][-1]:.1f} fps ({frames} frames); load average {load()}",
                      file=sys.stderr, flush=True)
        profiles = {}
        if args.profile:
            for name in (loop_name, video_name):
                clocks = Clocks(True)
                run = ((lambda c=clocks: ppshitu_loop(loop_cfg, loop_system, clip, out, c)) if name == loop_name
                       else runs[name])
                frames, seconds = profiled(name, run, loop_system if name == loop_name else system, clocks)
                profiles[name] = (frames, seconds, dict(clocks.seconds))

    ratios = [v / l for v, l in zip(fps[video_name], fps[loop_name])]
    print(f"clip: {clip.name}; config: {' '.join(overrides)}; vidrec video only: {' '.join(args.video_override) or '-'}; "
          f"loop precision {args.loop_precision}; cpu threads: video {cfg.Global.cpu_num_threads}, loop {loop_cfg.Global.cpu_num_threads}; "
          f"{os.cpu_count()} cores; {args.rounds} rounds (A B, B A, ...); load average at the end {load()}\n")
    print("| run | fps per round | median fps |")
    print("|---|---|---|")
    for name, values in fps.items():
        print(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {statistics.median(values):.1f} |")
    print(f"| vidrec video / loop | {', '.join(f'{r:.2f}' for r in ratios)} | {statistics.median(ratios):.2f} |")
    if profiles:
        print("\n| stage (ms per frame) | " + " | ".join(profiles) + " |")
        print("|---|" + "---|" * len(profiles))
        stages = sorted({s for _, _, c in profiles.values() for s in c})
        for stage in [*stages, "total"]:
            cells = []
            for frames, seconds, clocks in profiles.values():
                value = seconds if stage == "total" else clocks.get(stage)
                cells.append("-" if value is None else f"{1000 * value / frames:.1f}")
            print(f"| {stage} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
