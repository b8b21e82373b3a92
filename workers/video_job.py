"""`vidrec video`: one file source through the recognition system into the chosen sinks.

The same data path as the live service, with one source and no dropping: frames are grouped into
batches of ``Global.batch_size``, recognised together, and every frame's result goes to every sink
in frame order. A new version of the gallery saved meanwhile is picked up between batches (results carry
``gallery_version``). On any failure every sink is aborted, so no output file is left looking complete.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from config import VidrecConfig
from models.gallery_watch import GalleryWatcher
from models.shitu import BatchRecognition, ShituSystem
from stream.frames import Frame
from stream.messages import FrameResult, ObjectResult
from stream.sinks import ResultSink
from stream.sinks.jsonl import JsonlSink
from stream.sinks.kafka import KafkaSink, kafka_security_kwargs
from stream.sinks.redis import RedisSink, redis_auth_kwargs
from stream.sinks.video import AnnotatedVideoWriter
from stream.sources import FrameSource, open_source

log = logging.getLogger(__name__)

# How often a running job looks for a new gallery version in IndexProcess.index_dir (a few stat calls).
GALLERY_POLL_S = 0.5


@dataclass(frozen=True)
class VideoOutputs:
    json_path: Path | None = None
    video_path: Path | None = None
    kafka_bootstrap: str | None = None
    kafka_topic: str | None = None
    redis_url: str | None = None


@dataclass
class JobSummary:
    frames: int = 0
    objects: int = 0
    recognised: int = 0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def batched(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def to_results(frames: Sequence[Frame], recognition: BatchRecognition, class_names: Sequence[str]) -> list[FrameResult]:
    """Turn the models' per-frame boxes into schema messages, with each frame's stage times."""
    now = time.time()
    times = recognition.times
    results = []
    for frame, boxes in zip(frames, recognition.boxes):
        objects = tuple(
            ObjectResult(
                bbox=box.xyxy,
                det_score=min(max(box.det_score, 0.0), 1.0),
                det_class=class_names[box.det_class_id] if box.det_class_id >= 0 else None,
                label=box.label,
                score=box.score,
            )
            for box in boxes
        )
        latency = {
            "decode": frame.decode_ms,
            "detect": times.detect,
            "recognize": times.recognize,
            "search": times.search,
            "post": times.post,
            "total": max(0.0, (now - frame.capture_time) * 1000),
        }
        results.append(
            FrameResult(
                stream_id=frame.stream_id,
                frame_index=frame.index,
                pts=frame.pts,
                capture_time=frame.capture_time,
                width=frame.width,
                height=frame.height,
                latency_ms=latency,
                objects=objects,
                gallery_version=recognition.gallery_version,
            )
        )
    return results


def open_sinks(cfg: VidrecConfig, outputs: VideoOutputs, *, servers_may_be_down: bool = False) -> list[ResultSink]:
    """Open every configured sink up front, so an unreachable broker fails before any work is done
    (``servers_may_be_down``: a restarted service worker, which must start whatever the broker's state).

    Kafka TLS/SASL and the Redis password come from the ``Kafka`` / ``Redis`` sections (passwords from the
    environment variables they name), also for a broker or URL given on the command line.
    """
    sinks: list[ResultSink] = []
    try:
        if outputs.json_path is not None:
            sinks.append(JsonlSink(outputs.json_path))
        bootstrap = outputs.kafka_bootstrap or cfg.Kafka.bootstrap
        if bootstrap:
            security = kafka_security_kwargs(cfg.Kafka.model_copy(update={"bootstrap": bootstrap}))
            sinks.append(KafkaSink(bootstrap, outputs.kafka_topic or cfg.Kafka.topic, connect_timeout_s=cfg.Kafka.connect_timeout_s,
                                   extra=security, require_broker=not servers_may_be_down))
        redis_url = outputs.redis_url or cfg.Redis.url
        if redis_url:
            auth = redis_auth_kwargs(cfg.Redis.model_copy(update={"url": redis_url}))
            sinks.append(RedisSink(redis_url, history_len=cfg.Redis.history_len, ttl_s=cfg.Redis.ttl_s, key_prefix=cfg.Redis.key_prefix,
                                   require_server=not servers_may_be_down, **auth))
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    return sinks


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


def run_video_job(
    cfg: VidrecConfig,
    system: ShituSystem,
    input_path: str | Path,
    outputs: VideoOutputs,
    *,
    class_names: Sequence[str],
    progress: bool | None = None,
) -> JobSummary:
    summary = JobSummary()
    source: FrameSource = open_source(input_path, stream_id=cfg.Video.stream_id, every_nth=cfg.Video.every_nth)
    sinks: list[ResultSink] = []
    writer: AnnotatedVideoWriter | None = None
    bar = None
    started = time.perf_counter()
    try:
        sinks = open_sinks(cfg, outputs)
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=source.frame_count, unit="frame", desc=source.stream_id, file=sys.stderr)
        watcher = gallery_watcher(cfg, system)
        for frames in batched(iter(source), cfg.Global.batch_size):
            if watcher is not None:
                # Between batches, so that one batch is always named by one gallery version.
                fresh = watcher.poll()
                if fresh is not None:
                    system.set_gallery(fresh)
            recognition = system.run([f.image_bgr for f in frames])
            for frame, result in zip(frames, to_results(frames, recognition, class_names)):
                for sink in sinks:
                    sink.write(result)
                if outputs.video_path is not None:
                    if writer is None:
                        writer = AnnotatedVideoWriter(outputs.video_path, fps=source.fps or 25.0, width=frame.width, height=frame.height)
                    writer.write_frame(frame.image_bgr, result)
                summary.frames += 1
                summary.objects += len(result.objects)
                summary.recognised += sum(obj.label is not None for obj in result.objects)
            if bar is not None:
                bar.update(len(frames))
        for sink in sinks:
            sink.close()
        if writer is not None:
            writer.close()
    except BaseException:
        for sink in sinks:
            sink.abort()
        if writer is not None:
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
        source.close()
    summary.seconds = time.perf_counter() - started
    summary.outputs = [str(p) for p in (outputs.json_path, outputs.video_path) if p is not None]
    if outputs.video_path is not None and writer is None:
        log.warning("no frames were decoded from %s: %s not written", input_path, outputs.video_path)
    return summary
