"""Typed configuration: PP-ShiTu's ``inference_general.yaml`` sections, plus vidrec's own.

PP-ShiTu's keys keep their names (``rec_nms_thresold`` is spelled as PaddleClas spells it) and
meanings; every model refuses unknown keys, so a typo fails at start instead of being ignored.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=False)


class GlobalSection(Section):
    """PP-ShiTu ``Global``."""

    infer_imgs: str | None = Field(None, description="Default input for `vidrec video` when none is given.")
    det_inference_model_dir: str = Field("picodet_s_coco", description="Detector model folder, or a name resolved from VIDREC_MODEL_DIR / the cache.")
    rec_inference_model_dir: str = Field("efficientnet_lite0", description="Recognizer model folder, or a name resolved likewise.")
    rec_nms_thresold: float = Field(0.05, ge=0.0, le=1.0, description="IoU above which a lower-scored recognised box is suppressed.")
    batch_size: int = Field(1, ge=1, le=256, description="Frames per inference batch (PP-ShiTu asserts 1; vidrec batches).")
    image_shape: list[int] = Field([3, 640, 640], min_length=3, max_length=3, description="Kept for compatibility; the detector's input size is read from its model.")
    threshold: float = Field(0.2, ge=0.0, le=1.0, description="Detector score threshold.")
    max_det_results: int = Field(5, ge=0, le=1000, description="Keep at most this many detector boxes per frame (before the whole-frame box).")
    label_list: list[str] = Field(["foreground"], description="Mainbody label list (PP-ShiTu).")
    backend: Literal["onnx", "paddle"] = Field("onnx", description="vidrec: inference runtime, ONNX Runtime or Paddle Inference.")
    use_gpu: bool = False
    enable_mkldnn: bool = True
    cpu_num_threads: int = Field(2, ge=1, le=256)
    use_fp16: bool = False
    ir_optim: bool = True
    use_tensorrt: bool = False
    gpu_mem: int = Field(8000, ge=1)
    enable_benchmark: bool = False
    enable_profile: bool = False


class IndexProcessSection(Section):
    """PP-ShiTu ``IndexProcess``: the gallery."""

    index_method: Literal["Flat", "IVF", "HNSW32"] = "Flat"
    image_root: str = "."
    index_dir: str | None = None
    data_file: str | None = None
    index_operation: Literal["new", "append", "remove"] = "new"
    delimiter: str = Field("\t", min_length=1)
    dist_type: Literal["IP", "L2"] = Field("IP", description="hamming (binary features) is not supported.")
    embedding_size: int = Field(1280, ge=1)
    batch_size: int = Field(32, ge=1, le=4096, description="Images per recognizer call while building a gallery.")
    return_k: int = Field(5, ge=1, le=1000)
    # Scores are similarities in [-1, 1] for both dist types (see models/gallery.py), so a
    # threshold outside that range could never (or always) match.
    score_thres: float = Field(0.7, ge=-1.0, le=1.0)


class TransformOps(Section):
    """``DetPreProcess`` / ``RecPreProcess``: a PaddleClas-style list of {OpName: {args}}."""

    transform_ops: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("transform_ops")
    @classmethod
    def _one_op_per_item(cls, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for op in ops:
            if len(op) != 1:
                raise ValueError(f"each transform op must be one {{OpName: args}} mapping, got {op!r}")
        return ops


class DetectorSection(Section):
    """vidrec: which files of ``Global.det_inference_model_dir`` to load and how to merge classes."""

    model_file: str | None = Field(None, description="File in the model folder; default by backend: picodet_s_320_coco.onnx / model.onnx for onnx, model.json / model.pdmodel for paddle.")
    labels_file: str | None = Field(None, description="Class names, one per line; default: infer_cfg.yml's label_list, else coco.names.")
    mainbody: bool = Field(True, description="Class-agnostic NMS as PP-ShiTu's mainbody detector; the COCO class is kept per box.")
    nms_iou: float = Field(0.6, ge=0.0, le=1.0)


class RecognizerSection(Section):
    """vidrec: which file of ``Global.rec_inference_model_dir`` to load."""

    model_file: str | None = Field(None, description="File in the model folder; default by backend: inference.onnx for onnx, inference.json / inference.pdmodel for paddle.")


class VideoSection(Section):
    """vidrec: offline input handling."""

    every_nth: int = Field(1, ge=1, le=10000, description="Process every Nth decoded frame.")
    stream_id: str | None = Field(None, min_length=1, description="Defaults to the input file's stem.")


class KafkaSection(Section):
    bootstrap: str | None = Field(None, description="host:port[,host:port]; None disables the Kafka sink.")
    topic: str = Field("vidrec.results", min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    connect_timeout_s: float = Field(5.0, gt=0, le=120)


class RedisSection(Section):
    url: str | None = Field(None, description="redis://host:port/db; None disables the Redis sink.")
    history_len: int = Field(1000, ge=1, le=1_000_000)
    ttl_s: int | None = Field(3600, ge=1)
    key_prefix: str = Field("vidrec", min_length=1)


class VidrecConfig(Section):
    Global: GlobalSection = Field(default_factory=GlobalSection)
    DetPreProcess: TransformOps | None = Field(None, description="Accepted for inference_general.yaml compatibility; the detector's preprocessing comes with its model.")
    DetPostProcess: dict[str, Any] | None = None
    RecPreProcess: TransformOps = Field(default_factory=TransformOps)
    RecPostProcess: dict[str, Any] | None = None
    IndexProcess: IndexProcessSection = Field(default_factory=IndexProcessSection)
    Detector: DetectorSection = Field(default_factory=DetectorSection)
    Recognizer: RecognizerSection = Field(default_factory=RecognizerSection)
    Video: VideoSection = Field(default_factory=VideoSection)
    Kafka: KafkaSection = Field(default_factory=KafkaSection)
    Redis: RedisSection = Field(default_factory=RedisSection)
