"""Paddle Inference vs ONNX Runtime on the same real weights, at batch 1, 4 and 8.

Run:  VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/backends.py --repeat 5

Both backends load both models in one process; every (model, batch) cell alternates the backends
repeat times and keeps the median images/s, so the ratios hold on a noisy machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import cv2
import numpy as np

from config import load_config
from workers.system import build_detector, build_recognizer

PHOTOS = ("bus.jpg", "dog.jpg", "person.jpg", "zidane.jpg")


def images_per_s(fn, batch: list[np.ndarray], seconds: float = 1.5) -> float:
    fn(batch)  # warm-up (first runs allocate)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(batch)
        done += len(batch)
    return done / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="../shared/media/photos")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    images = [cv2.imread(f"{args.photos}/{name}") for name in PHOTOS]
    if any(im is None for im in images):
        print(f"photos not found under {args.photos}", file=sys.stderr)
        return 1
    crops = [cv2.cvtColor(im[: im.shape[0] // 2, : im.shape[1] // 2], cv2.COLOR_BGR2RGB) for im in images]
    models = {}
    for backend in ("paddle", "onnx"):
        cfg = load_config(None, [f"Global.backend={backend}", f"Global.cpu_num_threads={args.threads}", "IndexProcess.batch_size=8"])
        models[("detector", backend)] = build_detector(cfg).detect
        models[("recognizer", backend)] = build_recognizer(cfg).embed

    print(f"| model | batch | Paddle + oneDNN (img/s) | ONNX Runtime (img/s) | ONNX / Paddle |")
    print("|---|---|---|---|---|")
    for model, inputs in (("detector", images), ("recognizer", crops)):
        for batch_size in (1, 4, 8):
            batch = [inputs[i % len(inputs)] for i in range(batch_size)]
            cells: dict[str, list[float]] = {"paddle": [], "onnx": []}
            for _ in range(args.repeat):
                for backend in ("paddle", "onnx"):
                    cells[backend].append(images_per_s(models[(model, backend)], batch))
            paddle, onnx = statistics.median(cells["paddle"]), statistics.median(cells["onnx"])
            name = "PicoDet-S 320" if model == "detector" else "EfficientNet-Lite0 224"
            print(f"| {name} | {batch_size} | {paddle:.1f} | {onnx:.1f} | {onnx / paddle:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
