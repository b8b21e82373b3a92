"""Builders for the workers' reports (workers/messages.py) with only the numbers a test cares about: the run
totals, registry and view tests share them."""
from __future__ import annotations

from stream.states import StreamKind, StreamState
from stream.transport import StreamCounters
from workers.messages import InferenceStats, StreamIngest, StreamInference
from workers.plans import StreamPlan


def plan(stream_id: str = "cam", kind: StreamKind = StreamKind.LIVE) -> StreamPlan:
    return StreamPlan(id=stream_id, url=f"rtsp://camera.test/{stream_id}", kind=kind)


def ingest(decoded: int, *, written: int | None = None, taken: int | None = None, every_nth: int = 0,
           source: int = 0, overwritten: int = 0, state: StreamState = StreamState.RUNNING) -> StreamIngest:
    """An ingest report; ``written``/``taken`` default to ``decoded`` (no ring); None ring when both are -1."""
    ring = StreamCounters(written=decoded if written is None else written, taken=decoded if taken is None else taken,
                          dropped={"overwritten": overwritten, "ring_in_use": 0, "closed": 0})
    return StreamIngest(state=state, reason=None, decoded=decoded, dropped={"every_nth": every_nth, "source": source},
                        reconnects=0, decode_errors=0, last_frame_age_s=0.1, frame_count=None, transport=ring)


def inference(processed: int, *, taken: int | None = None, last_index: int | None = None, backlog: int = 0,
              too_old: int = 0, errors: int = 0, detected: int = 0) -> StreamInference:
    """An inference report of one stream; ``taken`` defaults to what it processed or dropped."""
    dropped = {"backlog": backlog, "too_old": too_old, "inference_error": errors}
    took = processed + backlog + too_old + errors if taken is None else taken
    return StreamInference(taken=took, processed=processed, dropped=dropped,
                           last_index=took - 1 if last_index is None else last_index, latency_ms={}, last={},
                           ended=False, final_transport=None, detected=detected)


def stats(streams: dict[str, StreamInference], *, published: dict[str, int] | None = None, batches: int = 0,
          labels: dict[str, dict[str, int]] | None = None) -> InferenceStats:
    """An inference worker's report; ``published``: per stream, results the one sink ("kafka") wrote."""
    per_stream = {sid: {"written": n, "dropped": 0, "errors": 0} for sid, n in (published or {}).items()}
    written = sum((published or {}).values())
    sink = {"name": "kafka", "written": written, "dropped": 0, "errors": 0, "queued": 0}
    return InferenceStats(streams=streams, sinks=[sink], sink_streams={"kafka": per_stream}, batches=batches,
                          frames=sum(s.processed for s in streams.values()), gallery_version=None,
                          labels=labels or {})
