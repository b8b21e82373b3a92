"""Recognition per track: detect → track → embed only the crops that need it → vote → boxes with track answers.

``TrackedSystem`` runs a ``ShituSystem``'s detector, recognizer and gallery over a batch of frames from any
streams, keeping each stream's ``StreamTracks`` between batches (keyed by stream id, so cross-stream batching
never mixes them). Per batch: one detector pass; per frame, in order, the stream's tracker and the embedding
decisions; one recognizer pass and one gallery search for every crop chosen in the batch; then, per frame in
order, the attempts go to their tracks' votes and each box gets its track's answer.

Output boxes (``RecognizedBox``): every detector box with its ``track_id`` (None when no track took it: it is
then published unnamed) and its track's voted ``label``/``score``; ``embedded`` tells which crops were
recognised in this frame. The whole-frame box is kept when its last answer has a label, as without tracking.
Unlike PP-ShiTu's per-frame path, labelled boxes are not suppressed by ``rec_nms_thresold``: a track is one object.

The tracker's clock is the frame's ``pts`` (media seconds) when it has one, else its ``capture_time``: a file
decoded faster than real time still moves at its own pace, and a live stream's dropped frames show as time.
A frame whose time goes back (a file looped, a camera reset), a change of resolution, a restart or the end of a
stream ends the stream's tracks (``reset``/``end``); a tracker error on one stream ends that stream's tracks and
leaves its boxes untracked for that frame, never the other streams'.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from models.shitu import CropAnswers, DetectedBatch, RecognizedBox, ShituSystem, StageTimes, accepted, crop_boxes
from models.tracking.tracker import TimeWentBack
from models.tracking.tracks import FramePlan, StreamTracks, TrackChange, TrackingParams

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FrameMeta:
    """What tracking needs to know of a frame beyond its pixels."""

    stream_id: str
    index: int
    pts: float | None
    capture_time: float

    @property
    def timestamp(self) -> float:
        return self.pts if self.pts is not None else self.capture_time


@dataclass
class TrackedBatch:
    boxes: list[list[RecognizedBox]]  # per frame
    changes: list[list[TrackChange]]  # per frame, in the order they happened
    crops: list[int]  # per frame: crops that went through the recognizer (whole frame included)
    times: StageTimes = field(default_factory=StageTimes)
    gallery_version: int | None = None


class TrackedSystem:
    """A ``ShituSystem`` that recognises tracks instead of boxes."""

    def __init__(self, system: ShituSystem, params: TrackingParams) -> None:
        self.system = system
        self.params = params
        self._streams: dict[str, StreamTracks] = {}
        self._next_ids: dict[str, int] = {}  # a stream's first free track id, kept across ends within the run

    @property
    def streams(self) -> dict[str, StreamTracks]:
        return self._streams

    def end(self, stream_id: str, reason: str, *, frame_index: int = -1, capture_time: float = 0.0) -> list[TrackChange]:
        """End a stream's tracks and forget its state (its ids go on from where they were if it comes back)."""
        tracks = self._streams.pop(stream_id, None)
        if tracks is None:
            return []
        changes = tracks.end_all(reason, frame_index=frame_index, capture_time=capture_time)
        self._next_ids[stream_id] = tracks.tracker.next_id
        return changes

    def run(self, images_bgr: Sequence[np.ndarray], frames: Sequence[FrameMeta],
            detected: DetectedBatch | None = None) -> TrackedBatch:
        """Track and recognise a batch; ``detected``: its detections made ahead (``ShituSystem.detect``)."""
        if len(images_bgr) != len(frames):
            raise ValueError(f"{len(images_bgr)} image(s) but {len(frames)} frame description(s)")
        system, times = self.system, StageTimes()
        if detected is None:
            detected = system.detect(images_bgr)
        if len(detected.detections) != len(images_bgr):
            raise ValueError(f"{len(images_bgr)} image(s) but detections for {len(detected.detections)}")
        gallery = system.gallery  # one gallery for the whole batch, even if it is swapped meanwhile
        version = None if gallery is None else gallery.version
        recognize = gallery is not None and system.recognizer is not None
        detections = detected.detections
        times.detect = detected.ms

        t1 = time.perf_counter()
        changes: list[list[TrackChange]] = [[] for _ in frames]
        plans: list[FramePlan | None] = []
        for i, (image, det, meta) in enumerate(zip(images_bgr, detections, frames)):
            plans.append(self._plan(image, det, meta, gallery, changes[i]))
        # Crops to embed, in frame order: (frame, box row or -1 for the whole frame).
        wanted: list[tuple[int, int]] = []
        for i, plan in enumerate(plans):
            if plan is None or not recognize:
                continue
            wanted.extend((i, int(row)) for row in np.flatnonzero(plan.embed))
            if plan.embed_whole_frame:
                wanted.append((i, -1))
        crops: list[np.ndarray] = []
        rgb_of: dict[int, np.ndarray] = {}
        for i, row in wanted:
            if i not in rgb_of:
                rgb_of[i] = cv2.cvtColor(images_bgr[i], cv2.COLOR_BGR2RGB)  # once per frame, not per crop
            plan = plans[i]
            assert plan is not None
            box = (np.array([[0.0, 0.0, plan.width, plan.height]]) if row < 0 else plan.xyxy[row:row + 1])
            crops.extend(crop_boxes(rgb_of[i], box))
        times.post += (time.perf_counter() - t1) * 1000
        found = CropAnswers([], np.zeros(0, np.float32), np.zeros(0))
        if crops:
            assert gallery is not None
            found = system.answer_crops(crops, gallery, times)

        t2 = time.perf_counter()
        answers: dict[tuple[int, int], tuple[str | None, float, float, np.ndarray]] = {
            key: (found.labels[n], float(found.scores[n]), float(found.margins[n]), crops[n])
            for n, key in enumerate(wanted)
        }
        out = [self._untracked(detections[i]) if plan is None else self._boxes(plan, meta, answers, i, changes[i])
               for i, (plan, meta) in enumerate(zip(plans, frames))]
        per_frame = Counter(i for i, _ in wanted)
        times.post += (time.perf_counter() - t2) * 1000
        return TrackedBatch(out, changes, [per_frame[i] for i in range(len(frames))], times, version)

    # ------------------------------------------------------------------------------------------ internals

    def _plan(self, image: np.ndarray, det, meta: FrameMeta, gallery, changes: list[TrackChange]  # noqa: ANN001
              ) -> FramePlan | None:
        version = None if gallery is None else gallery.version
        height, width = image.shape[:2]
        tracks = self._streams.get(meta.stream_id)
        if tracks is not None and tracks.shape is not None and tracks.shape != (height, width):
            changes.extend(self.end(meta.stream_id, f"resolution changed to {width}x{height}",
                                    frame_index=meta.index, capture_time=meta.capture_time))
            tracks = None
        if tracks is None:
            tracks = StreamTracks(self.params, first_id=self._next_ids.pop(meta.stream_id, 1))
            self._streams[meta.stream_id] = tracks
        kwargs = dict(xyxy=det.xyxy, det_scores=det.confidence, class_ids=det.class_id, width=width, height=height,
                      timestamp=meta.timestamp, capture_time=meta.capture_time, frame_index=meta.index,
                      gallery_version=version)
        if tracks.gallery_version != version:  # a new gallery: labels it no longer holds go at once
            labels = frozenset() if gallery is None else gallery.labels
            if tracks.gallery_version is not None:
                changes.extend(tracks.forget_labels_not_in(labels, frame_index=meta.index,
                                                           capture_time=meta.capture_time))
            tracks.gallery_version = version
        try:
            try:
                plan = tracks.plan(**kwargs)
            except TimeWentBack as exc:  # a new tracker for the new timeline
                changes.extend(self.end(meta.stream_id, f"time went back ({exc})", frame_index=meta.index,
                                        capture_time=meta.capture_time))
                tracks = StreamTracks(self.params, first_id=self._next_ids.pop(meta.stream_id, 1))
                self._streams[meta.stream_id] = tracks
                plan = tracks.plan(**kwargs)
        except Exception as exc:  # noqa: BLE001 - one stream's tracker error ends its tracks, not the batch
            log.error("stream %r: tracker failed on frame %d (%s: %s): its tracks end", meta.stream_id, meta.index,
                      type(exc).__name__, exc)
            changes.extend(self.end(meta.stream_id, f"tracker error: {type(exc).__name__}: {exc}",
                                    frame_index=meta.index, capture_time=meta.capture_time))
            return None
        changes.extend(plan.ended)
        changes.extend(plan.started)
        return plan

    def _boxes(self, plan: FramePlan, meta: FrameMeta, answers: dict, i: int,
               changes: list[TrackChange]) -> list[RecognizedBox]:
        tracks = self._streams[meta.stream_id]
        frame_area = float(plan.width * plan.height)
        out: list[RecognizedBox] = []
        whole = answers.get((i, -1))
        if whole is not None:
            label, score, margin, _ = whole
            params = self.system.params
            named = label is not None and accepted(score, margin, score_thres=params.score_thres,
                                                   margin_thres=params.margin_thres)
            tracks.whole_frame_answer = (label, score) if named else (None, None)
        if tracks.whole_frame_answer is not None and tracks.whole_frame_answer[0] is not None:
            label, score = tracks.whole_frame_answer
            out.append(RecognizedBox((0.0, 0.0, float(plan.width), float(plan.height)), 1.0, -1, label, score,
                                     track_id=None, embedded=whole is not None))
        order = np.argsort(-plan.det_scores, kind="stable")
        for row in order.tolist():
            box = tuple(float(v) for v in plan.xyxy[row])
            track_id = int(plan.track_ids[row])
            answer = answers.get((i, row))
            if track_id < 0 or track_id not in tracks.tracks:
                out.append(RecognizedBox(box, float(plan.det_scores[row]), int(plan.class_ids[row]), None, None,
                                         track_id=None, embedded=False))
                continue
            if answer is not None:
                label, score, margin, crop = answer
                changes.extend(tracks.record(track_id, label=label, similarity=score,
                                             box_area=(box[2] - box[0]) * (box[3] - box[1]), frame_area=frame_area,
                                             frame_index=meta.index, capture_time=meta.capture_time, crop_rgb=crop,
                                             margin=margin))
            votes = tracks.tracks[track_id].votes
            out.append(RecognizedBox(box, float(plan.det_scores[row]), int(plan.class_ids[row]), votes.label,
                                     votes.score, track_id=track_id, embedded=answer is not None))
        return out

    @staticmethod
    def _untracked(det) -> list[RecognizedBox]:  # noqa: ANN001
        order = np.argsort(-det.confidence, kind="stable")
        return [RecognizedBox(tuple(float(v) for v in det.xyxy[r]), float(det.confidence[r]), int(det.class_id[r]),
                              None, None, track_id=None, embedded=False) for r in order.tolist()]
