"""Inference throughput with batching vs batch 1, on the same 720p frames, for three detector/runtime set-ups.

Run:  VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/batching.py --frames 200 --repeat 3

The frames: the first ``--frames`` frames of vtest.avi (real pedestrians, 768x576) scaled to 1280x720, decoded
once and kept in memory. Each set-up is the whole system the inference worker runs (``build_system(cfg).run``:
detector, recognizer on every box plus the whole frame, gallery search) with the sample gallery:

- ``onnx``: ONNX Runtime, the shared PicoDet ONNX (its batch dimension is fixed at 1, so a batch of frames goes
  through the detector one frame at a time; the recognizer batches the crops of a batch either way);
- ``paddle``: Paddle Inference + oneDNN, the PaddleDetection export (dynamic batch) and the Paddle recognizer;
- ``onnx-converted``: ONNX Runtime, the PaddleDetection export converted with ``vidrec models convert``
  (paddle2onnx; dynamic batch kept), checked here to give the same boxes as Paddle on these frames.

Every (repeat, batch size) round runs each set-up over all frames in turn (``run(frames[i:i+b])`` for
i = 0, b, 2b, ...), so the set-ups share the machine's noise; the table keeps the median frames/s.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from config import load_config
from models.resolve import resolve_model_dir
from workers.system import build_system

REPO = Path(__file__).resolve().parent.parent


def load_frames(path: Path, count: int, width: int, height: int) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            image = frame.to_ndarray(format="bgr24")
            frames.append(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR))
            if len(frames) == count:
                break
    return frames


def convert_detector(out_dir: Path) -> Path:
    """The PaddleDetection PicoDet export → out_dir/model.onnx (+ its infer_cfg.yml, which says how to
    preprocess and names the classes)."""
    from workers.models_convert import convert_paddle_to_onnx

    paddle_dir = resolve_model_dir("picodet_s_coco_paddle", needed=("infer_cfg.yml",))
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(paddle_dir / "infer_cfg.yml", out_dir / "infer_cfg.yml")
    convert_paddle_to_onnx(paddle_dir, out_dir / "model.onnx")
    return out_dir


def same_boxes(a, b, frames: list[np.ndarray], tol_px: float = 1.0, tol_score: float = 1e-3) -> str | None:
    """None when detectors a and b give the same boxes (within tol) on every frame, else the first difference."""
    for k, (da, db) in enumerate(zip(a.detect(frames), b.detect(frames))):
        ba, bb, sa, sb = da.xyxy, db.xyxy, da.confidence, db.confidence
        if ba.shape != bb.shape or not np.array_equal(da.class_id, db.class_id):
            return f"frame {k}: {len(ba)} vs {len(bb)} boxes"
        if ba.size and (np.abs(ba - bb).max() > tol_px or np.abs(sa - sb).max() > tol_score):
            return f"frame {k}: boxes differ by {np.abs(ba - bb).max():.2f} px, scores by {np.abs(sa - sb).max():.4f}"
    return None


def frames_per_s(system, frames: list[np.ndarray], batch: int) -> tuple[float, float, float]:
    """(frames/s, detect ms per frame, recognize+search ms per frame) over all frames in batches of ``batch``."""
    detect = recognize = 0.0
    start = time.perf_counter()
    for i in range(0, len(frames), batch):
        out = system.run(frames[i : i + batch])
        detect += out.times.detect
        recognize += out.times.recognize + out.times.search
    elapsed = time.perf_counter() - start
    return len(frames) / elapsed, detect / len(frames), recognize / len(frames)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=REPO / ".cache" / "media" / "vtest.avi")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="Global.cpu_num_threads")
    parser.add_argument("--index-dir", type=Path, default=REPO / "out" / "sample_index")
    parser.add_argument("--setups", default="onnx,paddle,onnx-converted")
    args = parser.parse_args()

    width, height = (int(v) for v in args.size.split("x"))
    frames = load_frames(args.video, args.frames, width, height)
    if len(frames) < args.frames:
        print(f"{args.video}: only {len(frames)} frames", file=sys.stderr)
        return 1
    batches = [int(v) for v in args.batches.split(",")]
    setups = args.setups.split(",")
    common = [f"Global.cpu_num_threads={args.threads}", f"IndexProcess.index_dir={args.index_dir}"]
    tmp = Path(tempfile.mkdtemp(prefix="vidrec-batching-"))
    systems = {}
    try:
        for name in setups:
            if name == "onnx":
                overrides = ["Global.backend=onnx"]
            elif name == "paddle":
                overrides = ["Global.backend=paddle"]
            elif name == "onnx-converted":
                folder = convert_detector(tmp / "picodet_converted")
                overrides = ["Global.backend=onnx", f"Global.det_inference_model_dir={folder}",
                             "Detector.model_file=model.onnx"]
            else:
                parser.error(f"unknown set-up {name!r}")
            systems[name] = build_system(load_config(None, common + overrides))
        if "paddle" in systems and "onnx-converted" in systems:
            diff = same_boxes(systems["paddle"].detector, systems["onnx-converted"].detector, frames[:: max(1, len(frames) // 20)])
            print(f"converted ONNX vs Paddle detector on {len(frames[::max(1, len(frames) // 20)])} frames: "
                  f"{'same boxes (within 1 px, 0.001 score)' if diff is None else diff}", file=sys.stderr)
        for system in systems.values():  # warm-up: the runtimes' first runs allocate
            for b in batches:
                system.run(frames[:b])

        cells: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for r in range(args.repeat):
            for b in batches:
                for name, system in systems.items():
                    cells.setdefault((name, b), []).append(frames_per_s(system, frames, b))
                print(f"repeat {r + 1}/{args.repeat}, batch {b}: " + ", ".join(
                    f"{n} {cells[(n, b)][-1][0]:.1f}" for n in systems), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{len(frames)} frames of {args.video.name} at {width}x{height}, {args.threads} threads, median of "
          f"{args.repeat}; frames/s (detect ms/frame, recognize+search ms/frame)\n")
    print("| batch | " + " | ".join(setups) + " |")
    print("|---|" + "---|" * len(setups))
    for b in batches:
        row = []
        for name in setups:
            runs = cells[(name, b)]
            fps = statistics.median(v[0] for v in runs)
            det = statistics.median(v[1] for v in runs)
            rec = statistics.median(v[2] for v in runs)
            base = statistics.median(v[0] for v in cells[(name, batches[0])])
            row.append(f"{fps:.1f} ({det:.0f} / {rec:.0f}) ×{fps / base:.2f}")
        print(f"| {b} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
