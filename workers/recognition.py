"""The recognition step: a batch of frames in, one finished ``FrameResult`` per frame out.

Both ways of running vidrec go through it: ``vidrec video`` (workers/video_job.py) and the service's inference
worker (workers/inference.py). Per batch it picks up a newly saved gallery version first (so one batch is
named by one version), runs the detector, recognizer and gallery search (``ShituSystem``), and builds each
frame's result once, complete: boxes and labels, ``gallery_version``, ``latency_ms`` and whatever the caller
knows about the frame (``FrameContext``: the live service's stream state, ``seq`` and ``run_id``, whether the
pixels carry a wall-clock stamp) and the ``node`` that made it. Results are never changed after this.

``latency_ms``, in this order: ``decode`` (the source's), ``detect``, ``recognize``, ``search``, ``post`` (the
batch's stage times), ``total`` (capture → results ready, i.e. handed to the sinks), then ``queue`` (capture →
batch start) when the caller says when its batch started, and ``camera`` (the wall-clock stamp in the pixels →
capture) for frames the caller marks ``clock_stamped``.

With tracking (``Tracker.enabled``, the default; models/tracking), the step keeps each stream's tracks between
batches (``TrackedSystem``, keyed by stream id) and each result's boxes carry their track's id and voted answer;
what happened to the tracks comes out as ``TrackEvent``s beside the results. A caller ends a stream's tracks when
the stream ends, is removed or restarts (``end_stream``); a resolution change or time going back ends them by itself.

What the step does not know: where frames come from, how they were batched or dropped, where results go.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from config import VidrecConfig
from models.gallery_watch import GalleryWatcher
from models.shitu import DetectedBatch, RecognizedBox, ShituSystem, StageTimes
from models.tracking import FrameMeta, TrackChange, TrackedSystem, TrackingParams
from stream.clockcode import decode_clock
from stream.frames import Frame
from stream.messages import FrameResult, ObjectResult
from stream.track_events import TrackEvent
from workers.system import tracking_params

# How often a running job looks for a new gallery version in IndexProcess.index_dir (a few stat calls).
GALLERY_POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class FrameContext:
    """What the caller knows about one frame beyond its pixels; the defaults are a file job's (nothing)."""

    stream_state: str | None = None  # the live stream's state as the service last heard it
    seq: int | None = None  # this result's number in its stream and run
    run_id: str | None = None
    clock_stamped: bool = False  # the pixels carry a wall-clock stamp (stream/clockcode.py): report ``camera``


NO_CONTEXT = FrameContext()


TrackThumbnails = dict[tuple[str, int], np.ndarray]
_THUMBNAIL_EVENTS = ("labelled", "ended")


@dataclass(frozen=True, slots=True)
class RecognizedBatch:
    results: list[FrameResult]  # one per frame, in the frames' order
    times: StageTimes  # the batch's stage times, milliseconds
    events: list[TrackEvent]  # what happened to tracks, in the order it happened (empty without tracking)
    crops: list[int]  # per frame: crops that went through the recognizer
    # The best crop (RGB, longest side <= 128 px) of each track whose event here is ``labelled`` or ``ended``,
    # keyed by (stream id, track id): what a viewer of track events is shown (none before a first attempt).
    thumbnails: TrackThumbnails = field(default_factory=dict)


def _keep_thumbnails(thumbnails: TrackThumbnails, stream_id: str, changes: Sequence[TrackChange]) -> None:
    """The best crops of the tracks labelled or ended in ``changes`` (the newest wins), by (stream, track)."""
    for change in changes:
        if change.kind in _THUMBNAIL_EVENTS and change.track.thumbnail_rgb is not None:
            thumbnails[(stream_id, change.track.track_id)] = change.track.thumbnail_rgb


def gallery_watcher(cfg: VidrecConfig, system: ShituSystem, *, interval_s: float = GALLERY_POLL_S) -> GalleryWatcher | None:
    """A watcher on the configured index_dir, or None when the job runs without a gallery."""
    index_dir = cfg.IndexProcess.index_dir
    if index_dir is None or system.gallery is None or system.recognizer is None:
        return None
    return GalleryWatcher(
        Path(index_dir),
        current=system.gallery,
        delimiter=cfg.IndexProcess.delimiter,
        embedding_size=getattr(system.recognizer, "embedding_size", None),
        interval_s=interval_s,
        recognizer=getattr(system.recognizer, "identity", None),
    )


