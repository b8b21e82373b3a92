"""PP-ShiTu's recognition system over a batch of frames: detect → crop → embed → search → NMS.

The same semantics as PaddleClas's ``predict_system.py`` (see docs/ppshitu-compat.md), batched:
one detector pass over the frames, one recognizer pass over every crop of the batch, one gallery
search for all of them.

Per frame: the detector's boxes (already limited to ``max_det_results`` above ``threshold``), plus
the whole frame as one more box; each is embedded and searched; its top-1 label is kept when the
answer passes the acceptance rule (``accepted``: the score reaches ``score_thres`` and, vidrec's own, the
margin to the best entry of another label reaches ``margin_thres``); labelled boxes then go through a greedy NMS by recognition score
(``rec_nms_thresold``). Unlike PP-ShiTu, detector boxes that found no label are kept (label None),
so a consumer sees every object; the whole-frame box is kept only when it was recognised.
"""
from __future__ import annotations

import math
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
    # PP-ShiTu searches return_k hits and keeps only the first; vidrec reads the others for the margin.
    score_thres: float = 0.5
    margin_thres: float = 0.0  # 0: PP-ShiTu's rule, the score alone (and a top-1 search)
    return_k: int = 5


# ---- the acceptance rule -----------------------------------------------------------------------------------


def label_margin(labels: Sequence[str | None], scores: Sequence[float]) -> float:
    """How far the top-1 entry's score is above the best entry of another label, from one query's ranked hits
    (best first; ``None`` where the gallery had no more entries).

    When every returned hit has the top-1's label, the last returned score bounds the other labels' from
    above, so the margin is at least top-1 minus it (a lower bound, the cautious answer). When the gallery
    ran out of entries first (a ``None``) or holds one entry only, no other label exists: ``inf``.
    No top-1 at all: ``-inf``.
    """
    if not labels or labels[0] is None:
        return -math.inf
    top_label, top_score = labels[0], float(scores[0])
    for label, score in zip(labels[1:], scores[1:]):
        if label is None:
            return math.inf
        if label != top_label:
            return top_score - float(score)
    return top_score - float(scores[-1]) if len(labels) > 1 else math.inf


def accepted(score: float, margin: float, *, score_thres: float, margin_thres: float) -> bool:
    """The acceptance rule: a gallery answer names the object when its similarity reaches ``score_thres``
    AND it beats every other label by ``margin_thres``. Chosen on the hard set's tune split (known and
    unknown queries, bench/acceptance_rule.py): the margin rejects an unknown object that looks a little
    like several gallery objects at once, which a score threshold alone can only reject by also rejecting
    most right answers."""
    return score >= score_thres and margin >= margin_thres


@dataclass(frozen=True)
class CropAnswers:
    """The gallery's answer per crop: top-1 label (None where the gallery had none), its similarity, and its
    margin over the best other label (``label_margin``)."""

    labels: list[str | None]
    scores: np.ndarray  # (n,) float32
    margins: np.ndarray  # (n,) float64

    def accepted(self, params: ShituParams) -> np.ndarray:
        """(n,) bool: which answers pass the acceptance rule."""
        return np.array([lab is not None and accepted(float(s), float(m), score_thres=params.score_thres,
                                                       margin_thres=params.margin_thres)
                         for lab, s, m in zip(self.labels, self.scores, self.margins)], dtype=bool)


@dataclass
class StageTimes:
    """Milliseconds per stage for a whole batch (divide among frames as the caller sees fit)."""

    detect: float = 0.0
    recognize: float = 0.0
    search: float = 0.0
    post: float = 0.0


