"""The track event message: a track started, got or changed its label, or ended.

One JSON object per event, on its own Kafka topic (``<results topic>.tracks`` by default, key = stream id) and in
``vidrec video --tracks-out``. Its shape is fixed by ``stream/schema/track_event.v1.json``; every field is present in
every event (null where it does not apply), so a consumer reads one shape.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

TRACK_EVENT_SCHEMA_VERSION = 1
TRACK_EVENTS: tuple[str, ...] = ("started", "labelled", "ended")


def _box(values: tuple[float, float, float, float] | None) -> list[float] | None:
    return None if values is None else [round(float(v), 2) for v in values]


@dataclass(frozen=True, slots=True)
class TrackEvent:
    """``time`` is the wall-clock capture time (Unix seconds) of the frame ``frame_index`` where it happened.
    ``label``/``score`` are the track's answer after the event (for ``ended``, its final one); ``previous_label``
    is set on ``labelled``; ``reason`` on ``ended`` (``lost``: no detection for ``Tracker.lost_track_s``; or the
    stream ended, restarted, changed resolution, or its tracker failed). ``first_seen``/``last_seen`` are capture
    times; ``dwell_s`` is the time between them on the stream's own clock (media time for a file)."""

    event: str
    stream_id: str
    track_id: int
    frame_index: int
    time: float
    label: str | None
    score: float | None
    det_class: str | None
    box: tuple[float, float, float, float]
    first_seen: float
    last_seen: float
    dwell_s: float
    attempts: int
    best_box: tuple[float, float, float, float] | None
    best_frame_index: int | None
    previous_label: str | None = None
    reason: str | None = None
    run_id: str | None = None
    node: str | None = None  # the node that made it, as in the frame results
    schema_version: int = field(default=TRACK_EVENT_SCHEMA_VERSION)

    def __post_init__(self) -> None:
        if self.event not in TRACK_EVENTS:
            raise ValueError(f"TrackEvent.event must be one of {TRACK_EVENTS}, got {self.event!r}")
        if (self.label is None) != (self.score is None):
            raise ValueError(f"TrackEvent.label and score must both be set or both be None, got {self.label!r}, {self.score!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["box"] = _box(self.box)
        data["best_box"] = _box(self.best_box)
        data["score"] = None if self.score is None else round(float(self.score), 4)
        data["dwell_s"] = round(float(self.dwell_s), 3)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> "TrackEvent":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrackEvent":
        box = tuple(data["box"])
        best = None if data["best_box"] is None else tuple(data["best_box"])
        return cls(**{**data, "box": box, "best_box": best})


def load_track_event_schema() -> dict[str, Any]:
    text = resources.files("stream").joinpath(f"schema/track_event.v{TRACK_EVENT_SCHEMA_VERSION}.json").read_text()
    return json.loads(text)
