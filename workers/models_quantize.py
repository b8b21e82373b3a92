"""``vidrec models quantize``: int8 copies of the configured detector and recognizer, each with a guard report.

For each model (ONNX backend only):

1. calibration inputs from real footage (``samples/bikes.mp4``, and ``vtest.avi`` when scripts/fetch-media
   has put it in .cache/media): evenly spaced frames, every other one for calibration and the rest for the
   guard, so that the guard never sees a calibration frame. The detector is calibrated on those frames as it
   preprocesses them; the recognizer on what it embeds in them: the fp32 detector's box crops and the whole
   frames (``models/shitu.py`` embeds the whole frame too);
2. ``models/quantize.py`` writes the int8 QDQ copy into the model cache (``workers/precision.py int8_files``),
   never over the fp32 file;
3. the guard, measured on this machine, goes into a JSON report bound to both files' sha256:
   * detector: of the fp32 boxes above ``Global.threshold`` on the guard frames, the share that an int8 box
     matches one-to-one at IoU ≥ 0.9 must be ≥ 0.95;
   * recognizer: recall@1 on the hard set's report split (``workers/hard_set.py``), int8 within 0.02 of fp32,
     through the same gallery build and evaluation as ``vidrec gallery eval``;
   * speed: the model's run alone (preprocessed real inputs) at batch 1, 4 and 8, fp32 and int8 alternated
     round by round, median per round; ``workers/precision.py`` picks int8 only when it is clearly faster.

``auto`` precision (workers/precision.py) uses an int8 copy only when its report passed.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from config import ConfigError, VidrecConfig
from models.colour_features import ColourSpec
from models.cpu_features import cpu_model_name, read_cpu_flags, vnni_flags
from models.detector import PicoDetDetector
from models.errors import ModelError
from models.preprocess_det import preprocess_batch as det_preprocess
from models.preprocess_rec import build_rec_preprocess, preprocess_batch as rec_preprocess
from models.quantize import Feed, QuantizeOptions, QuantizeResult, quantize_model
from models.recognizer import Recognizer, colour_spec
from models.resolve import sha256_of
from models.runtime import InferenceModel, open_model
from models.shitu import crop_boxes
from stream.sources import open_source
from workers.precision import GuardCheck, GuardReport, Role, SpeedPoint, int8_files, int8_status, write_report
from workers.system import fp32_model, runtime_options

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
ROLES: tuple[Role, ...] = ("detector", "recognizer")
# PicoDet: the whole graph (its convs alone measured x0.94 and 0.88 of boxes matched, against x1.08 and 0.92: the
# Q/DQ pairs between int8 convs and float hard-swish cost what the convs gained). It still fails the guard here.
DETECTOR_OPTIONS = QuantizeOptions()
RECOGNIZER_OPTIONS = QuantizeOptions()
BOX_IOU = 0.9
BOX_SHARE = 0.95
RECALL_DROP = 0.02
BATCHES = (1, 4, 8)
FRAMES_PER_FILE = 24  # per footage file: 12 for calibration, 12 for the guard
MAX_REC_CALIBRATION = 96


def default_footage() -> list[Path]:
    """The real footage at hand: the bundled clip, and vtest.avi when scripts/fetch-media fetched it."""
    names = [Path("samples") / "bikes.mp4", Path(".cache") / "media" / "vtest.avi"]
    found: list[Path] = []
    for name in names:
        for base in (REPO, Path.cwd()):
            if (base / name).is_file():
                found.append((base / name).resolve())
                break
    return list(dict.fromkeys(found))


def _spaced(count: int, per_file: int) -> np.ndarray:
    return np.unique(np.linspace(0, count - 1, num=min(per_file, count)).round().astype(int))


def split_frames(paths: Sequence[Path], per_file: int = FRAMES_PER_FILE) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``per_file`` evenly spaced BGR frames of each file: even picks for calibration, odd ones for the guard.

    Only the picked frames are kept while decoding (all 795 frames of vtest.avi held ~1 GB), spaced by the frame
    count the file declares; when the decoded count differs from it, the file is decoded again for the true picks,
    so the frames are always those evenly spaced over what decodes."""
    calibration: list[np.ndarray] = []
    guard: list[np.ndarray] = []
    for path in paths:
        with open_source(path) as source:
            declared = source.frame_count
            wanted = set(_spaced(declared, per_file).tolist()) if declared else None
            kept: dict[int, np.ndarray] = {}
            count = 0
            for frame in source:
                if wanted is None or count in wanted:
                    kept[count] = frame.image_bgr
                count += 1
        if not count:
            raise ModelError(f"{path}: no frames to calibrate on")
        picks = _spaced(count, per_file)
        if not set(picks.tolist()) <= kept.keys():  # the declared count was wrong: decode again for the true picks
            wanted = set(picks.tolist())
            with open_source(path) as source:
                kept = {i: frame.image_bgr for i, frame in enumerate(source) if i in wanted}
        calibration.extend(kept[i] for i in picks[0::2])
        guard.extend(kept[i] for i in picks[1::2])
    return calibration, guard


