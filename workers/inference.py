"""The inference process of `vidrec serve`: frames of every stream → batches → detector → recognizer →
gallery search → one result per frame → the sinks, asynchronously.

One process per accelerator (this version runs one: the CPU, or the GPU ``Global.use_gpu`` picks). It owns the
only ``FrameConsumer`` of the frame queue, the ``Batcher``, the ``RecognitionStep`` (workers/recognition.py:
the models, the gallery, the finished results) and the sinks, each writing from a thread of its own
(workers/outputs.py).

The loop: take every frame ref that is ready (each one claims its shared-memory slot: a lease), add it to the
batcher, run the batch that is due through the recognition step, release the batch's slots, hand the results
to the sinks, repeat. With ``Detector.run_ahead`` (the default) the detector runs one batch ahead on a thread of
its own (workers/detect_ahead.py): when it is free, the next batch is picked and detected while the batch before
is tracked, embedded, searched and published on this thread, so both models keep a core busy.

- Live streams never queue stale frames here either (the rules: workers/freshness.py): a live stream keeps at
  most ``live_backlog`` frames waiting for a batch (older ones are released unprocessed and counted
  ``dropped_backlog``), and a live frame older than ``live_max_age_s`` when its batch starts is released and
  counted ``dropped_too_old``. The transport already overwrites the oldest frames of a live ring that
  inference has not taken yet. File streams lose nothing.
- The batch pick (workers/batcher.py): when the detector is free, the next batch is what waits (``max_wait_s`` 0,
  the default: never a wait for a batch to fill), at most ``max_batch`` frames and ``per_stream_max`` of one
  stream; live streams' frames before files' (a file, always ready, gets the time the cameras leave), streams
  least recently served first, and a stream passed over in a batch goes first in the next (a file beside busy
  cameras still gets every other batch).
- Per stream, results leave in frame order: batches take each stream's frames in order and run one after
  another, each sink writes from one FIFO queue, and Kafka is keyed by stream id.
- Each result carries ``latency_ms``: ``decode``, ``queue`` (capture → batch start), ``detect``,
  ``recognize``, ``search``, ``post``, ``total`` (capture → handed to the sinks) and, for ``clock_stamp``
  streams, ``camera`` (the wall-clock stamp in the pixels → capture); and the stream's state
  (``stream_state``) as the supervisor last reported it.
- The gallery is reloaded between batches when a new version is saved (by the recognition step).
- Model or sink errors are counted and logged once per kind; they never end the process.

Control (from the supervisor; messages in workers/messages.py): ``StreamAdded`` (the plan: live or file,
clock stamp), ``SetStreamState``, ``Drain`` (the ingest processes have stopped: process every frame still on
the queue, close the sinks, report, exit). Reports: ``InferenceReady`` / ``InferenceFatal`` at start,
``InferenceStats`` every ``stats_interval_s``, ``StreamFinished`` when a stream's end-of-stream came and its last
frame was handed to the sinks, ``InferenceExited`` with the final counters.

Track events (with ``Tracker.enabled``): each batch's events go to the event sinks (workers/outputs.py
``open_event_sinks``: Kafka's tracks topic, Redis's current tracks) after the batch's results went to theirs,
and to the supervisor with the JPEG thumbnails of the tracks labelled or ended in the batch (``TrackEvents``,
workers/track_feed.py). A stream's tracks are ended (their ``ended`` events published the same way) when its
end-of-stream came (the file ended, or the stream was removed) and its last frame was processed, when its
producer died (its ingest process is gone), and when the supervisor announces a stream id this worker already ran (a restarted ingest
process). A restarted inference worker starts with no tracks: its run id is new, so are its tracks'.
"""
from __future__ import annotations

