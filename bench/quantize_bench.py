"""INT8 vs fp32 on this CPU: each model's speed at batch 1/4/8 and its guard numbers, and `vidrec video` end to end.

Run (after `vidrec models quantize`, which writes the int8 copies and their guard reports into the cache):

    VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/quantize_bench.py --rounds 9
    VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/quantize_bench.py --rounds 0 --video --video-rounds 3

Models: the run alone on preprocessed real inputs (the guard frames of samples/bikes.mp4 and vtest.avi, and the
recognizer's crops of them), fp32 and int8 alternated round by round in one process (``measure_speed`` of
workers/models_quantize.py with more rounds); medians. The guard numbers are the reports' (measured when the
copies were made). ``--video``: `vidrec video` on vtest.avi with tracking off and the sample gallery, every frame
detected and every box recognised, with ``VIDREC_PRECISION`` fp32 and auto (what a VNNI machine runs by
default) alternated, one process per run; frames/s as the command reports it. Prints Markdown tables.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from config import load_config  # noqa: E402
from models.preprocess_det import preprocess_batch as det_preprocess  # noqa: E402
from models.preprocess_rec import build_rec_preprocess, preprocess_batch as rec_preprocess  # noqa: E402
from models.runtime import open_model  # noqa: E402
from models.shitu import crop_boxes  # noqa: E402
from workers.models_quantize import default_footage, measure_speed, split_frames  # noqa: E402
from workers.precision import int8_files, int8_status, read_report  # noqa: E402
from workers.system import build_detector, fp32_model, runtime_options  # noqa: E402

os.environ.setdefault("VIDREC_PRECISION", "fp32")  # the detector that makes the recognizer's crops: fp32


def model_rows(rounds: int) -> list[str]:
    cfg = load_config()
    _, guard = split_frames(default_footage())
    detector = build_detector(cfg)
    rows = ["| model | batch | fp32 ms | int8 ms | int8 speedup |", "|---|---|---|---|---|"]
    guards = []
    for role in ("detector", "recognizer"):
        folder, name = fp32_model(cfg, role)
        fp32_path = folder / name
        int8_path, report_path = int8_files(fp32_path)
        status = int8_status(fp32_path)
        if status.state != "ok":
            sys.exit(f"{role}: {status.detail}; run `vidrec models quantize` first")
        report = read_report(report_path)
        fp32, int8 = open_model(fp32_path, runtime_options(cfg)), open_model(int8_path, runtime_options(cfg))
        input_name = fp32.inputs[0].name
        if role == "detector":
            size = detector.input_size
            inputs = [{input_name: det_preprocess([image], size=size)[0]} for image in guard]
        else:
            pipeline = build_rec_preprocess(list(cfg.RecPreProcess.transform_ops))
            crops = []
            for image, found in zip(guard, detector.detect(guard)):
                rgb = np.ascontiguousarray(image[:, :, ::-1])
                crops.extend([*crop_boxes(rgb, found.xyxy), rgb])
            inputs = [{input_name: rec_preprocess([crop], pipeline)} for crop in crops[:16]]
        for point in measure_speed(fp32, int8, inputs, rounds=rounds):
            rows.append(f"| {role} ({fp32_path.name}) | {point.batch} | {point.fp32_ms:.1f} | {point.int8_ms:.1f} | ×{point.speedup:.2f} |")
        checks = "; ".join(f"{c.name} {c.value:+.3f} (limit {c.limit:+.3f}, {'ok' if c.passed else 'FAILED'}): {c.detail}" for c in report.checks)
        at_quantize = ", ".join(f"b{p.batch} ×{p.speedup:.2f}" for p in report.speed)
        guards.append(f"- {role}: {checks}; speed when quantized {at_quantize} (geometric mean ×{report.speedup:.2f}); "
                      f"guard {'passed' if report.passed else 'failed'}; kept float: {len(report.quantization.get('kept_float', []))} nodes, "
                      f"{report.quantization.get('quantized_share')} of the convs in int8")
    return rows + [""] + guards


def _choice_words(line: str) -> str:
    """'vidrec: recognizer: int8, /x/inference.int8.onnx (why)' -> 'recognizer int8 (inference.int8.onnx)'."""
    role, rest = line.removeprefix("vidrec: ").split(": ", 1)
    precision, _, path = rest.split(" (")[0].partition(", ")
    return f"{role} {precision} ({Path(path).name})"


FPS = re.compile(r"(\d+) frames in ([\d.]+) s \(([\d.]+) fps\)")


def video_rows(rounds: int, clip: Path) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="quantize-bench-") as tmp:
        index = Path(tmp) / "index"
        gallery = REPO / "samples" / "gallery"
        common = ["-o", f"IndexProcess.image_root={gallery}", "-o", f"IndexProcess.index_dir={index}"]
        env = dict(os.environ, VIDREC_PRECISION="fp32")
        subprocess.run([sys.executable, "-m", "workers.cli", "gallery", "build", "-o", f"IndexProcess.data_file={gallery / 'data_file.txt'}",
                        *common], cwd=REPO, env=env, check=True, capture_output=True)
        fps: dict[str, list[float]] = {"fp32": [], "auto": []}
        chosen: dict[str, str] = {}
        for round_index in range(rounds):
            order = ("fp32", "auto") if round_index % 2 == 0 else ("auto", "fp32")
            for setting in order:
                done = subprocess.run(
                    [sys.executable, "-m", "workers.cli", "video", str(clip), "--no-progress", "-o", "Tracker.enabled=false", *common],
                    cwd=REPO, env=dict(os.environ, VIDREC_PRECISION=setting), capture_output=True, text=True,
                )
                match = FPS.search(done.stderr)
                if done.returncode != 0 or not match:
                    sys.exit(f"vidrec video failed ({setting}): {done.stderr[-2000:]}")
                fps[setting].append(float(match.group(3)))
                chosen[setting] = ", ".join(_choice_words(line) for line in done.stderr.splitlines()
                                            if line.startswith(("vidrec: detector:", "vidrec: recognizer:")))
                print(f"round {round_index + 1} {setting}: {match.group(0)}", file=sys.stderr)
    ratios = [a / f for a, f in zip(fps["auto"], fps["fp32"])]
    rows = ["| VIDREC_PRECISION | models | frames/s per round | median |", "|---|---|---|---|"]
    for setting in ("fp32", "auto"):
        rows.append(f"| {setting} | {chosen[setting]} | {' / '.join(f'{v:.1f}' for v in fps[setting])} | {statistics.median(fps[setting]):.1f} |")
    rows.append(f"\nauto / fp32 per round: {' / '.join(f'×{r:.2f}' for r in ratios)}; median ×{statistics.median(ratios):.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="alternated rounds per model and batch (0: skip the models)")
    parser.add_argument("--video", action="store_true", help="also time `vidrec video` fp32 vs auto")
    parser.add_argument("--video-rounds", type=int, default=3)
    parser.add_argument("--clip", type=Path, default=REPO / ".cache" / "media" / "vtest.avi")
    args = parser.parse_args()
    with open("/proc/loadavg") as fh:
        print(f"load average before: {fh.read().split()[:3]}")
    if args.rounds:
        print("\n".join(model_rows(args.rounds)))
    if args.video:
        print()
        print("\n".join(video_rows(args.video_rounds, args.clip)))
    with open("/proc/loadavg") as fh:
        print(f"\nload average after: {fh.read().split()[:3]}")


if __name__ == "__main__":
    main()
