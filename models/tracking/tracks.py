"""One stream's tracks: which crops to embed, what each track is called, and what changed (started, labelled,
ended). Pure bookkeeping around ``StreamTracker``; the models are run by ``TrackedSystem``.

When a track's crop is embedded (``EmbedPolicy``; DeepStream re-infers on a 20 % larger box or every
``secondary-reinfer-interval`` frames, PP-Vehicle every ``skip_frame_num`` frames): when the track is new, when its
box has grown by ``growth`` in area since its last embedding, when ``every`` of its frames have passed, and when
the gallery version changed (its votes then start again; its answer stands until they settle). A track with fewer
attempts than the vote needs (``min_votes``) is embedded on each of its frames, so a new object is named within
``min_votes`` frames, not ``min_votes × every``. Other frames reuse the track's answer. The whole-frame box (PP-ShiTu's) has no track: it is embedded every ``every`` frames of
the stream and on a gallery change, and its last answer stands in between.

With ``unique_labels`` (for galleries of individuals: people, a fleet's vehicles, rather than kinds of product),
a label names at most one live track of a stream at a time: the track whose answer is stronger (its vote's
``score``) holds it, and a weaker claimant stays unnamed until it outvotes the holder or the holder ends. One
person is in one place; a look-alike walker whose best views pass the rule is then not given their name while
they are in view (on vtest.avi's enrol-and-find scenario, "B jeans" otherwise also named other walkers' tracks;
docs/benchmarks.md). Off by default: a gallery of products has many of each on a shelf.

Memory: a track lives while the tracker keeps it (``lost_track_s`` after its last detection), so a stream holds
at most about ``max_det_results`` × frames-per-``lost_track_s`` tracks; each holds its tallies and one small crop.
"""
from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from models.tracking.tracker import StreamTracker, TrackerParams, clip_boxes
from models.tracking.votes import Votes, VoteRule, attempt_weight

THUMBNAIL_PX = 128  # longest side of the crop a track keeps of its best view


@dataclass(frozen=True, slots=True)
class EmbedPolicy:
    every: int = 10  # frames of a track (or of the stream, for the whole frame) between embeddings
    growth: float = 1.2  # box area over its area at the last embedding that calls for a new one

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")
        if self.growth <= 1.0:
            raise ValueError(f"growth must be > 1, got {self.growth}")


@dataclass(frozen=True, slots=True)
class TrackingParams:
    tracker: TrackerParams = field(default_factory=TrackerParams)
    embed: EmbedPolicy = field(default_factory=EmbedPolicy)
    votes: VoteRule = field(default_factory=VoteRule)
    unique_labels: bool = False  # a label names at most one live track of a stream (module docstring)


def needs_embedding(*, attempts: int, frames_since: int, area: float, embedded_area: float,
                    embedded_version: int | None, gallery_version: int | None, policy: EmbedPolicy,
                    min_votes: int = 1) -> bool:
    """Whether a track's crop goes through the recognizer in this frame (a pure function). ``attempts`` counts
    those since the gallery version ``embedded_version``."""
    return (
        attempts < min_votes
        or embedded_version != gallery_version
        or frames_since >= policy.every
        or area >= policy.growth * embedded_area
    )


@dataclass(slots=True)
class Track:
    """What vidrec knows of one tracked object."""

    track_id: int
    first_time: float  # the tracker's clock (media seconds for files, see TrackedSystem)
    first_capture: float  # wall-clock Unix seconds of the first frame
    first_frame: int
    last_time: float
    last_capture: float
    last_frame: int
    box: tuple[float, float, float, float]
    det_score: float
    det_class_id: int
    votes: Votes
    frames_since_embed: int = 0
    embedded_area: float = 0.0
    embedded_version: int | None = None
    best_weight: float = -1.0
    best_box: tuple[float, float, float, float] | None = None
    best_frame: int | None = None
    thumbnail_rgb: np.ndarray | None = None  # the crop of the best attempt, longest side <= THUMBNAIL_PX

    @property
    def dwell_s(self) -> float:
        return max(0.0, self.last_time - self.first_time)


ChangeKind = Literal["started", "labelled", "ended"]