class RecognitionStep:
    """``system`` run over batches of frames, with ``watcher`` (if any) swapping in new gallery versions;
    ``class_names`` name the detector's class ids in the results; ``node`` (``Cluster.node``) goes into every result
    and track event, so a consumer of a cluster's topic knows which node made it."""

    def __init__(self, system: ShituSystem, *, class_names: Sequence[str], watcher: GalleryWatcher | None = None,
                 tracking: TrackingParams | None = None, node: str | None = None) -> None:
        self.system = system
        self.node = node
        self.class_names = class_names
        self.watcher = watcher
        self.tracked = None if tracking is None else TrackedSystem(system, tracking)

    @classmethod
    def from_config(cls, cfg: VidrecConfig, system: ShituSystem, *, class_names: Sequence[str]) -> "RecognitionStep":
        return cls(system, class_names=class_names, watcher=gallery_watcher(cfg, system), tracking=tracking_params(cfg),
                   node=cfg.Cluster.node)

    def end_stream(self, stream_id: str, reason: str, *, run_id: str | None = None,
                   thumbnails: TrackThumbnails | None = None) -> list[TrackEvent]:
        """End a stream's tracks (it ended, was removed or restarted): their ``ended`` events; their best crops go
        into ``thumbnails`` when given (as ``RecognizedBatch.thumbnails``)."""
        if self.tracked is None:
            return []
        changes = self.tracked.end(stream_id, reason)
        if thumbnails is not None:
            _keep_thumbnails(thumbnails, stream_id, changes)
        return [self._event(change, stream_id, run_id) for change in changes]

    @property
    def gallery_version(self) -> int | None:
        gallery = self.system.gallery
        return None if gallery is None else gallery.version

    @property
    def gallery_entries(self) -> int:
        gallery = self.system.gallery
        return 0 if gallery is None else gallery.size

    def detect(self, frames: Sequence[Frame]) -> DetectedBatch:
        """The detector over ``frames``, ahead of ``run`` (workers/detect_ahead.py calls it on its own thread
        while the batch before is recognised). Touches no state: no tracks, no gallery."""
        return self.system.detect([f.image_bgr for f in frames])

    def run(self, frames: Sequence[Frame], contexts: Sequence[FrameContext] | None = None, *,
            batch_started: float | None = None, detected: DetectedBatch | None = None) -> RecognizedBatch:
        """Recognise ``frames`` (one batch; ``contexts`` one per frame, or none). ``batch_started``: wall-clock
        time the caller's batch started, for ``queue``; ``detected``: the batch's detections made ahead by
        ``detect`` (else the detector runs here). Model errors propagate: the caller decides what a failed
        batch means."""
        if contexts is None:
            contexts = [NO_CONTEXT] * len(frames)
        if len(contexts) != len(frames):
            raise ValueError(f"{len(frames)} frame(s) but {len(contexts)} context(s)")
        self._reload_gallery()
        stamps = [decode_clock(f.image_bgr) if c.clock_stamped else None for f, c in zip(frames, contexts)]
        images = [f.image_bgr for f in frames]
        events: list[TrackEvent] = []
        thumbnails: TrackThumbnails = {}
        if self.tracked is None:
            recognition = self.system.run(images, detected)
            boxes_per_frame, times, version = recognition.boxes, recognition.times, recognition.gallery_version
            crops = recognition.crops or [0] * len(frames)
        else:
            tracked = self.tracked.run(images, [FrameMeta(f.stream_id, f.index, f.pts, f.capture_time) for f in frames],
                                       detected)
            boxes_per_frame, times, version, crops = tracked.boxes, tracked.times, tracked.gallery_version, tracked.crops
            for frame, context, changes in zip(frames, contexts, tracked.changes):
                events.extend(self._event(change, frame.stream_id, context.run_id) for change in changes)
                _keep_thumbnails(thumbnails, frame.stream_id, changes)
        ready = time.time()
        results = [
            self._result(frame, boxes, context, stamp, times, version, ready=ready, batch_started=batch_started)
            for frame, boxes, context, stamp in zip(frames, boxes_per_frame, contexts, stamps)
        ]
        return RecognizedBatch(results, times, events, list(crops), thumbnails)

    def _reload_gallery(self) -> None:
        if self.watcher is None:
            return
        fresh = self.watcher.poll()  # between batches: one batch, one gallery version
        if fresh is not None:
            self.system.set_gallery(fresh)

    def _class_name(self, class_id: int) -> str | None:
        return self.class_names[class_id] if class_id >= 0 else None

    def _event(self, change: TrackChange, stream_id: str, run_id: str | None) -> TrackEvent:
        track = change.track
        return TrackEvent(
            event=change.kind,
            stream_id=stream_id,
            track_id=track.track_id,
            frame_index=change.frame_index,
            time=change.capture_time if change.frame_index >= 0 else track.last_capture,
            label=track.label,
            score=track.score,
            det_class=self._class_name(track.det_class_id),
            box=track.box,
            first_seen=track.first_capture,
            last_seen=track.last_capture,
            dwell_s=track.dwell_s,
            attempts=track.attempts,
            best_box=track.best_box,
            best_frame_index=track.best_frame,
            previous_label=change.previous_label,
            reason=change.reason,
            run_id=run_id,
            node=self.node,
        )

    def _result(self, frame: Frame, boxes: Sequence[RecognizedBox], context: FrameContext, stamp: int | None,
                times: StageTimes, gallery_version: int | None, *, ready: float,
                batch_started: float | None) -> FrameResult:
        objects = tuple(
            ObjectResult(
                bbox=box.xyxy,
                det_score=min(max(box.det_score, 0.0), 1.0),
                det_class=self._class_name(box.det_class_id),
                label=box.label,
                score=box.score,
                track_id=box.track_id,
                embedded=box.embedded,
            )
            for box in boxes
        )
        capture = frame.capture_time
        latency = {
            "decode": frame.decode_ms,
            "detect": times.detect,
            "recognize": times.recognize,
            "search": times.search,
            "post": times.post,
            "total": max(0.0, (ready - capture) * 1000.0),
        }
        if batch_started is not None:
            latency["queue"] = max(0.0, (batch_started - capture) * 1000.0)
        if stamp is not None:
            latency["camera"] = max(0.0, capture * 1000.0 - stamp)
        return FrameResult(
            stream_id=frame.stream_id,
            frame_index=frame.index,
            pts=frame.pts,
            capture_time=capture,
            width=frame.width,
            height=frame.height,
            latency_ms=latency,
            objects=objects,
            gallery_version=gallery_version,
            stream_state=context.stream_state,
            seq=context.seq,
            run_id=context.run_id,
            node=self.node,
        )
