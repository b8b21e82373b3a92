"""Build the recognition system (detector, recognizer, gallery) from the typed config.

The one place where config keys become model objects, shared by every command.
"""
from __future__ import annotations

import logging
from pathlib import Path

from config import VidrecConfig
from models.errors import GalleryError, ModelError, ModelNotFoundError
from models.detector import PicoDetDetector
from models.gallery import GalleryIndex, recognizer_mismatch
from models.recognizer import Recognizer, colour_spec, recognizer_identity
from models.resolve import REGISTRY, resolve_model_dir
from models.runtime import RuntimeOptions
from models.shitu import ShituParams, ShituSystem
from models.tracking import EmbedPolicy, TrackerParams, TrackingParams, VoteRule
from workers.precision import ModelChoice, Role, choose_model_file

log = logging.getLogger(__name__)


def runtime_options(cfg: VidrecConfig) -> RuntimeOptions:
    g = cfg.Global
    return RuntimeOptions(
        backend=g.backend,
        num_threads=g.cpu_num_threads,
        use_gpu=g.use_gpu,
        use_tensorrt=g.use_tensorrt,
        use_fp16=g.use_fp16,
        enable_mkldnn=g.enable_mkldnn,
        gpu_mem_mb=g.gpu_mem,
    )


# Model files looked for in a model folder when the config names none, per backend and in order.
# PaddleDetection exports are model.*, PaddleClas exports inference.*; Paddle 3 writes .json, 2.x .pdmodel.
_DET_FILES = {
    "onnx": ("picodet_s_320_coco.onnx", "model.onnx", "inference.onnx"),
    "paddle": ("model.json", "model.pdmodel", "inference.json", "inference.pdmodel"),
}
_REC_FILES = {
    "onnx": ("inference.onnx", "model.onnx"),
    "paddle": ("inference.json", "inference.pdmodel", "model.json", "model.pdmodel"),
}


def model_ref(ref: str, backend: str) -> str:
    """The default model names have a Paddle twin built from the same weights; pick it for that backend."""
    twin = f"{ref}_paddle"
    if backend == "paddle" and ref in _NO_PADDLE_TWIN:
        raise ModelError(f"{ref} has no Paddle build yet; with Global.backend=paddle use "
                         f"-o Global.rec_inference_model_dir={_NO_PADDLE_TWIN[ref]} -o IndexProcess.embedding_size=1280")
    return twin if backend == "paddle" and ref in REGISTRY and twin in REGISTRY else ref


# Registered ONNX models whose Paddle twin is not built (yet), and the nearest one that is.
_NO_PADDLE_TWIN = {"efficientnet_lite0_ml": "efficientnet_lite0", "efficientnet_lite0_mlc": "efficientnet_lite0"}


def locate(ref: str, configured: str | None, candidates: tuple[str, ...]) -> tuple[Path, str]:
    """Resolve a model folder and the model file in it: the configured name, else the first candidate there."""
    names = (configured,) if configured else candidates
    first_error: ModelError | None = None
    for name in names:
        try:
            return resolve_model_dir(ref, needed=(name,)), name
        except ModelNotFoundError as exc:  # a wrong (present) file is an error at once, not a reason to look on
            first_error = first_error or exc
    if len(names) > 1 and Path(ref).is_dir():
        raise ModelError(f"model folder {ref} has none of {', '.join(names)}")
    assert first_error is not None
    raise first_error


def fp32_model(cfg: VidrecConfig, role: Role) -> tuple[Path, str]:
    """The configured model folder of ``role`` and its (fp32) model file's name."""
    g = cfg.Global
    if role == "detector":
        return locate(model_ref(g.det_inference_model_dir, g.backend), cfg.Detector.model_file, _DET_FILES[g.backend])
    return locate(model_ref(g.rec_inference_model_dir, g.backend), cfg.Recognizer.model_file, _REC_FILES[g.backend])


def model_choice(cfg: VidrecConfig, role: Role) -> tuple[Path, ModelChoice]:
    """The model folder of ``role`` and the file to run from it: fp32 or its int8 copy (workers/precision.py)."""
    g = cfg.Global
    folder, model_file = fp32_model(cfg, role)
    choice = choose_model_file(role, folder / model_file, setting=g.precision, backend=g.backend, use_gpu=g.use_gpu)
    return folder, choice