@dataclass(frozen=True, slots=True)
class TrackSnapshot:
    """A track as it was at one moment (a ``Track`` keeps changing within the batch)."""

    track_id: int
    label: str | None
    score: float | None
    attempts: int
    box: tuple[float, float, float, float]
    det_class_id: int
    first_capture: float
    last_capture: float
    dwell_s: float
    best_box: tuple[float, float, float, float] | None
    best_frame: int | None
    thumbnail_rgb: np.ndarray | None

    @classmethod
    def of(cls, track: Track) -> "TrackSnapshot":
        return cls(track.track_id, track.votes.label, track.votes.score, track.votes.attempts, track.box,
                   track.det_class_id, track.first_capture, track.last_capture, track.dwell_s, track.best_box,
                   track.best_frame, track.thumbnail_rgb)  # the thumbnail is replaced, never written in place


@dataclass(frozen=True, slots=True)
class TrackChange:
    """Something that happened to a track in one frame: it ``started``, got or changed its label
    (``labelled``; ``previous_label`` says from what), or ``ended`` (``reason``: lost, stream ended, reset...).
    ``frame_index`` is -1 for an end with no frame (the stream ended or was removed)."""

    kind: ChangeKind
    track: TrackSnapshot  # the track just after the change
    frame_index: int
    capture_time: float
    previous_label: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class FramePlan:
    """One frame's boxes after tracking: each box's track id (-1: none) and which crops to embed."""

    xyxy: np.ndarray  # (n, 4) clipped to the frame
    det_scores: np.ndarray
    class_ids: np.ndarray
    track_ids: np.ndarray  # int64, -1 for a box no track took
    embed: np.ndarray  # bool per box
    embed_whole_frame: bool
    width: int
    height: int
    frame_index: int
    capture_time: float
    ended: list[TrackChange]
    started: list[TrackChange]


