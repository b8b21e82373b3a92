"""Tracking on vs off (issue 11): recognizer crops, speed and label quality, A and B alternated in one process.

    VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/tracking_ab.py speed --rounds 3
    VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/tracking_ab.py video --rounds 3
    VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/tracking_ab.py quality --split report
    VIDREC_MODEL_DIR=../shared/models .venv/bin/python bench/tracking_ab.py tune

``speed``: the first ``--frames`` frames of vtest.avi (opencv-doc, scripts/fetch-media) and samples/bikes.mp4,
decoded once, through ``RecognitionStep`` (what ``vidrec video`` runs per batch; decoding is ~60x cheaper than the
models, docs/benchmarks.md) with the sample gallery and the default config, ``Tracker.enabled`` true and false in
turn (A B, then B A), one shared set of models, a fresh step (fresh tracks) per run; per run frames/s of the step
and recognizer crops per frame (``RecognizedBatch.crops``, checked against a count in
``ShituSystem.answer_crops``). Medians over rounds and the on/off ratios.

``video``: ``vidrec video`` itself (``run_video_job``: decoding, the step, JSONL to a temporary file) over a whole
clip (vtest.avi by default), on and off in turn: frames/s per run, medians and ratios.

``quality``: the enrol-and-find scenario of tests/test_retrieval_quality.py (four vtest.avi pedestrians enrolled
from one frame each), scored by the same rule, with tracking on (every frame of each window range in order) and off
(the same frames), for a split of the people: ``tune`` = A and B (frames 80-200, where the Tracker defaults were
chosen), ``report`` = C and D (frames 520-640, never looked at while choosing), ``all``.

``tune``: on the ``tune`` split only, coordinate descent over the ``Tracker`` settings, one at a time, from the
current defaults; detections and crop answers are cached between trials (they do not depend on the tracker), so a
trial costs only the tracking itself. Its objective: crops at most a third of the untracked run's, then the best
F1 by at least ``--min-gain`` (smaller differences are a frame or two on this small split), or within that, a
fifth fewer crops with no more label changes; a setting moves only when a value beats the current one.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from config import load_config  # noqa: E402
from models.shitu import CropAnswers, ShituSystem  # noqa: E402
from sample_gallery import ensure_gallery  # noqa: E402
from tests.media import fetched_media  # noqa: E402
from tests.test_retrieval_quality import PEDESTRIANS  # noqa: E402
from tests.test_tracking_quality import Score, enrol, read_frames, run_in_order, score, split_ranges  # noqa: E402
from workers.recognition import RecognitionStep  # noqa: E402
from workers.system import build_system, tracking_params  # noqa: E402
from stream.sources import open_source  # noqa: E402
from workers.video_job import VideoOutputs, batched, run_video_job  # noqa: E402

SPLITS = {"tune": ("A dark coat", "B jeans"), "report": ("C black suit", "D blonde"), "all": tuple(PEDESTRIANS)}
TRACKER_ON, TRACKER_OFF = "Tracker.enabled=true", "Tracker.enabled=false"
# The acceptance rule of the scenario, on and off alike (tests/test_retrieval_quality.py's pedestrian test): people
# look alike to an ImageNet feature, so a stricter score and a smaller margin than the defaults for objects; with
# tracking, the vote's share of passing views too (tests/test_tracking_quality.py SCENARIO_OVERRIDES, chosen with
# the score on the tune split).
# Its gallery holds individuals, so a label names one track at a time (Tracker.unique_labels), and with that one
# passing view names a track (min_votes 1: what ``tune`` chose on the tune split; its trials override it).
SCENARIO_THRESHOLDS = ("IndexProcess.score_thres=0.8", "IndexProcess.margin_thres=0.08", "Tracker.min_share=0.5",
                       "Tracker.unique_labels=true", "Tracker.min_votes=1")


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


class CropCounter:
    """Counts the crops that go through ``system``'s recognizer (tracked and untracked paths both call
    ``answer_crops``)."""

    def __init__(self, system: ShituSystem) -> None:
        self.count = 0
        self._inner = system.answer_crops
        system.answer_crops = self  # type: ignore[method-assign]

    def __call__(self, crops, gallery, times):  # noqa: ANN001, ANN204
        self.count += len(crops)
        return self._inner(crops, gallery, times)


# ---------------------------------------------------------------------------------------------------- speed

def speed(args: argparse.Namespace) -> None:
    index_dir = args.index_dir.resolve()
    ensure_gallery(index_dir)
    base = [f"IndexProcess.index_dir={index_dir}", *args.override]
    cfgs = {"on": load_config(None, [*base, TRACKER_ON]), "off": load_config(None, [*base, TRACKER_OFF])}
    system = build_system(cfgs["on"])
    counter = CropCounter(system)
    names = system.detector.class_names
    clips = {}
    for name, path in (("vtest.avi", fetched_media("vtest.avi")), ("bikes.mp4", REPO / "samples" / "bikes.mp4")):
        with open_source(path) as source:
            clips[name] = [frame for frame, _ in zip(source, range(args.frames))]  # decoded once, outside the timing
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    print(f"{load()} before; config: {' '.join(args.override) or 'defaults'} + sample gallery; batch "
          f"{cfgs['on'].Global.batch_size}", flush=True)
    for n in range(args.rounds):
        for clip, frames in clips.items():
            for variant in (("on", "off") if n % 2 == 0 else ("off", "on")):
                cfg = cfgs[variant]
                step = RecognitionStep(system, class_names=names, tracking=tracking_params(cfg))  # fresh tracks
                counter.count, crops = 0, 0
                t0 = time.perf_counter()
                for batch in batched(iter(frames), cfg.Global.batch_size):
                    crops += sum(step.run(batch).crops)
                fps = len(frames) / (time.perf_counter() - t0)
                assert crops == counter.count, (crops, counter.count)
                runs.setdefault((clip, variant), []).append((fps, crops / len(frames)))
                print(f"round {n + 1} {clip} tracking {variant}: {len(frames)} frames, {fps:.1f} fps, "
                      f"{crops / len(frames):.2f} crops/frame; {load()}", flush=True)
    print("\n| clip (frames) | crops/frame on / off | fewer crops (off/on) | fps on / off (median) | on/off fps | "
          "on/off per round (median) | fps per round: on; off |")
    print("|---|---|---|---|---|---|---|")
    for clip, frames in clips.items():
        on, off = runs[(clip, "on")], runs[(clip, "off")]
        crops_on, crops_off = statistics.median(c for _, c in on), statistics.median(c for _, c in off)
        fps_on, fps_off = statistics.median(f for f, _ in on), statistics.median(f for f, _ in off)
        print(f"| {clip} ({len(frames)}) | {crops_on:.2f} / {crops_off:.2f} | ×{crops_off / crops_on:.1f} | "
              f"{fps_on:.1f} / {fps_off:.1f} | ×{fps_on / fps_off:.2f} | "
              f"{', '.join(f'×{a / b:.2f}' for (a, _), (b, _) in zip(on, off))} "
              f"(×{statistics.median(a / b for (a, _), (b, _) in zip(on, off)):.2f}) | {', '.join(f'{f:.1f}' for f, _ in on)}; "
              f"{', '.join(f'{f:.1f}' for f, _ in off)} |")
    print(f"{load()} after")


def video(args: argparse.Namespace) -> None:
    """``vidrec video`` itself (``run_video_job``: decode, step, JSONL) over the whole clip, on and off in turn."""
    index_dir = args.index_dir.resolve()
    ensure_gallery(index_dir)
    base = [f"IndexProcess.index_dir={index_dir}", *args.override]
    cfgs = {"on": load_config(None, [*base, TRACKER_ON]), "off": load_config(None, [*base, TRACKER_OFF])}
    system = build_system(cfgs["on"])
    clip = args.clip or fetched_media("vtest.avi")
    fps: dict[str, list[float]] = {"on": [], "off": []}
    print(f"{load()} before; {clip.name}, whole clip", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            for variant in (("on", "off") if n % 2 == 0 else ("off", "on")):
                summary = run_video_job(cfgs[variant], system, clip, VideoOutputs(json_path=Path(tmp) / "r.jsonl"),
                                        class_names=system.detector.class_names, progress=False)
                fps[variant].append(summary.fps)
                print(f"round {n + 1} tracking {variant}: {summary.frames} frames, {summary.fps:.1f} fps; {load()}",
                      flush=True)
    ratios = [a / b for a, b in zip(fps["on"], fps["off"])]
    print(f"\n| {clip.name}: vidrec video fps on / off (median) | on/off | per round on/off (median) |")
    print("|---|---|---|")
    print(f"| {statistics.median(fps['on']):.1f} / {statistics.median(fps['off']):.1f} | "
          f"×{statistics.median(fps['on']) / statistics.median(fps['off']):.2f} | "
          f"{', '.join(f'×{r:.2f}' for r in ratios)} (×{statistics.median(ratios):.2f}) |")
    print(f"{load()} after")


# -------------------------------------------------------------------------------------------------- quality

@dataclass
class Scenario:
    cfg_dir: Path
    frames: dict
    ranges: list[range]
    people: tuple[str, ...]


def scenario(tmp: Path, split: str) -> Scenario:
    people = SPLITS[split]
    ranges = split_ranges(people)
    wanted = {i for r in ranges for i in r} | {start for start, _ in PEDESTRIANS.values()}  # enrolment frames
    frames = read_frames(fetched_media("vtest.avi"), wanted)
    return Scenario(tmp, frames, ranges, people)


def evaluate(sc: Scenario, system: ShituSystem, overrides: Sequence[str], counter: CropCounter) -> tuple[Score, float]:
    """One run of the split with the given Tracker overrides (``Tracker.enabled=false``: per frame)."""
    cfg = load_config(None, [f"IndexProcess.index_dir={sc.cfg_dir / 'index'}", "Global.threshold=0.3",
                             "Global.max_det_results=10", *SCENARIO_THRESHOLDS, *overrides])
    names = system.detector.class_names
    step = RecognitionStep(system, class_names=names, tracking=tracking_params(cfg))
    counter.count = 0
    shown, crops = run_in_order(step, sc.frames, sc.ranges, names)
    assert crops == counter.count, (crops, counter.count)
    result = score(shown, sc.people, names.index("person"), {i: f.pts for i, f in sc.frames.items()})
    return result, crops / len(shown)


def describe(result: Score, crops: float) -> str:
    return (f"precision {result.precision:.3f} ({result.tp}/{result.tp + result.fp}), recall {result.recall:.3f} "
            f"({result.tp}/{result.tp + result.fn}), label changes {result.label_changes} in {result.track_seconds:.1f} s"
            f" = {result.changes_per_s:.2f}/s, crops/frame {crops:.2f}")


def quality(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sc = scenario(Path(tmp), args.split)
        cfg = enrol(Path(tmp), sc.frames)
        system = build_system(cfg)
        counter = CropCounter(system)
        print(f"split {args.split}: {', '.join(sc.people)}; frames {', '.join(f'{r.start}-{r.stop - 1}' for r in sc.ranges)}"
              f"; {load()} before", flush=True)
        got: dict[str, list[tuple[Score, float, float]]] = {}
        for n in range(args.rounds):
            for variant in (("on", "off") if n % 2 == 0 else ("off", "on")):
                overrides = [TRACKER_ON, *args.override] if variant == "on" else [TRACKER_OFF]
                t0 = time.perf_counter()
                result, crops = evaluate(sc, system, overrides, counter)
                fps = sum(len(r) for r in sc.ranges) / (time.perf_counter() - t0)
                got.setdefault(variant, []).append((result, crops, fps))
                print(f"round {n + 1} tracking {variant}: {describe(result, crops)}, {fps:.1f} fps; {load()}", flush=True)
                for line in result.lines:
                    print("   ", line)
        (on, crops_on, _), (off, crops_off, _) = got["on"][0], got["off"][0]
        print(f"\n| split {args.split} | precision | recall | label changes / track-second | crops/frame |")
        print("|---|---|---|---|---|")
        for name, r, c in (("tracking on", on, crops_on), ("tracking off", off, crops_off)):
            print(f"| {name} | {r.precision:.3f} ({r.tp}/{r.tp + r.fp}) | {r.recall:.3f} ({r.tp}/{r.tp + r.fn}) | "
                  f"{r.changes_per_s:.2f} ({r.label_changes} in {r.track_seconds:.1f} s) | {c:.2f} |")
        ratio = off.changes_per_s / on.changes_per_s if on.changes_per_s else float("inf")
        print(f"| off/on | | | ×{ratio:.1f} fewer | ×{crops_off / crops_on:.1f} fewer |")
        print(f"fps (tracked ranges incl. scoring): on {statistics.median(f for *_, f in got['on']):.1f}, "
              f"off {statistics.median(f for *_, f in got['off']):.1f}; {load()} after")


# ----------------------------------------------------------------------------------------------------- tune

class CachedModels:
    """Detections per frame and the gallery's answer per crop, kept across trials (they do not depend on the
    tracker's settings): every trial then costs only the tracking."""

    def __init__(self, system: ShituSystem) -> None:
        self._detect = system.detector.detect
        self._search = system.answer_crops
        self._dets: dict[int, object] = {}
        self._answers: dict[bytes, tuple[str | None, float, float]] = {}
        system.detector.detect = self.detect  # type: ignore[method-assign]
        system.answer_crops = self.search  # type: ignore[method-assign]

    def detect(self, images):  # noqa: ANN001, ANN201
        for image in images:
            if id(image) not in self._dets:
                self._dets[id(image)] = self._detect([image])[0]
        return [self._dets[id(image)] for image in images]

    def search(self, crops, gallery, times):  # noqa: ANN001, ANN201
        import numpy as np

        keys = [hashlib.blake2b(c.tobytes() + str(c.shape).encode(), digest_size=16).digest() for c in crops]
        missing = [n for n, k in enumerate(keys) if k not in self._answers]
        if missing:
            found = self._search([crops[n] for n in missing], gallery, times)
            for n, label, value, margin in zip(missing, found.labels, found.scores, found.margins):
                self._answers[keys[n]] = (label, float(value), float(margin))
        answers = [self._answers[k] for k in keys]
        return CropAnswers([a[0] for a in answers], np.asarray([a[1] for a in answers], dtype=np.float32),
                           np.asarray([a[2] for a in answers]))