import logging
import os
import queue as queue_mod
import sys
import time
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from config import ConfigError, VidrecConfig
from models.errors import GalleryError, ModelError
from models.shitu import DetectedBatch
from stream.errors import SinkError, SourceError
from stream.latency import LatencyWindow
from stream.states import StreamState
from stream.track_events import TRACK_EVENTS, TrackEvent
from stream.transport import EndOfStream, FrameConsumer, FrameLease, ProducerDiedError, StreamCounters
from workers.batcher import Batcher
from workers.detect_ahead import DetectAhead
from workers.metrics import (
    BATCH_SIZE_BUCKETS,
    INFERENCE_BUCKETS_S,
    LATENCY_BUCKETS_S,
    MODELS,
    WAIT_BUCKETS_S,
    Histogram,
)
from workers.counters import Drop
from workers.messages import (
    Drain,
    InferenceExited,
    InferenceFatal,
    InferenceReady,
    InferenceSettings,
    InferenceStats,
    SetStreamState,
    StreamAdded,
    StreamFinished,
    StreamInference,
    Watch,
)
from workers.plans import StreamPlan
from workers.snapshots import SnapshotEncoder
from workers.freshness import backlog_overflow, too_old
from workers.worker_process import ParentWatch, detach_queues, setup_child
from workers.outputs import open_event_sinks, open_service_sinks, result_run_id
from workers.recognition import FrameContext, RecognitionStep, RecognizedBatch, TrackThumbnails
from stream.frames import Frame
from workers.track_feed import TrackEvents, encode_thumbnail

log = logging.getLogger(__name__)

STARTUP_ERRORS = (ConfigError, ModelError, GalleryError, SourceError, SinkError)
_MAX_LABELS = 10_000  # distinct gallery labels counted one by one; more are counted as "(other)"
_TOP_LABELS = 100  # labels reported to the supervisor (by count); the rest summed as "(other)"
OTHER_LABEL = "(other)"


# ------------------------------------------------------------------------------------------- worker -------
@dataclass(slots=True)
class _Item:
    stream_id: str
    lease: FrameLease
    arrived: float  # monotonic
    live: bool  # a live stream's frame goes before any file's (the batch pick)


@dataclass(slots=True)
class _Picked:
    """A batch taken from the batcher: its fresh items (slots leased until it is published), their frames (views
    on those slots), when it started, and its detections in the making (None: detected when it runs)."""

    items: list[_Item]
    frames: list[Frame]
    started: float  # wall clock
    detected: "Future[DetectedBatch] | None"

    def detecting(self) -> bool:
        return self.detected is not None and not self.detected.done()


@dataclass
class _Stream:
    plan: StreamPlan | None
    state: StreamState | None = None
    taken: int = 0
    processed: int = 0
    dropped_backlog: int = 0
    dropped_too_old: int = 0
    errors: int = 0
    last_index: int = -1
    ended: bool = False
    end_reason: str = "stream ended"  # why its tracks end with it
    final_transport: StreamCounters | None = None
    totals: LatencyWindow = field(default_factory=LatencyWindow)  # latency_ms["total"] of recent results
    e2e: LatencyWindow = field(default_factory=LatencyWindow)  # camera + total, for clock-stamped streams
    last: dict[str, float] = field(default_factory=dict)
    detected: int = 0
    recognized: int = 0
    crops: int = 0  # crops that went through the recognizer
    tracks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TRACK_EVENTS, 0))  # events by kind
    seq: int = 0  # the next result's seq
    # Observed by the first sink's writer thread (a list item and a float, safe under the GIL; the
    # snapshot's count is the sum of its buckets, so it is always consistent in itself).
    e2e_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))

    @property
    def live(self) -> bool:
        return self.plan is not None and self.plan.live

    def snapshot(self) -> StreamInference:
        latency: dict[str, float] = {}
        for name, window in (("total", self.totals), ("e2e", self.e2e)):
            summary = window.summary()
            for q in ("p50", "p99") if summary else ():
                latency[f"{name}_{q}"] = round(summary[q], 1)
        return StreamInference(
            taken=self.taken, processed=self.processed,
            dropped={Drop.BACKLOG.value: self.dropped_backlog, Drop.TOO_OLD.value: self.dropped_too_old,
                     Drop.INFERENCE_ERROR.value: self.errors},
            last_index=self.last_index, latency_ms=latency,
            last={k: round(v, 2) for k, v in self.last.items()}, ended=self.ended, final_transport=self.final_transport,
            detected=self.detected, recognized=self.recognized, e2e_seconds=self.e2e_seconds.copy(),
            crops=self.crops, tracks=dict(self.tracks),
            tracks_active=self.tracks["started"] - self.tracks["ended"],
        )


