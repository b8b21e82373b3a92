"""What each models/graph_rewrite.py rewrite buys a model on ONNX Runtime, alternated in one process.

    VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/graph_rewrite.py --rounds 5
    .venv/bin/python bench/graph_rewrite.py --model path/to/model.onnx --size 224

Per round, each variant runs ``--runs`` times on a real photo (letterboxed as the detector does), in turn: the
file as it is, with weights dropped from the graph's inputs, and with every rewrite (what vidrec loads). The
ONNX Runtime settings are vidrec's (models/runtime.py: no spinning), at ``--threads``. Printed: the median ms
per run of each variant and its ratio to the file as it is.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from models.graph_rewrite import drop_initializer_inputs, optimized  # noqa: E402
from models.preprocess_det import preprocess_image  # noqa: E402


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_model = Path(os.environ.get("VIDREC_MODEL_DIR", REPO.parent / "shared" / "models")) / "picodet_s_coco" / "picodet_s_320_coco.onnx"
    parser.add_argument("--model", type=Path, default=default_model)
    parser.add_argument("--size", type=int, default=320, help="square input size")
    parser.add_argument("--photo", type=Path, default=REPO.parent / "shared" / "media" / "photos" / "bus.jpg")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    variants = {"as exported": onnx.load(str(args.model))}
    dropped = onnx.load(str(args.model))
    drop_initializer_inputs(dropped)
    variants["weights not inputs"] = dropped
    variants["every rewrite (vidrec)"] = optimized(onnx.load(str(args.model)))
    sessions = {name: session(model, args.threads) for name, model in variants.items()}
    blob, _ = preprocess_image(cv2.imread(str(args.photo)), size=args.size)
    feeds = {name: {s.get_inputs()[0].name: blob[None]} for name, s in sessions.items()}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for round_ in range(args.rounds):
        order = list(sessions) if round_ % 2 == 0 else list(reversed(sessions))
        for name in order:
            for _ in range(3):
                sessions[name].run(None, feeds[name])
            start = time.perf_counter()
            for _ in range(args.runs):
                sessions[name].run(None, feeds[name])
            times[name].append((time.perf_counter() - start) / args.runs * 1000)
    base = statistics.median(times["as exported"])
    print(f"{args.model.name}, {args.threads} threads, {args.rounds} rounds x {args.runs} runs")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:24s} {median:6.1f} ms  x{base / median:.2f}")


if __name__ == "__main__":
    main()