@dataclass(frozen=True, slots=True)
class DetectedBatch:
    """A batch's detections, one ``Detections`` per image, made before (or while) the rest of its recognition
    runs, and what the detector took in milliseconds."""

    detections: list[Detections]
    ms: float


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
    margins: np.ndarray | None = None,
) -> list[RecognizedBox]:
    """Apply the acceptance rule and PP-ShiTu's NMS over recognised boxes; keep unrecognised detector boxes.

    ``labels``/``scores`` are the gallery's top-1 per box (label None where the gallery had none), ``margins``
    their margins over the best other label (None: not known, treated as passing any ``margin_thres``).
    Output order: recognised boxes by recognition score, then unrecognised ones by detector score.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if margins is None:
        margins = np.full(len(scores), math.inf)
    recognised = CropAnswers(list(labels), scores, np.asarray(margins, dtype=np.float64)).accepted(params)
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

    def answer_crops(self, crops_rgb: Sequence[np.ndarray], gallery: _Gallery, times: StageTimes) -> CropAnswers:
        """Embed RGB crops in one recognizer call and search ``gallery``: per crop the top-1 label (None where the
        gallery had none), its similarity and its margin over the best other label (``label_margin`` over the top
        ``return_k`` hits; with ``margin_thres`` 0 only the top-1 is searched, and margins are ``inf``); adds the
        stages' milliseconds to ``times``."""
        assert self.recognizer is not None
        t0 = time.perf_counter()
        embeddings = self.recognizer.embed(crops_rgb)
        t1 = time.perf_counter()
        k = max(2, self.params.return_k) if self.params.margin_thres > 0 else 1
        found = gallery.search(embeddings, k)
        t2 = time.perf_counter()
        times.recognize += (t1 - t0) * 1000
        times.search += (t2 - t1) * 1000
        scores = np.asarray(found.scores, dtype=np.float32)
        if k == 1:
            margins = np.full(len(found.labels), math.inf)
        else:
            margins = np.array([label_margin(row, row_scores) for row, row_scores in zip(found.labels, scores.tolist())])
        return CropAnswers([row[0] for row in found.labels], scores[:, 0], margins)

    def detect(self, images_bgr: Sequence[np.ndarray]) -> DetectedBatch:
        """The detector alone, over a batch: what ``run`` does first, callable ahead of it (on another thread
        while the previous batch is recognised: ONNX Runtime lets go of the GIL while it runs)."""
        t0 = time.perf_counter()
        detections = self.detector.detect(images_bgr)
        return DetectedBatch(detections, (time.perf_counter() - t0) * 1000)

    def run(self, images_bgr: Sequence[np.ndarray], detected: DetectedBatch | None = None) -> BatchRecognition:
        """Recognise a batch; ``detected``: its detections made ahead by ``detect`` (else detected here)."""
        times = StageTimes()
        if detected is None:
            detected = self.detect(images_bgr)
        if len(detected.detections) != len(images_bgr):
            raise ValueError(f"{len(images_bgr)} image(s) but detections for {len(detected.detections)}")
        detections = detected.detections
        times.detect = detected.ms

        per_frame = [
            with_whole_frame(det, width=img.shape[1], height=img.shape[0]) for det, img in zip(detections, images_bgr)
        ]
        gallery = self.gallery  # one gallery for the whole batch, even if it is swapped meanwhile
        counts = [len(boxes) for boxes, _, _ in per_frame]
        total = sum(counts)
        labels: list[str | None] = [None] * total
        scores = np.zeros(total, dtype=np.float32)
        margins = np.full(total, math.inf)
        if gallery is not None and self.recognizer is not None and total:
            crops: list[np.ndarray] = []
            for (boxes, _, _), img in zip(per_frame, images_bgr):
                # PaddleClas recognizers take RGB; convert once per frame, not per crop.
                crops.extend(crop_boxes(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), boxes))
            answers = self.answer_crops(crops, gallery, times)
            labels, scores, margins = answers.labels, answers.scores, answers.margins

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
                    margins=margins[start : start + count],
                )
            )
            start += count
        times.post = (time.perf_counter() - t5) * 1000
        return BatchRecognition(boxes=results, times=times, gallery_version=None if gallery is None else gallery.version,
                                crops=counts if embedded else [0] * len(counts))