class StreamTracks:
    """The tracks of one stream, fed its frames in order. A track starts (``started``) at its first frame with an
    id, its object's second detection (the tracker confirms a track there)."""

    def __init__(self, params: TrackingParams, *, first_id: int = 1) -> None:
        self.params = params
        self.tracker = StreamTracker(params.tracker, first_id=first_id)
        self.tracks: dict[int, Track] = {}
        self.shape: tuple[int, int] | None = None
        self.whole_frame_since = 0
        self.whole_frame_version: int | None = None
        self.whole_frame_answer: tuple[str | None, float | None] | None = None  # None: never embedded
        self.gallery_version: int | None = None  # the version its labels come from

    def plan(self, *, xyxy: np.ndarray, det_scores: np.ndarray, class_ids: np.ndarray, width: int, height: int,
             timestamp: float, capture_time: float, frame_index: int, gallery_version: int | None) -> FramePlan:
        """Track one frame's boxes and decide what to embed; raises ``TimeWentBack`` (tracks untouched)."""
        ids = self.tracker.update(xyxy, det_scores, timestamp=timestamp, width=width, height=height,
                                  class_ids=class_ids)
        boxes, _ = clip_boxes(xyxy, width=width, height=height)  # as the tracker saw them
        embed = np.zeros(len(ids), dtype=bool)
        started: list[TrackChange] = []
        for row, track_id in enumerate(ids.tolist()):
            if track_id < 0:
                continue
            box = tuple(float(v) for v in boxes[row])
            track = self.tracks.get(track_id)
            if track is None:
                track = Track(track_id, timestamp, capture_time, frame_index, timestamp, capture_time, frame_index,
                              box, float(det_scores[row]), int(class_ids[row]), Votes(rule=self.params.votes))
                self.tracks[track_id] = track
                started.append(TrackChange("started", TrackSnapshot.of(track), frame_index, capture_time))
            else:
                track.last_time, track.last_capture, track.last_frame = timestamp, capture_time, frame_index
                track.box, track.det_score, track.det_class_id = box, float(det_scores[row]), int(class_ids[row])
                track.frames_since_embed += 1
            area = (box[2] - box[0]) * (box[3] - box[1])
            if needs_embedding(attempts=track.votes.tallied, frames_since=track.frames_since_embed, area=area,
                               embedded_area=track.embedded_area, embedded_version=track.embedded_version,
                               gallery_version=gallery_version, policy=self.params.embed,
                               min_votes=self.params.votes.min_votes):
                if track.embedded_version != gallery_version and track.votes.tallied:
                    track.votes.restart()
                embed[row] = True
                track.frames_since_embed, track.embedded_area, track.embedded_version = 0, area, gallery_version
        kept = self.tracker.kept_ids()
        ended = [self._end(track_id, "lost", frame_index, capture_time) for track_id in list(self.tracks)
                 if track_id not in kept]
        whole = (self.whole_frame_answer is None or self.whole_frame_version != gallery_version
                 or self.whole_frame_since + 1 >= self.params.embed.every)
        self.whole_frame_since = 0 if whole else self.whole_frame_since + 1
        if whole:
            self.whole_frame_version = gallery_version
        self.shape = (height, width)
        return FramePlan(boxes, np.asarray(det_scores, np.float32), np.asarray(class_ids, np.int32), ids, embed, whole,
                         width, height, frame_index, capture_time, ended, started)

    def record(self, track_id: int, *, label: str | None, similarity: float, box_area: float, frame_area: float,
               frame_index: int, capture_time: float, crop_rgb: np.ndarray | None = None,
               margin: float = math.inf) -> list[TrackChange]:
        """One recognition attempt of a track; a ``labelled`` change for each track whose label changed: with
        ``unique_labels``, first the track it took the label from (so no two tracks ever hold it), then this one."""
        track = self.tracks[track_id]
        weight = attempt_weight(similarity, box_area=box_area, frame_area=frame_area)
        before = track.votes.label
        track.votes.add(label, similarity, weight, margin)
        changes: list[TrackChange] = []
        if self.params.unique_labels and track.votes.label is not None:
            holder = self._holder(track.votes.label, besides=track_id)
            if holder is not None:
                if (holder.votes.score or 0.0) >= (track.votes.score or 0.0):
                    track.votes.unname()  # the holder's answer is at least as strong: it keeps the label
                else:
                    taken_from = holder.votes.label
                    holder.votes.unname()
                    changes.append(TrackChange("labelled", TrackSnapshot.of(holder), frame_index, capture_time,
                                               previous_label=taken_from))
        if weight > track.best_weight:
            track.best_weight, track.best_box, track.best_frame = weight, track.box, frame_index
            if crop_rgb is not None and crop_rgb.size:
                track.thumbnail_rgb = thumbnail(crop_rgb)
        if track.votes.label != before:
            changes.append(TrackChange("labelled", TrackSnapshot.of(track), frame_index, capture_time,
                                       previous_label=before))
        return changes

    def _holder(self, label: str, *, besides: int) -> Track | None:
        """The live track other than ``besides`` that ``label`` names, if any (at most one, by construction)."""
        return next((t for t in self.tracks.values() if t.track_id != besides and t.votes.label == label), None)

    def forget_labels_not_in(self, labels: frozenset[str], *, frame_index: int,
                             capture_time: float) -> list[TrackChange]:
        """A new gallery version: unname at once the tracks (and the whole frame) whose label it no longer holds."""
        changes = []
        for track in self.tracks.values():
            before = track.votes.label
            if track.votes.forget_unless(labels):
                changes.append(TrackChange("labelled", TrackSnapshot.of(track), frame_index, capture_time,
                                           previous_label=before))
        if self.whole_frame_answer is not None and self.whole_frame_answer[0] not in labels:
            self.whole_frame_answer = (None, None)
        return changes

    def end_all(self, reason: str, *, frame_index: int, capture_time: float) -> list[TrackChange]:
        """End every track (stream ended, restarted, resized, failed) and start the next tracker after them."""
        ended = [self._end(track_id, reason, frame_index, capture_time) for track_id in list(self.tracks)]
        self.tracker = StreamTracker(self.params.tracker, first_id=self.tracker.next_id)
        self.whole_frame_answer, self.whole_frame_since, self.shape = None, 0, None
        return ended

    def _end(self, track_id: int, reason: str, frame_index: int, capture_time: float) -> TrackChange:
        track = self.tracks.pop(track_id)
        return TrackChange("ended", TrackSnapshot.of(track), frame_index, capture_time, reason=reason)


def thumbnail(crop_rgb: np.ndarray, *, longest: int = THUMBNAIL_PX) -> np.ndarray:
    """A copy of ``crop_rgb`` whose longest side is at most ``longest`` pixels (a pure function)."""
    height, width = crop_rgb.shape[:2]
    scale = longest / max(height, width)
    if scale >= 1.0:
        return crop_rgb.copy()
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(crop_rgb, size, interpolation=cv2.INTER_AREA)
