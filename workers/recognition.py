"""The recognition step: a batch of frames in, one finished ``FrameResult`` per frame out.

Both ways of running vidrec go through it: ``vidrec video`` (workers/video_job.py) and the service's inference
worker (workers/inference.py). Per batch it picks up a newly saved gallery version first (so one batch is
named by one version), runs the detector, recognizer and gallery search (``ShituSystem``), and builds each
frame's result once, complete: boxes and labels, ``gallery_version``, ``latency_ms`` and whatever the caller
knows about the frame (``FrameContext``: the live service's stream state, ``seq`` and ``run_id``, whether the
pixels carry a wall-clock stamp). Results are never changed after this.

``latency_ms``, in this order: ``decode`` (the source's), ``detect``, ``recognize``, ``search``, ``post`` (the
batch's stage times), ``total`` (capture → results ready, i.e. handed to the sinks), then ``queue`` (capture →
batch start) when the caller says when its batch started, and ``camera`` (the wall-clock stamp in the pixels →
capture) for frames the caller marks ``clock_stamped``.

What the step does not know: where frames come from, how they were batched or dropped, where results go.
Per-stream state that outlives a batch (tracks, next) belongs here, keyed by stream id.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from config import VidrecConfig
from models.gallery_watch import GalleryWatcher
from models.shitu import BatchRecognition, RecognizedBox, ShituSystem, StageTimes
from stream.clockcode import decode_clock
from stream.frames import Frame
from stream.messages import FrameResult, ObjectResult

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


@dataclass(frozen=True, slots=True)
class RecognizedBatch:
    results: list[FrameResult]  # one per frame, in the frames' order
    times: StageTimes  # the batch's stage times, milliseconds


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
    )


class RecognitionStep:
    """``system`` run over batches of frames, with ``watcher`` (if any) swapping in new gallery versions;
    ``class_names`` name the detector's class ids in the results."""

    def __init__(self, system: ShituSystem, *, class_names: Sequence[str], watcher: GalleryWatcher | None = None) -> None:
        self.system = system
        self.class_names = class_names
        self.watcher = watcher

    @classmethod
    def from_config(cls, cfg: VidrecConfig, system: ShituSystem, *, class_names: Sequence[str]) -> "RecognitionStep":
        return cls(system, class_names=class_names, watcher=gallery_watcher(cfg, system))

    @property
    def gallery_version(self) -> int | None:
        gallery = self.system.gallery
        return None if gallery is None else gallery.version

    @property
    def gallery_entries(self) -> int:
        gallery = self.system.gallery
        return 0 if gallery is None else gallery.size

    def run(self, frames: Sequence[Frame], contexts: Sequence[FrameContext] | None = None, *,
            batch_started: float | None = None) -> RecognizedBatch:
        """Recognise ``frames`` (one batch; ``contexts`` one per frame, or none). ``batch_started``: wall-clock
        time the caller's batch started, for ``queue``. Model errors propagate: the caller decides what a failed
        batch means."""
        if contexts is None:
            contexts = [NO_CONTEXT] * len(frames)
        if len(contexts) != len(frames):
            raise ValueError(f"{len(frames)} frame(s) but {len(contexts)} context(s)")
        self._reload_gallery()
        stamps = [decode_clock(f.image_bgr) if c.clock_stamped else None for f, c in zip(frames, contexts)]
        recognition = self.system.run([f.image_bgr for f in frames])
        # Tracking (next) joins here: boxes → tracks per stream, before the results are built.
        ready = time.time()
        results = [
            self._result(frame, boxes, context, stamp, recognition, ready=ready, batch_started=batch_started)
            for frame, boxes, context, stamp in zip(frames, recognition.boxes, contexts, stamps)
        ]
        return RecognizedBatch(results, recognition.times)

    def _reload_gallery(self) -> None:
        if self.watcher is None:
            return
        fresh = self.watcher.poll()  # between batches: one batch, one gallery version
        if fresh is not None:
            self.system.set_gallery(fresh)

    def _result(self, frame: Frame, boxes: Sequence[RecognizedBox], context: FrameContext, stamp: int | None,
                recognition: BatchRecognition, *, ready: float, batch_started: float | None) -> FrameResult:
        names = self.class_names
        objects = tuple(
            ObjectResult(
                bbox=box.xyxy,
                det_score=min(max(box.det_score, 0.0), 1.0),
                det_class=names[box.det_class_id] if box.det_class_id >= 0 else None,
                label=box.label,
                score=box.score,
            )
            for box in boxes
        )
        times = recognition.times
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
            gallery_version=recognition.gallery_version,
            stream_state=context.stream_state,
            seq=context.seq,
            run_id=context.run_id,
        )