# ---- the detector's guard (pure) ----------------------------------------------------------------------------
def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (n, 4 xyxy) with every box of ``b`` (m, 4): (n, m)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def matched_boxes(reference: np.ndarray, candidate: np.ndarray, iou_min: float) -> int:
    """How many reference boxes a candidate box matches at IoU ≥ ``iou_min``, each box used once
    (greedy, best IoU first: a duplicate int8 box cannot cover two fp32 boxes)."""
    iou = iou_matrix(reference, candidate)
    if iou.size == 0:
        return 0
    matched = 0
    used_ref: set[int] = set()
    used_cand: set[int] = set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        r, c = divmod(int(flat), iou.shape[1])
        if iou[r, c] < iou_min:
            break
        if r in used_ref or c in used_cand:
            continue
        used_ref.add(r)
        used_cand.add(c)
        matched += 1
    return matched


def detector_check(fp32: PicoDetDetector, int8: PicoDetDetector, frames: Sequence[np.ndarray]) -> GuardCheck:
    total = matched = 0
    for image in frames:
        (reference,) = fp32.detect([image])
        (candidate,) = int8.detect([image])
        total += len(reference.xyxy)
        matched += matched_boxes(reference.xyxy, candidate.xyxy, BOX_IOU)
    share = matched / total if total else 0.0
    return GuardCheck(
        name=f"fp32 boxes matched at IoU>={BOX_IOU}", value=share, limit=BOX_SHARE, passed=total > 0 and share >= BOX_SHARE,
        detail=f"{matched} of {total} boxes (score >= {fp32.decoder.options.score_threshold}) on {len(frames)} guard frames",
    )


# ---- the recognizer's guard ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecallSet:
    """A gallery list and a query list (``image<TAB>label``), paths relative to ``root``."""

    name: str
    root: Path
    gallery_file: Path
    queries_file: Path


def hard_set(work_dir: Path) -> RecallSet:
    """The hard set's report split (workers/hard_set.py): never the split variants are tuned on."""
    from workers.hard_set import build_hard_set

    built = build_hard_set(work_dir, split="report")
    return RecallSet(name="hard set (report split)", root=built.root, gallery_file=built.gallery_file, queries_file=built.queries_file)


def recall_at_1(cfg: VidrecConfig, model_path: Path, recall_set: RecallSet, index_dir: Path,
                colour: ColourSpec | None = None) -> float:
    """recall@1 of ``recall_set``'s queries against a gallery of its gallery list, embedded by ``model_path``
    (fused with ``colour`` as the model folder says: what runs is what is measured)."""
    from workers.gallery_job import eval_gallery, new_gallery

    run_cfg = cfg.model_copy(deep=True)
    run_cfg.IndexProcess.data_file = str(recall_set.gallery_file)
    run_cfg.IndexProcess.image_root = str(recall_set.root)
    run_cfg.IndexProcess.index_dir = str(index_dir)
    run_cfg.IndexProcess.index_operation = "new"
    recognizer = Recognizer(model_path, cfg.RecPreProcess.transform_ops, runtime=runtime_options(cfg),
                            max_batch=cfg.IndexProcess.batch_size, colour=colour)
    run_cfg.IndexProcess.embedding_size = recognizer.embedding_size
    new_gallery(run_cfg, recognizer)
    return float(eval_gallery(run_cfg, recognizer, recall_set.queries_file).recall[1])


def recognizer_check(cfg: VidrecConfig, fp32_path: Path, int8_path: Path, recall_set: RecallSet, work_dir: Path,
                     colour: ColourSpec | None = None) -> GuardCheck:
    before = recall_at_1(cfg, fp32_path, recall_set, work_dir / "index_fp32", colour)
    after = recall_at_1(cfg, int8_path, recall_set, work_dir / "index_int8", colour)
    return GuardCheck(
        name="recall@1 minus fp32's", value=after - before, limit=-RECALL_DROP, passed=after - before >= -RECALL_DROP - 1e-9,
        detail=f"{recall_set.name}: recall@1 fp32 {before:.3f}, int8 {after:.3f}",
    )


