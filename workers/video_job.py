"""`vidrec video`: one file source through the recognition system into the chosen sinks.

The same data path as the live service, with one source and no dropping: frames are grouped into
batches of ``Global.batch_size``, recognised together, and every frame's result goes to every sink
in frame order. A new version of the gallery saved meanwhile is picked up between batches (results carry
``gallery_version``). On any failure every sink is aborted, so no output file is left looking complete.

With tracking, the run's track events go to the track sinks (``--tracks-out`` FILE.jsonl, and Kafka's tracks
topic / Redis's current tracks when those are configured) after each batch's results; at the end of the file the
tracks still open are ended (reason ``stream ended``), so every track started has its ``ended`` event.
"""
from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from config import VidrecConfig
from models.shitu import DetectedBatch, ShituSystem
from stream.frames import Frame
from stream.sinks import ResultSink
from stream.sinks.video import AnnotatedVideoWriter
from stream.sources import FrameSource, open_source
from workers.outputs import SinkTargets, open_sinks, open_track_sinks
from workers.detect_ahead import DetectAhead
from workers.node_id import node_id
from workers.recognition import RecognitionStep, RecognizedBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoOutputs(SinkTargets):
    """The result sinks, and the annotated video (``video_path``: boxes and labels drawn on every frame)."""

    video_path: Path | None = None


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


def recognized_batches(step: RecognitionStep, batches: Iterator[list[Frame]], *,
                       ahead: bool) -> Iterator[tuple[list[Frame], RecognizedBatch]]:
    """Each batch with its recognition, in order; with ``ahead``, batch N+1 is decoded and detected
    (workers/detect_ahead.py) while batch N is tracked, embedded and searched."""
    if not ahead:
        for frames in batches:
            yield frames, step.run(frames)
        return
    with DetectAhead(step) as detector:
        pending: tuple[list[Frame], Future[DetectedBatch]] | None = None
        for frames in batches:
            upcoming = (frames, detector.submit(frames))
            if pending is not None:
                yield pending[0], step.run(pending[0], detected=pending[1].result())
            pending = upcoming
        if pending is not None:
            yield pending[0], step.run(pending[0], detected=pending[1].result())


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
    track_sinks: list[ResultSink] = []
    writer: AnnotatedVideoWriter | None = None
    bar = None
    started = time.perf_counter()
    try:
        sinks = open_sinks(cfg, outputs)
        track_sinks = open_track_sinks(cfg, outputs)
        if progress is None:
            progress = sys.stderr.isatty()
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=source.frame_count, unit="frame", desc=source.stream_id, file=sys.stderr)
        step = RecognitionStep.from_config(cfg, system, class_names=class_names)
        step.node = node_id(cfg.Cluster.node, None)  # the configured id, else <host>:<pid>: who made the file
        for frames, recognized in recognized_batches(step, batched(iter(source), cfg.Global.batch_size),
                                                     ahead=cfg.Detector.run_ahead):
            for frame, result in zip(frames, recognized.results):
                for sink in sinks:
                    sink.write(result)
                if outputs.video_path is not None:
                    if writer is None:
                        writer = AnnotatedVideoWriter(outputs.video_path, fps=source.fps or 25.0, width=frame.width, height=frame.height)
                    writer.write_frame(frame.image_bgr, result)
                summary.frames += 1
                summary.objects += len(result.objects)
                summary.recognised += sum(obj.label is not None for obj in result.objects)
            for event in recognized.events:
                for sink in track_sinks:
                    sink.write(event)
            if bar is not None:
                bar.update(len(frames))
        for event in step.end_stream(source.stream_id, "stream ended"):
            for sink in track_sinks:
                sink.write(event)
        for sink in (*sinks, *track_sinks):
            sink.close()
        if writer is not None:
            writer.close()
    except BaseException:
        for sink in (*sinks, *track_sinks):
            sink.abort()
        if writer is not None:
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
        source.close()
    summary.seconds = time.perf_counter() - started
    summary.outputs = [str(p) for p in (outputs.json_path, outputs.tracks_path, outputs.video_path) if p is not None]
    if outputs.video_path is not None and writer is None:
        log.warning("no frames were decoded from %s: %s not written", input_path, outputs.video_path)
    return summary
