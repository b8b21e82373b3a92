"""PP-ShiTu's recognition system over a batch of frames: detect → crop → embed → search → NMS.

The same semantics as PaddleClas's ``predict_system.py`` (see docs/ppshitu-compat.md), batched:
one detector pass over the frames, one recognizer pass over every crop of the batch, one gallery
search for all of them.

Per frame: the detector's boxes (already limited to ``max_det_results`` above ``threshold``), plus
the whole frame as one more box; each is embedded and searched; its top-1 label is kept when the
score reaches ``score_thres``; labelled boxes then go through a greedy NMS by recognition score
(``rec_nms_thresold``). Unlike PP-ShiTu, detector boxes that found no label are kept (label None),
so a consumer sees every object; the whole-frame box is kept only when it was recognised.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import cv2
import numpy as np

from models.nms import nms_xyxy
from models.types import Detections


@dataclass(frozen=True, slots=True)
class RecognizedBox:
    """One output box. ``det_class_id`` is -1 for the whole-frame box."""

    xyxy: tuple[float, float, float, float]
    det_score: float
    det_class_id: int
    label: str | None
    score: float | None
    track_id: int | None = None  # with tracking (models/tracking): the box's track; None for none
    embedded: bool = True  # its crop went through the recognizer for this frame


@dataclass(frozen=True, slots=True)
class ShituParams:
    rec_nms_thresold: float = 0.05
    # PP-ShiTu searches return_k hits and keeps only the first; vidrec asks the gallery for the top-1.
    score_thres: float = 0.5


@dataclass
class StageTimes:
    """Milliseconds per stage for a whole batch (divide among frames as the caller sees fit)."""

    detect: float = 0.0
    recognize: float = 0.0
    search: float = 0.0
    post: float = 0.0


@dataclass
class BatchRecognition:
    boxes: list[list[RecognizedBox]]
    times: StageTimes = field(default_factory=StageTimes)
    gallery_version: int | None = None
    crops: list[int] | None = None  # per frame: crops that went through the recognizer (whole frame included)


class _Detector(Protocol):
    def detect(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]: ...


class _Recognizer(Protocol):
    def embed(self, crops_rgb: Sequence[np.ndarray]) -> np.ndarray: ...


class _Gallery(Protocol):
    version: int
    labels: frozenset[str]  # its distinct labels (tracking unnames a track whose label left the gallery)

    def search(self, queries: np.ndarray, k: int): ...


def crop_boxes(image_rgb: np.ndarray, xyxy: np.ndarray) -> list[np.ndarray]:
    """Integer crops as PP-ShiTu takes them (floor of x1/y1, ceil-free x2/y2), never empty."""
    height, width = image_rgb.shape[:2]
    crops = []
    for x1, y1, x2, y2 in np.asarray(xyxy, dtype=np.float64):
        left = int(min(max(np.floor(x1), 0), width - 1))
        top = int(min(max(np.floor(y1), 0), height - 1))
        right = int(min(max(np.ceil(x2), left + 1), width))
        bottom = int(min(max(np.ceil(y2), top + 1), height))
        crops.append(image_rgb[top:bottom, left:right])
    return crops


def with_whole_frame(detections: Detections, *, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes, scores and class ids of the detections plus the whole frame (score 1.0, class -1)."""
    whole = np.array([[0.0, 0.0, float(width), float(height)]], dtype=np.float32)
    xyxy = np.concatenate([detections.xyxy.reshape(-1, 4).astype(np.float32), whole])
    scores = np.concatenate([detections.confidence.astype(np.float32), np.ones(1, np.float32)])
    class_ids = np.concatenate([detections.class_id.astype(np.int32), -np.ones(1, np.int32)])
    return xyxy, scores, class_ids