# ---- speed --------------------------------------------------------------------------------------------------
def _batched_feeds(model: InferenceModel, inputs: Sequence[Feed], batch: int) -> list[Feed]:
    """``batch`` inputs as the model takes them: one run of the stacked batch, or one run per input when
    the model's batch is fixed at 1 (the PicoDet exports; ``PicoDetDetector`` runs them so)."""
    chosen = [inputs[i % len(inputs)] for i in range(batch)]
    if model.inputs[0].shape and model.inputs[0].shape[0] == 1:
        return list(chosen)
    return [{name: np.concatenate([feed[name] for feed in chosen]) for name in chosen[0]}]


def measure_speed(
    fp32: InferenceModel, int8: InferenceModel, inputs: Sequence[Feed], *, batches: Sequence[int] = BATCHES,
    rounds: int = 5, repeats: int = 3, clock: Callable[[], float] = time.perf_counter,
) -> list[SpeedPoint]:
    """ms per batch of the model's run alone, fp32 and int8 alternated each round (the machine is shared and
    noisy: both see the same moments), the median round of each."""
    points = []
    for batch in batches:
        timed: dict[str, list[float]] = {"fp32": [], "int8": []}
        feeds = {"fp32": _batched_feeds(fp32, inputs, batch), "int8": _batched_feeds(int8, inputs, batch)}
        for model in (fp32, int8):  # warm-up: first runs allocate
            for feed in feeds["fp32"]:
                model.run(dict(feed))
        for round_index in range(rounds):
            order = (("fp32", fp32), ("int8", int8)) if round_index % 2 == 0 else (("int8", int8), ("fp32", fp32))
            for name, model in order:
                start = clock()
                for _ in range(repeats):
                    for feed in feeds[name]:
                        model.run(dict(feed))
                timed[name].append((clock() - start) * 1000.0 / repeats)
        points.append(SpeedPoint(batch=batch, fp32_ms=float(np.median(timed["fp32"])), int8_ms=float(np.median(timed["int8"]))))
    return points


# ---- the job ------------------------------------------------------------------------------------------------
def _report(role: Role, fp32_path: Path, result: QuantizeResult, options: QuantizeOptions, checks: list[GuardCheck],
            speed: list[SpeedPoint], calibration: str) -> GuardReport:
    return GuardReport(
        role=role, fp32_path=str(fp32_path), fp32_sha256=sha256_of(fp32_path), int8_path=str(result.path),
        int8_sha256=sha256_of(result.path), checks=checks, speed=speed, cpu=cpu_model_name(),
        vnni=list(vnni_flags(read_cpu_flags())), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        quantization=dict(options.describe(), kept_float=list(result.kept_float), quantized_share=round(result.quantized_share, 3),
                          calibration=calibration),
    )


def _detector(cfg: VidrecConfig, folder: Path, model_file: str, *, max_detections: int) -> PicoDetDetector:
    return PicoDetDetector.from_model_dir(
        folder, model_file=model_file, labels_file=cfg.Detector.labels_file, score_threshold=cfg.Global.threshold,
        max_detections=max_detections, nms_iou=cfg.Detector.nms_iou, mainbody=cfg.Detector.mainbody, runtime=runtime_options(cfg),
    )


def quantize_detector(cfg: VidrecConfig, calibration: list[np.ndarray], guard: list[np.ndarray], footage: str) -> GuardReport:
    folder, model_file = fp32_model(cfg, "detector")
    fp32_path = folder / model_file
    out, report_path = int8_files(fp32_path)
    # Every box above the threshold counts in the guard, not just the first max_det_results of a frame.
    fp32 = _detector(cfg, folder, model_file, max_detections=1000)
    runtime = runtime_options(cfg)
    fp32_run = open_model(fp32_path, runtime)
    if fp32.infer_cfg is not None or len(fp32_run.inputs) != 1:
        raise ModelError(f"{fp32_path}: only detectors with one image input and the ONNX exports' fixed preprocessing "
                         "can be quantized (not PaddleDetection exports with infer_cfg.yml or im_shape/scale_factor inputs)")
    name, size = fp32_run.inputs[0].name, fp32.input_size

    def feed(image: np.ndarray) -> Feed:
        return {name: det_preprocess([image], size=size)[0]}

    result = quantize_model(fp32_path, out, [feed(image) for image in calibration], DETECTOR_OPTIONS)
    int8 = _detector(cfg, folder, str(out.resolve()), max_detections=1000)
    checks = [detector_check(fp32, int8, guard)]
    speed = measure_speed(fp32_run, open_model(out, runtime), [feed(image) for image in guard])
    report = _report("detector", fp32_path, result, DETECTOR_OPTIONS, checks, speed,
                     f"{len(calibration)} frames of {footage} at {size}x{size}")
    write_report(report, report_path)
    return report