class InferenceWorker:
    """Builds the system and the sinks (raising a user error when it cannot), then ``run`` loops."""

    def __init__(self, settings: InferenceSettings, cfg: VidrecConfig, frames_queue: Any, status_queue: Any) -> None:
        from workers.system import build_system  # heavy imports: only in the inference process

        self.settings = settings
        self._frames_queue = frames_queue
        self._status = status_queue
        system = build_system(cfg)
        self.step = RecognitionStep.from_config(cfg, system, class_names=system.detector.class_names)
        # The most crops one batch can bring: every frame's boxes plus its whole-frame box.
        self._warm_up(max_crops=settings.max_batch * (cfg.Global.max_det_results + 1))
        self.result_run_id = result_run_id(settings.run_id, settings.incarnation)
        # End-to-end latency is taken when the first sink (Kafka when configured) accepted the result: for Kafka,
        # when the broker acknowledged it.
        self.sinks = open_service_sinks(cfg, run_id=settings.run_id, incarnation=settings.incarnation,
                                        queue_size=settings.sink_queue_size,
                                        close_timeout_s=settings.sink_close_timeout_s,
                                        on_first_written=self._observe_e2e)
        try:
            self.event_sinks = open_event_sinks(cfg, run_id=settings.run_id, incarnation=settings.incarnation,
                                                queue_size=settings.sink_queue_size,
                                                close_timeout_s=settings.sink_close_timeout_s)
        except BaseException:
            for sink in self.sinks:
                sink.abort()
            raise
        self._thumbnail_errors = 0
        self.batch_size = Histogram(BATCH_SIZE_BUCKETS)
        self.batch_wait = Histogram(WAIT_BUCKETS_S)
        self.model_seconds = {model: Histogram(INFERENCE_BUCKETS_S) for model in MODELS}
        self.labels: dict[str, dict[str, int]] = {}
        self.snapshots = SnapshotEncoder(settings.overlay_fps, settings.overlay_max_width, settings.overlay_jpeg_quality)
        self.batcher: Batcher[_Item] = Batcher(
            settings.max_batch, settings.max_wait_s, per_stream_max=settings.per_stream_max,
            key=lambda item: item.stream_id, live=lambda item: item.live,
        )
        self.streams: dict[str, _Stream] = {}
        self._ending: set[str] = set()
        self._ahead = DetectAhead(self.step) if cfg.Detector.run_ahead else None
        self._picked: _Picked | None = None  # with run_ahead: the batch whose detector runs (or ran) ahead
        self._batches = 0
        self._frames = 0
        self._error_kinds: set[str] = set()
        self._draining = False
        self.orphaned = False
        self._next_stats = 0.0

    def _observe_e2e(self, result: Any) -> None:
        info = self.streams.get(result.stream_id)
        if info is not None:
            info.e2e_seconds.observe(max(0.0, time.time() - result.capture_time))

    def _warm_up(self, max_crops: int) -> None:
        """Every batch size the models will see, the largest first, so the first camera frames do not pay for
        the runtime's first runs, and memory is at its level from the start: ONNX Runtime's memory arena
        grows to the largest pattern it has met, which otherwise shows as a one-time jump of ~140 MB minutes
        into a run, whenever a batch with many objects first comes (bench/soak.py, docs/benchmarks.md)."""
        system = self.step.system
        image = np.zeros((360, 640, 3), np.uint8)
        most = self.settings.max_batch
        for n in (most, *range(1, most + 1)):
            system.run([image] * n)
        recognizer = system.recognizer
        if recognizer is not None and system.gallery is not None:
            crop = np.zeros((32, 32, 3), np.uint8)
            largest = min(max_crops, recognizer.max_batch)
            for n in (largest, *range(1, largest + 1)):
                recognizer.embed([crop] * n)

    # -- main loop -------------------------------------------------------------------------------------------
    def run(self, control_queue: Any) -> InferenceExited:
        parent = ParentWatch()
        consumer = FrameConsumer(self._frames_queue, run_id=self.settings.run_id, poll_s=0.25)
        try:
            while True:
                self._handle_control(control_queue)
                if not self.orphaned and parent.gone():
                    log.error("supervisor is gone: draining and stopping")
                    detach_queues(self._status, self._frames_queue)
                    self.orphaned = self._draining = True
                now = time.monotonic()
                due = self.batcher.deadline(now)
                timeout = 0.0 if due <= now else min(due - now, 0.05)
                if self._draining and not len(self.batcher):
                    timeout = 0.3  # the ingest processes have stopped: whatever is left is on the queue now
                if self._picked is not None:
                    if self._picked.detecting():  # nothing to do here until the detector thread is free
                        wait_for([self._picked.detected], timeout=0.05)
                    timeout = 0.0
                got = self._receive(consumer, timeout)
                if self._ahead is None:
                    batch = self.batcher.next_batch()
                    if batch:
                        self._finish_batch(self._pick(batch))
                elif self._picked is None or not self._picked.detecting():
                    # The detector is free: the next batch goes to it now, and the one it detected is finished
                    # here meanwhile.
                    done, self._picked = self._picked, None
                    batch = self.batcher.next_batch()
                    if batch:
                        self._picked = self._pick(batch)
                    if done is not None:
                        self._finish_batch(done)
                self._finish_streams()
                self._maybe_report()
                if self._draining and got == 0 and not len(self.batcher) and self._picked is None:
                    break
        finally:
            if self._ahead is not None:
                self._ahead.close()  # a detection in flight still reads its slots: wait for it
            if self._picked is not None:  # only after an error: a normal drain leaves none
                self._release(self._picked)
            for item in self.batcher.drain():  # only after an error: a normal drain leaves none
                item.lease.release()
            consumer.close()
        self._finish_streams()  # ends the tracks of the streams that ended last, before the event sinks close
        clean = True
        for sink in (*self.sinks, *self.event_sinks):
            clean = sink.close(self.settings.sink_close_timeout_s) and clean
        return InferenceExited(self._stats(), clean)

    def _handle_control(self, control_queue: Any) -> None:
        while True:
            try:
                message = control_queue.get_nowait()
            except queue_mod.Empty:
                return
            if isinstance(message, StreamAdded):
                plan = message.plan
                info = self.streams.get(plan.id)
                if info is None:
                    self.streams[plan.id] = _Stream(plan=plan, state=StreamState.STARTING)
                else:
                    # Frames came before the plan did, or the stream id comes back (a restarted ingest process,
                    # removed and added again): its counters go on, as its frame indices do; tracks of its
                    # previous run that no end-of-stream ended (a producer that died unseen) end now.
                    if info.plan is not None:
                        self._end_tracks(plan.id, "stream restarted")
                    info.plan = plan
                    if info.ended:
                        info.ended = False
                        info.final_transport = None
                        info.state = StreamState.STARTING
            elif isinstance(message, SetStreamState):
                info = self.streams.get(message.stream_id)
                if info is not None:
                    info.state = message.state
            elif isinstance(message, Watch):
                self.snapshots.watch(message.stream_id, message.until)
            elif isinstance(message, Drain):
                self._draining = True
            else:
                log.warning("unexpected control message %r ignored", type(message).__name__)

    def _stream(self, stream_id: str) -> _Stream:
        info = self.streams.get(stream_id)
        if info is None:
            # A frame before its plan: treated as a file stream (nothing dropped) until the plan comes.
            info = self.streams[stream_id] = _Stream(plan=None)
        return info

    def _receive(self, consumer: FrameConsumer, timeout_s: float) -> int:
        """Take everything ready (waiting up to ``timeout_s`` for the first); returns how many items came."""
        got = 0
        wait = timeout_s
        while got < 256:
            try:
                item = consumer.receive(timeout_s=wait)
            except ProducerDiedError as exc:
                log.error("%s", exc)
                info = self._stream(exc.stream_id)
                info.ended = True
                info.end_reason = "producer died"
                self._ending.add(exc.stream_id)
                got += 1
                continue
            if item is None:
                return got
            got += 1
            wait = 0.0
            if isinstance(item, EndOfStream):
                info = self._stream(item.stream_id)
                info.ended = True
                info.end_reason = "stream ended"
                info.final_transport = item.counters
                self._ending.add(item.stream_id)
                continue
            self._accept(item)
        return got

    def _accept(self, lease: FrameLease) -> None:
        sid = lease.ref.stream_id
        info = self._stream(sid)
        info.taken += 1
        info.last_index = max(info.last_index, lease.ref.index)
        if info.state in (None, StreamState.STARTING):
            info.state = StreamState.RUNNING  # a decoded frame says so, even before the supervisor's word arrives
        now = time.monotonic()
        release = backlog_overflow(live=info.live, waiting=self.batcher.pending(sid),
                                   live_backlog=self.settings.live_backlog)
        for old in self.batcher.drop_oldest(sid, release):
            old.lease.release()
            info.dropped_backlog += 1
        self.batcher.add(_Item(sid, lease, now, info.live), now=now)

    def _pick(self, batch: list[_Item]) -> _Picked:
        """A batch taken from the batcher: live frames too old already are dropped (counted); with run_ahead the
        rest go to the detector thread at once."""
        started = time.time()
        self.batch_wait.observe(max(0.0, time.monotonic() - min(item.arrived for item in batch)))
        fresh: list[_Item] = []
        for item in batch:
            info = self.streams[item.stream_id]
            if too_old(live=info.live, capture_time=item.lease.ref.capture_time, batch_started=started,
                       live_max_age_s=self.settings.live_max_age_s):
                item.lease.release()
                info.dropped_too_old += 1
            else:
                fresh.append(item)
        frames = [item.lease.frame(copy=False) for item in fresh]
        detected = self._ahead.submit(frames) if self._ahead is not None and frames else None
        return _Picked(fresh, frames, started, detected)

    def _finish_batch(self, picked: _Picked) -> None:
        """Track, embed, search and publish a picked batch (waiting for its detections), then free its slots."""
        if not picked.items:
            return
        try:
            try:
                detected = picked.detected.result() if picked.detected is not None else None
                recognized = self.step.run(picked.frames, self._contexts(picked.items), batch_started=picked.started,
                                           detected=detected)
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop every camera
                self._count_error(picked.items, exc)
                return
            self._publish(recognized)
            self._publish_events(recognized.events, recognized.thumbnails)
            # Pixels for the overlay only after the results went to the sinks: results never wait for them.
            for frame, result in zip(picked.frames, recognized.results):
                snapshot = self.snapshots.maybe_encode(frame, result.frame_index)
                if snapshot is not None:
                    self._status.put(snapshot)
        finally:
            self._release(picked)

    @staticmethod
    def _release(picked: _Picked) -> None:
        picked.frames.clear()  # the pixel views must be gone before their slots are released
        for item in picked.items:
            item.lease.release()

    def _contexts(self, items: list[_Item]) -> list[FrameContext]:
        """What the results of ``items`` carry besides their recognition: state, seq (per stream, counting on
        from the stream's last result), this worker's run id, whether the pixels carry a clock stamp."""
        next_seq: dict[str, int] = {}
        contexts = []
        for item in items:
            info = self.streams[item.stream_id]
            seq = next_seq.get(item.stream_id, info.seq)
            next_seq[item.stream_id] = seq + 1
            contexts.append(FrameContext(stream_state=info.state, seq=seq, run_id=self.result_run_id,
                                         clock_stamped=self._stamped(item.stream_id)))
        return contexts

    def _publish(self, recognized: RecognizedBatch) -> None:
        self._batches += 1
        self.batch_size.observe(len(recognized.results))
        times = recognized.times
        for model, ms in zip(MODELS, (times.detect, times.recognize, times.search)):
            self.model_seconds[model].observe(ms / 1000.0)
        for result, crops in zip(recognized.results, recognized.crops):
            info = self.streams[result.stream_id]
            info.crops += crops
            info.seq += 1  # the next batch's contexts count on from here
            for sink in self.sinks:
                sink.write(result)
            latency = result.latency_ms
            if not self.sinks:
                info.e2e_seconds.observe(latency["total"] / 1000.0)
            if "camera" in latency:
                info.e2e.add(latency["camera"] + latency["total"])
            info.processed += 1
            info.detected += len(result.objects)
            for obj in result.objects:
                if obj.label is not None:
                    info.recognized += 1
                    self._count_label(obj.label, result.stream_id)
            info.totals.add(latency["total"])
            info.last = dict(latency)
            self._frames += 1

    def _publish_events(self, events: list[TrackEvent], thumbnails: TrackThumbnails) -> None:
        """Track events to the event sinks and, with the thumbnails of their tracks, to the supervisor."""
        if not events:
            return
        for event in events:
            for sink in self.event_sinks:
                sink.write(event)
            self._stream(event.stream_id).tracks[event.event] += 1
        jpegs: dict[tuple[str, str, int], bytes] = {}
        for (sid, track_id), rgb in thumbnails.items():
            try:
                jpegs[(sid, self.result_run_id, track_id)] = encode_thumbnail(rgb)
            except (ValueError, cv2.error) as exc:  # a thumbnail is a nicety: the event goes without it
                self._thumbnail_errors += 1
                if self._thumbnail_errors == 1:
                    log.error("%s: thumbnail of track %d not encoded (%s); further failures are not logged",
                              sid, track_id, exc)
        self._status.put(TrackEvents(tuple(events), jpegs))

    def _end_tracks(self, stream_id: str, reason: str) -> None:
        """End a stream's tracks and publish their ``ended`` events; a failure here is logged, never raised."""
        thumbnails: TrackThumbnails = {}
        try:
            events = self.step.end_stream(stream_id, reason, run_id=self.result_run_id, thumbnails=thumbnails)
        except Exception:  # noqa: BLE001 - one stream's tracks must not stop the others
            log.exception("%s: its tracks could not be ended (%s)", stream_id, reason)
            return
        self._publish_events(events, thumbnails)

    def _count_label(self, label: str, stream_id: str) -> None:
        per_stream = self.labels.get(label)
        if per_stream is None:
            if len(self.labels) >= _MAX_LABELS:
                per_stream = self.labels.setdefault(OTHER_LABEL, {})
            else:
                per_stream = self.labels[label] = {}
        per_stream[stream_id] = per_stream.get(stream_id, 0) + 1

    def _top_labels(self) -> dict[str, dict[str, int]]:
        ranked = sorted(self.labels.items(), key=lambda kv: -sum(kv[1].values()))
        top = {label: dict(streams) for label, streams in ranked[:_TOP_LABELS] if label != OTHER_LABEL}
        rest: dict[str, int] = {}
        for label, streams in ranked:
            if label not in top:
                for sid, n in streams.items():
                    rest[sid] = rest.get(sid, 0) + n
        if rest:
            top[OTHER_LABEL] = rest
        return top

    def _stamped(self, stream_id: str) -> bool:
        plan = self.streams[stream_id].plan
        return plan is not None and plan.clock_stamp

    def _count_error(self, items: list[_Item], exc: Exception) -> None:
        kind = type(exc).__name__
        for item in items:
            self.streams[item.stream_id].errors += 1
        if kind not in self._error_kinds:
            self._error_kinds.add(kind)
            log.error("inference failed on a batch of %d frame(s) (%s: %s); further %s errors are only counted",
                      len(items), kind, exc, kind, exc_info=exc)

    def _finish_streams(self) -> None:
        picked = set() if self._picked is None else {item.stream_id for item in self._picked.items}
        for sid in [sid for sid in self._ending if not self.batcher.pending(sid) and sid not in picked]:
            self._ending.discard(sid)
            self.batcher.remove_stream(sid)  # nothing waits; a stream that comes back starts a new turn
            info = self.streams.get(sid)
            if info is not None:
                self._end_tracks(sid, info.end_reason)
                self._status.put(StreamFinished(sid, info.snapshot()))

    def _stats(self) -> InferenceStats:
        # Sinks first: a result is counted processed (below) before any sink can count it written, so every
        # stream's published <= processed in one report.
        sink_stats = [sink.stats() for sink in (*self.sinks, *self.event_sinks)]
        return InferenceStats(
            streams={sid: info.snapshot() for sid, info in self.streams.items()},
            sinks=[s.to_dict() for s in sink_stats],
            sink_streams={s.name: s.per_stream for s in sink_stats},
            batches=self._batches,
            frames=self._frames,
            gallery_version=self.step.gallery_version,
            gallery_entries=self.step.gallery_entries,
            batch_size=self.batch_size.copy(),
            batch_wait_seconds=self.batch_wait.copy(),
            inference_seconds={model: hist.copy() for model, hist in self.model_seconds.items()},
            labels=self._top_labels(),
            gallery_load_errors=self.step.watcher.load_errors if self.step.watcher is not None else 0,
            gallery_error=self.step.watcher.last_error if self.step.watcher is not None else None,
        )

    def _maybe_report(self) -> None:
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self.settings.stats_interval_s
            self._status.put(self._stats())


def inference_main(
    settings: InferenceSettings,
    cfg: VidrecConfig,
    frames_queue: Any,
    control_queue: Any,
    status_queue: Any,
    log_level: int = logging.INFO,
) -> None:
    """Entry point of the inference process (multiprocessing 'spawn')."""
    setup_child("inference", log_level)
    try:
        worker = InferenceWorker(settings, cfg, frames_queue, status_queue)
    except STARTUP_ERRORS as exc:
        status_queue.put(InferenceFatal(str(exc)))
        status_queue.close()
        status_queue.join_thread()
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - reported to the supervisor, which exits with it
        log.exception("inference worker failed to start")
        status_queue.put(InferenceFatal(f"inference worker failed to start: {type(exc).__name__}: {exc}"))
        status_queue.close()
        status_queue.join_thread()
        sys.exit(1)
    status_queue.put(InferenceReady(os.getpid(), worker.step.gallery_version))
    exited = worker.run(control_queue)
    status_queue.put(exited)
    status_queue.close()
    if not worker.orphaned:
        status_queue.join_thread()
