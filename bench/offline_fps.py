"""Offline throughput of `vidrec video` on a clip, next to decode-only and model-only throughput.

Run:  VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/offline_fps.py samples/bikes.mp4 \
          --index-dir out/sample_index --repeat 3

All variants run in one process, interleaved per repeat, so the ratios hold on a noisy machine.
Prints a Markdown table (medians over repeats) for docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from config import load_config
from stream.sources import open_source
from workers.system import build_system
from workers.video_job import VideoOutputs, run_video_job


def decode_only(path: Path) -> tuple[int, float]:
    start = time.perf_counter()
    with open_source(path) as source:
        frames = sum(1 for _ in source)
    return frames, time.perf_counter() - start


def models_only(system, images) -> tuple[int, float]:
    start = time.perf_counter()
    for image in images:
        system.run([image])
    return len(images), time.perf_counter() - start


def full_job(cfg, system, path: Path, out_dir: Path) -> tuple[int, float]:
    outputs = VideoOutputs(json_path=out_dir / "bench.jsonl", video_path=None)
    start = time.perf_counter()
    summary = run_video_job(cfg, system, path, outputs, class_names=system.detector.class_names, progress=False)
    return summary.frames, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clip", type=Path)
    parser.add_argument("--index-dir", help="gallery index (recognizer and search run only with one)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("-o", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    overrides = list(args.overrides)
    if args.index_dir:
        overrides.append(f"IndexProcess.index_dir={args.index_dir}")
    cfg = load_config(None, overrides)
    system = build_system(cfg)
    with open_source(args.clip) as source:
        images = [frame.image_bgr for frame in source]

    detector_only = build_system(load_config(None, [o for o in overrides if not o.startswith("IndexProcess.index_dir")]))
    rows: dict[str, list[float]] = {"decode only (PyAV → BGR)": [], "detector only": [], "models only (detect + embed + search)": [], "vidrec video → JSONL": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            n, s = decode_only(args.clip)
            rows["decode only (PyAV → BGR)"].append(n / s)
            n, s = models_only(detector_only, images)
            rows["detector only"].append(n / s)
            if args.index_dir:
                n, s = models_only(system, images)
                rows["models only (detect + embed + search)"].append(n / s)
            n, s = full_job(cfg, system, args.clip, Path(tmp))
            rows["vidrec video → JSONL"].append(n / s)

    print(f"clip: {args.clip.name}, {len(images)} frames {images[0].shape[1]}x{images[0].shape[0]}; "
          f"config: {' '.join(overrides) or 'defaults'}; cpu threads {cfg.Global.cpu_num_threads}; "
          f"{os.cpu_count()} cores; repeats {args.repeat}")
    print("| path | fps (median) | min | max |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        if values:
            print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
