"""The per-frame result message: one JSON object per frame, identical in every sink.

Its shape is fixed by ``stream/schema/frame_result.v2.json`` (tests validate every sink's output
against it). Bump ``SCHEMA_VERSION`` and add a new schema file for any incompatible change; the old files stay
for consumers of older versions (docs/message-schema.md says what changed).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

# ``stream_state`` is one of these: the values of ``StreamState`` (stream/states.py).
from stream.states import STREAM_STATES

SCHEMA_VERSION = 2  # 2: objects carry track_id and embedded; labels are the track's vote


@dataclass(frozen=True, slots=True)
class ObjectResult:
    """One box of a frame.

    ``bbox`` is [x1, y1, x2, y2] in original-frame pixels. ``det_class`` is the detector's own class
    (a COCO name for PicoDet) kept even in mainbody mode; it is None for the whole-frame box that
    PP-ShiTu always adds. With tracking, ``label``/``score`` are the track's voted answer (None until the votes
    name it); without, the gallery's top-1 match in this frame, or None when no match reached
    ``IndexProcess.score_thres``. ``track_id`` is the object's track (None for the whole-frame box, a box no track
    took, or tracking off); ``embedded`` is True when the crop went through the recognizer for this frame.
    """

    bbox: tuple[float, float, float, float]
    det_score: float
    det_class: str | None
    label: str | None
    score: float | None
    track_id: int | None = None
    embedded: bool = True

    def __post_init__(self) -> None:
        if len(self.bbox) != 4:
            raise ValueError(f"ObjectResult.bbox must have 4 numbers [x1,y1,x2,y2], got {self.bbox!r}")
        if (self.label is None) != (self.score is None):
            raise ValueError(f"ObjectResult.label and score must both be set or both be None, got {self.label!r}, {self.score!r}")


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What vidrec recognised in one frame of one stream.

    ``capture_time`` is wall-clock Unix seconds when the frame was decoded; ``pts`` media seconds.
    ``latency_ms`` holds stage times in milliseconds (decode, detect, recognize, search, ...) and
    ``total`` (capture → result ready). ``stream_state`` (optional, one of ``STREAM_STATES``) is the
    stream's state when the result was made, set by the live service; None (left out of the JSON) otherwise.
    """

    stream_id: str
    frame_index: int
    pts: float | None
    capture_time: float
    width: int
    height: int
    latency_ms: dict[str, float]
    objects: tuple[ObjectResult, ...]
    gallery_version: int | None = None
    schema_version: int = field(default=SCHEMA_VERSION)
    stream_state: str | None = None
    # Set by the live service: ``seq`` counts this stream's results in this ``run_id`` from 0, one by one, so a
    # consumer drops a repeat (same run_id, stream_id, seq) and sees a gap as results lost (and counted).
    seq: int | None = None
    run_id: str | None = None
    # The node that made it (``Cluster.node``): in a cluster a stream moves between nodes, and its run_id with it.
    node: str | None = None

    def __post_init__(self) -> None:
        if "total" not in self.latency_ms:
            raise ValueError(f"FrameResult.latency_ms needs a 'total', got keys {sorted(self.latency_ms)}")
        if self.stream_state is not None and self.stream_state not in STREAM_STATES:
            raise ValueError(f"FrameResult.stream_state must be None or one of {STREAM_STATES}, got {self.stream_state!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["objects"] = [
            {
                **obj,
                "bbox": [round(float(v), 2) for v in obj["bbox"]],
                "det_score": round(float(obj["det_score"]), 4),
                "score": None if obj["score"] is None else round(float(obj["score"]), 4),
            }
            for obj in data["objects"]
        ]
        data["latency_ms"] = {k: round(float(v), 3) for k, v in self.latency_ms.items()}
        for optional in ("stream_state", "seq", "run_id", "node"):
            if data[optional] is None:
                del data[optional]  # optional: messages without them stay byte-identical to before
        return data

    def to_json(self) -> str:
        """Compact JSON, one line (JSONL- and Kafka-ready)."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "FrameResult":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FrameResult":
        objects = tuple(
            ObjectResult(
                bbox=tuple(obj["bbox"]),
                det_score=obj["det_score"],
                det_class=obj["det_class"],
                label=obj["label"],
                score=obj["score"],
                track_id=obj.get("track_id"),  # absent from version 1
                embedded=obj.get("embedded", True),
            )
            for obj in data["objects"]
        )
        return cls(**{**data, "objects": objects})


def load_schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON Schema that every message of ``version`` satisfies (for consumers and tests)."""
    text = resources.files("stream").joinpath(f"schema/frame_result.v{version}.json").read_text()
    return json.loads(text)