def model_choices(cfg: VidrecConfig) -> list[ModelChoice]:
    """What ``build_system`` will run, decided from the same files without loading a model (for /healthz)."""
    roles: list[Role] = ["detector"] + (["recognizer"] if cfg.IndexProcess.index_dir is not None else [])
    return [model_choice(cfg, role)[1] for role in roles]


def _log_choice(choice: ModelChoice) -> None:
    log.info("%s: %s, %s (%s)", choice.role, choice.precision, choice.path, choice.reason)


def build_detector(cfg: VidrecConfig) -> PicoDetDetector:
    det = cfg.Detector
    folder, choice = model_choice(cfg, "detector")
    _log_choice(choice)
    return PicoDetDetector.from_model_dir(
        folder,
        # An absolute path: the int8 copy lives in the cache, not beside the labels (folder / absolute = absolute).
        model_file=str(choice.path.absolute()),
        labels_file=det.labels_file,
        score_threshold=cfg.Global.threshold,
        max_detections=cfg.Global.max_det_results,
        nms_iou=det.nms_iou,
        mainbody=det.mainbody,
        runtime=runtime_options(cfg),
    )


def build_recognizer(cfg: VidrecConfig) -> Recognizer:
    folder, choice = model_choice(cfg, "recognizer")
    _log_choice(choice)
    return Recognizer(
        choice.path,
        cfg.RecPreProcess.transform_ops,
        runtime=runtime_options(cfg),
        max_batch=cfg.IndexProcess.batch_size,
        identity=recognizer_identity(folder),
        colour=colour_spec(folder),
    )


def load_gallery(cfg: VidrecConfig) -> GalleryIndex | None:
    if cfg.IndexProcess.index_dir is None:
        return None
    gallery = GalleryIndex.load(Path(cfg.IndexProcess.index_dir), delimiter=cfg.IndexProcess.delimiter)
    return gallery


def build_system(cfg: VidrecConfig) -> ShituSystem:
    """Detector always; recognizer and gallery only when a gallery is configured (nothing to name otherwise)."""
    if cfg.DetPreProcess is not None:
        log.warning("DetPreProcess is ignored: the detector's preprocessing comes with its model")
    detector = build_detector(cfg)
    gallery = load_gallery(cfg)
    recognizer = None
    if gallery is not None:
        recognizer = build_recognizer(cfg)
        mismatch = recognizer_mismatch(gallery, recognizer.identity, where=cfg.IndexProcess.index_dir)
        if mismatch is not None:
            raise GalleryError(mismatch)
        if gallery.embedding_size != recognizer.embedding_size:
            raise GalleryError(
                f"gallery {cfg.IndexProcess.index_dir} holds {gallery.embedding_size}-d embeddings but the recognizer "
                f"{cfg.Global.rec_inference_model_dir} makes {recognizer.embedding_size}-d ones: rebuild the gallery"
            )
        log.info("gallery %s: %d entries, version %d", cfg.IndexProcess.index_dir, gallery.size, gallery.version)
    ip = cfg.IndexProcess
    params = ShituParams(rec_nms_thresold=cfg.Global.rec_nms_thresold, score_thres=ip.score_thres,
                         margin_thres=ip.margin_thres, return_k=ip.return_k)
    return ShituSystem(detector=detector, recognizer=recognizer, gallery=gallery, params=params)


def tracking_params(cfg: VidrecConfig) -> TrackingParams | None:
    """The ``Tracker`` section as the tracking code's parameters; None when tracking is off."""
    t = cfg.Tracker
    if not t.enabled:
        return None
    return TrackingParams(
        tracker=TrackerParams(
            lost_track_s=t.lost_track_s,
            track_activation_threshold=t.track_activation_threshold,
            high_conf_det_threshold=t.high_conf_det_threshold,
            minimum_iou_threshold=t.minimum_iou_threshold,
        ),
        embed=EmbedPolicy(every=t.embed_every, growth=t.embed_growth),
        votes=VoteRule(min_votes=t.min_votes, score_thres=cfg.IndexProcess.score_thres,
                       margin_thres=cfg.IndexProcess.margin_thres, min_share=t.min_share),
        unique_labels=t.unique_labels,
    )
