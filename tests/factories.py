"""Small, valid FrameResults for sink tests (the sinks do not care what the models saw)."""
from __future__ import annotations

from stream.messages import FrameResult, ObjectResult

T0 = 1_760_000_000.0


def make_result(stream_id: str, index: int, *, n_objects: int = 2, capture_time: float | None = None) -> FrameResult:
    """Frame ``index`` of a 25 fps 1280x720 stream: the whole-frame box, recognised, plus unnamed and named people."""
    objects = [ObjectResult(bbox=(0, 0, 1280, 720), det_score=1.0, det_class=None, label="shelf", score=0.55)]
    objects += [
        ObjectResult(
            bbox=(10.0 * k, 20.25, 10.0 * k + 50.5, 120.75),
            det_score=0.83,
            det_class="person",
            label=None if k % 2 else f"id-{k}",
            score=None if k % 2 else 0.71,
        )
        for k in range(n_objects - 1)
    ]
    return FrameResult(
        stream_id=stream_id,
        frame_index=index,
        pts=index / 25,
        capture_time=T0 + index / 25 if capture_time is None else capture_time,
        width=1280,
        height=720,
        latency_ms={"decode": 1.5, "detect": 12.25, "total": 20.0 + index},
        objects=tuple(objects),
        gallery_version=3,
    )