def assemble_frame(
    *,
    xyxy: np.ndarray,
    det_scores: np.ndarray,
    class_ids: np.ndarray,
    labels: Sequence[str | None],
    scores: np.ndarray,
    params: ShituParams,
    embedded: bool = True,
) -> list[RecognizedBox]:
    """Apply ``score_thres`` and PP-ShiTu's NMS over recognised boxes; keep unrecognised detector boxes.

    ``labels``/``scores`` are the gallery's top-1 per box (label None where the gallery had none).
    Output order: recognised boxes by recognition score, then unrecognised ones by detector score.
    """
    scores = np.asarray(scores, dtype=np.float32)
    recognised = np.array(
        [lab is not None and float(s) >= params.score_thres for lab, s in zip(labels, scores)], dtype=bool
    )
    out: list[RecognizedBox] = []
    rec_idx = np.flatnonzero(recognised)
    if rec_idx.size:
        kept = rec_idx[nms_xyxy(xyxy[rec_idx], scores[rec_idx], params.rec_nms_thresold)]
        for i in kept:
            out.append(RecognizedBox(tuple(float(v) for v in xyxy[i]), float(det_scores[i]), int(class_ids[i]), labels[i],
                                     float(scores[i]), embedded=embedded))
    rest = [i for i in np.argsort(-det_scores, kind="stable") if not recognised[i] and class_ids[i] >= 0]
    for i in rest:
        out.append(RecognizedBox(tuple(float(v) for v in xyxy[i]), float(det_scores[i]), int(class_ids[i]), None, None,
                                 embedded=embedded))
    return out


class ShituSystem:
    """Detector + (optional) recognizer and gallery, run over a batch of BGR frames."""

    def __init__(self, *, detector: _Detector, recognizer: _Recognizer | None, gallery: _Gallery | None, params: ShituParams) -> None:
        self.detector = detector
        self.recognizer = recognizer
        self.gallery = gallery
        self.params = params

    def set_gallery(self, gallery: _Gallery | None) -> None:
        self.gallery = gallery

    @property
    def can_recognize(self) -> bool:
        return self.gallery is not None and self.recognizer is not None

    def search_crops(self, crops_rgb: Sequence[np.ndarray], gallery: _Gallery,
                     times: StageTimes) -> tuple[list[str | None], np.ndarray]:
        """Embed RGB crops in one recognizer call and search ``gallery``: the top-1 label (None where the gallery
        had none) and similarity per crop; adds the stages' milliseconds to ``times``."""
        assert self.recognizer is not None
        t0 = time.perf_counter()
        embeddings = self.recognizer.embed(crops_rgb)
        t1 = time.perf_counter()
        found = gallery.search(embeddings, 1)
        t2 = time.perf_counter()
        times.recognize += (t1 - t0) * 1000
        times.search += (t2 - t1) * 1000
        return [row[0] for row in found.labels], np.asarray(found.scores, dtype=np.float32)[:, 0]

    def run(self, images_bgr: Sequence[np.ndarray]) -> BatchRecognition:
        times = StageTimes()
        t0 = time.perf_counter()
        detections = self.detector.detect(images_bgr)
        t1 = time.perf_counter()
        times.detect = (t1 - t0) * 1000

        per_frame = [
            with_whole_frame(det, width=img.shape[1], height=img.shape[0]) for det, img in zip(detections, images_bgr)
        ]
        gallery = self.gallery  # one gallery for the whole batch, even if it is swapped meanwhile
        counts = [len(boxes) for boxes, _, _ in per_frame]
        total = sum(counts)
        labels: list[str | None] = [None] * total
        scores = np.zeros(total, dtype=np.float32)
        if gallery is not None and self.recognizer is not None and total:
            crops: list[np.ndarray] = []
            for (boxes, _, _), img in zip(per_frame, images_bgr):
                # PaddleClas recognizers take RGB; convert once per frame, not per crop.
                crops.extend(crop_boxes(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), boxes))
            labels, scores = self.search_crops(crops, gallery, times)

        embedded = gallery is not None and self.recognizer is not None
        t5 = time.perf_counter()
        results: list[list[RecognizedBox]] = []
        start = 0
        for (boxes, det_scores, class_ids), count in zip(per_frame, counts):
            results.append(
                assemble_frame(
                    xyxy=boxes,
                    det_scores=det_scores,
                    class_ids=class_ids,
                    labels=labels[start : start + count],
                    scores=scores[start : start + count],
                    params=self.params,
                    embedded=embedded,
                )
            )
            start += count
        times.post = (time.perf_counter() - t5) * 1000
        return BatchRecognition(boxes=results, times=times, gallery_version=None if gallery is None else gallery.version,
                                crops=counts if embedded else [0] * len(counts))
