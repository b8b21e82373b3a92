"""Detecting the next batch while the current one is recognised: the two models on both cores at once.

A batch's recognition is two halves: the detector over its frames, then (needing the boxes) tracking, the
recognizer and the gallery search. Run one after the other, each model's ONNX Runtime session gets the
machine's cores only for its own small operators, and small operators do not split well: on this 2-core CPU the
detector took 16.2 ms a frame on one thread and about as long on two. So while batch N's second half runs on
the caller's thread, ``DetectAhead`` runs batch N+1's detector on its own thread (ONNX Runtime lets go of the
GIL while it runs); the caller then takes N+1's detections and runs its second half, and so on. Tracks,
votes and results stay on the caller's thread, in batch order: only the detector, which keeps no state between
batches, runs ahead.

``submit`` hands frames to the thread and returns a future; ``result`` waits for it (and raises what the
detector raised). One batch is ahead at most: the caller submits N+1, finishes N, then waits for N+1.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

from models.shitu import DetectedBatch
from stream.frames import Frame
from workers.recognition import RecognitionStep


class DetectAhead:
    """``step``'s detector on one thread of its own."""

    def __init__(self, step: RecognitionStep) -> None:
        self._step = step
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="detect-ahead")

    def submit(self, frames: Sequence[Frame]) -> "Future[DetectedBatch]":
        return self._pool.submit(self._step.detect, list(frames))

    def close(self) -> None:
        """Wait for a detection in flight (its frames' slots may still be read) and stop the thread."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "DetectAhead":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
