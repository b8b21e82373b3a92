"""Result sinks: where FrameResults go (JSONL file, Kafka, Redis, annotated video).

Every sink has the same life: the constructor connects/opens and fails fast with a SinkError
naming the address or path; ``write`` takes one result; ``close`` flushes and finalises (a file
becomes visible under its final name only here); ``abort`` is called instead of ``close`` when the
job failed, and must leave nothing behind that looks complete.
"""
from __future__ import annotations

from typing import Protocol

from stream.messages import FrameResult


class ResultSink(Protocol):
    def write(self, result: FrameResult) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...