def quantize_recognizer(
    cfg: VidrecConfig, calibration: list[np.ndarray], guard: list[np.ndarray], footage: str, work_dir: Path,
    recall_set: Callable[[Path], RecallSet] = hard_set,
) -> GuardReport:
    det_folder, det_file = fp32_model(cfg, "detector")
    detector = _detector(cfg, det_folder, det_file, max_detections=cfg.Global.max_det_results)
    folder, model_file = fp32_model(cfg, "recognizer")
    fp32_path = folder / model_file
    out, report_path = int8_files(fp32_path)
    fp32_model_ = open_model(fp32_path, runtime_options(cfg))
    if len(fp32_model_.inputs) != 1:
        raise ModelError(f"{fp32_path}: a recognizer takes one image input, this model has {len(fp32_model_.inputs)}")
    input_name = fp32_model_.inputs[0].name
    pipeline = build_rec_preprocess(list(cfg.RecPreProcess.transform_ops))

    def crops(frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        # What the recognizer embeds in a frame: each detector box and the whole frame, in RGB.
        out_crops: list[np.ndarray] = []
        for image, found in zip(frames, detector.detect(list(frames))):
            rgb = np.ascontiguousarray(image[:, :, ::-1])
            out_crops.extend([*crop_boxes(rgb, found.xyxy), rgb])
        return out_crops

    calibration_crops = crops(calibration)[:MAX_REC_CALIBRATION]
    feeds = [{input_name: rec_preprocess([crop], pipeline)} for crop in calibration_crops]
    result = quantize_model(fp32_path, out, feeds, RECOGNIZER_OPTIONS)
    try:
        chosen_set = recall_set(work_dir / "recall_set")
    except (ModelError, OSError, ValueError, ImportError) as exc:  # the photos are missing (no scripts/fetch-media)
        checks = [GuardCheck(name="recall@1 minus fp32's", value=float("-inf"), limit=-RECALL_DROP, passed=False,
                             detail=f"no hard set to measure recall on: {exc}")]
    else:
        checks = [recognizer_check(cfg, fp32_path, out, chosen_set, work_dir, colour_spec(folder))]
    guard_feeds = [{input_name: rec_preprocess([crop], pipeline)} for crop in crops(guard)[:16]]
    speed = measure_speed(fp32_model_, open_model(out, runtime_options(cfg)), guard_feeds)
    report = _report("recognizer", fp32_path, result, RECOGNIZER_OPTIONS, checks, speed,
                     f"{len(calibration_crops)} crops (detector boxes and whole frames) of {len(calibration)} frames of {footage}")
    write_report(report, report_path)
    return report


def needs_quantizing(cfg: VidrecConfig, role: Role) -> bool:
    """False when the cache already holds an int8 copy with a report for this very fp32 file (passed or not)."""
    folder, model_file = fp32_model(cfg, role)
    return int8_status(folder / model_file).state not in ("ok",)


def run_quantize(
    cfg: VidrecConfig, *, roles: Sequence[Role] = ROLES, footage: Sequence[Path] | None = None, if_needed: bool = False,
) -> list[GuardReport]:
    """Quantize ``roles`` and write their guard reports; returns the reports (skipped roles left out)."""
    if cfg.Global.backend != "onnx":
        raise ConfigError(f"vidrec models quantize works on ONNX models: Global.backend is {cfg.Global.backend}")
    todo = [role for role in roles if not if_needed or needs_quantizing(cfg, role)]
    for role in roles:
        if role not in todo:
            log.info("%s: int8 copy and guard report are current; skipped", role)
    if not todo:
        return []
    paths = list(footage) if footage else default_footage()
    if not paths:
        raise ModelError("no footage to calibrate on: samples/bikes.mp4 not found (run from the vidrec checkout or pass --footage)")
    calibration, guard = split_frames(paths)
    described = " + ".join(p.name for p in paths)
    reports = []
    with tempfile.TemporaryDirectory(prefix="vidrec-quantize-") as tmp:
        for role in todo:
            log.info("%s: quantizing (calibration on %d frames of %s)", role, len(calibration), described)
            if role == "detector":
                reports.append(quantize_detector(cfg, calibration, guard, described))
            else:
                reports.append(quantize_recognizer(cfg, calibration, guard, described, Path(tmp)))
    return reports


def summary_lines(report: GuardReport) -> list[str]:
    speed = ", ".join(f"batch {p.batch} {p.fp32_ms:.1f} -> {p.int8_ms:.1f} ms (x{p.speedup:.2f})" for p in report.speed)
    lines = [f"{report.role}: wrote {report.int8_path}"]
    lines += [f"  {c.name}: {c.value:.3f} (limit {c.limit:.3f}) {'ok' if c.passed else 'FAILED'}; {c.detail}" for c in report.checks]
    lines.append(f"  speed fp32 -> int8: {speed}")
    lines.append(f"  guard {'passed' if report.passed else 'failed: ' + report.failures()}")
    return lines