GRID = {
    "lost_track_s": (0.5, 1.0, 2.0, 3.0),
    "track_activation_threshold": (0.3, 0.4, 0.5, 0.6),
    "high_conf_det_threshold": (0.3, 0.4, 0.5, 0.6),
    "minimum_iou_threshold": (0.05, 0.1, 0.2, 0.3),
    "embed_every": (5, 10, 15, 20, 30),
    "embed_growth": (1.2, 1.5, 2.0),
    "min_votes": (1, 2, 3, 4),
}


def tune(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sc = scenario(Path(tmp), "tune")
        cfg = enrol(Path(tmp), sc.frames)
        system = build_system(cfg)
        CachedModels(system)
        counter = CropCounter(system)  # outside the cache: counts what the recognizer would have seen
        print(f"tuning on {', '.join(sc.people)}; frames {', '.join(f'{r.start}-{r.stop - 1}' for r in sc.ranges)}; "
              f"{load()}", flush=True)
        off, crops_off = evaluate(sc, system, [TRACKER_OFF], counter)
        print(f"off: {describe(off, crops_off)}", flush=True)
        defaults = load_config(None, []).Tracker
        current = {key: getattr(defaults, key) for key in GRID}
        trials: dict[tuple, tuple] = {}

        def trial(values: dict) -> tuple[bool, float, int, float]:
            if tuple(values.items()) not in trials:
                result, crops = evaluate(sc, system, [TRACKER_ON, *(f"Tracker.{k}={v}" for k, v in values.items())], counter)
                f1 = 2 * result.tp / (2 * result.tp + result.fp + result.fn)
                trials[tuple(values.items())] = (crops <= crops_off / 3, f1, result.label_changes, crops)
                print(f"  {values}: F1 {f1:.3f}, {describe(result, crops)}", flush=True)
            return trials[tuple(values.items())]

        def better(new: tuple, old: tuple) -> bool:
            """On ~80 scored frames an F1 difference under ``min_gain`` is a frame or two: noise. A value wins
            by a clear F1 gain, or, within the noise, by saving a fifth of the crops without more label changes."""
            if new[0] != old[0]:
                return new[0]
            if abs(new[1] - old[1]) >= args.min_gain:
                return new[1] > old[1]
            return new[2] <= old[2] and new[3] <= 0.8 * old[3]

        best = trial(current)
        for sweep in range(args.sweeps):
            changed = False
            for name, choices in GRID.items():
                for value in choices:
                    candidate = {**current, name: value}
                    if candidate[name] != current[name] and better(trial(candidate), best):
                        best, current, changed = trial(candidate), candidate, True
            print(f"after sweep {sweep + 1}: {current}: F1 {best[1]:.3f}, {best[2]} label changes, "
                  f"{best[3]:.2f} crops/frame", flush=True)
            if not changed:
                break
        print("chosen: " + " ".join(f"-o Tracker.{k}={v}" for k, v in current.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("speed", help="vidrec video on vtest.avi and bikes.mp4: crops per frame and fps, on vs off")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frames", type=int, default=200, help="the first N frames of each clip")
    p.add_argument("--index-dir", type=Path, default=REPO / "out" / "sample_index")
    p.add_argument("-o", dest="override", action="append", default=[], help="more vidrec -o overrides (both runs)")
    p.set_defaults(run=speed)
    p = sub.add_parser("video", help="vidrec video (run_video_job) over a whole clip: fps, on vs off")
    p.add_argument("clip", type=Path, nargs="?", help="default: vtest.avi")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--index-dir", type=Path, default=REPO / "out" / "sample_index")
    p.add_argument("-o", dest="override", action="append", default=[], help="more vidrec -o overrides (both runs)")
    p.set_defaults(run=video)
    p = sub.add_parser("quality", help="the vtest enrol-and-find scenario, on vs off")
    p.add_argument("--split", choices=tuple(SPLITS), default="report")
    p.add_argument("--rounds", type=int, default=1, help="on/off rounds (the scores are deterministic; fps is not)")
    p.add_argument("-o", dest="override", action="append", default=[], help="Tracker overrides for the tracked run")
    p.set_defaults(run=quality)
    p = sub.add_parser("tune", help="choose the Tracker settings on the tune split")
    p.add_argument("--sweeps", type=int, default=2)
    p.add_argument("--min-gain", type=float, default=0.05, help="F1 step that counts as better (the rest is noise)")
    p.set_defaults(run=tune)
    args = parser.parse_args()
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
