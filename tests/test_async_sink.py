"""AsyncSink: a slow or failing sink never blocks the caller; a full queue drops the oldest (counted); order per
stream is kept; close drains within its timeout. The inner sinks are a real JSONL file and a small gated sink
of our own (the ResultSink protocol), so the tests decide exactly when a write may finish."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from stream.errors import SinkError
from stream.messages import FrameResult
from stream.sinks.async_sink import AsyncSink
from stream.sinks.jsonl import JsonlSink
from tests.factories import make_result
from tests.serve_helpers import wait_for


class GatedSink:
    """Writes wait until ``gate`` is set; results whose frame index is in ``fail`` raise SinkError."""

    def __init__(self, *, fail: frozenset[int] = frozenset(), gate_open: bool = True) -> None:
        self.gate = threading.Event()
        if gate_open:
            self.gate.set()
        self.fail = fail
        self.written: list[tuple[str, int]] = []
        self.entered = threading.Event()
        self.closed = self.aborted = False

    def write(self, result: FrameResult) -> None:
        self.entered.set()
        self.gate.wait()
        if result.frame_index in self.fail:
            raise SinkError(f"cannot write frame {result.frame_index}: server said no")
        self.written.append((result.stream_id, result.frame_index))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def test_order_kept_per_stream_into_a_real_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = AsyncSink(JsonlSink(path), name="jsonl", max_queue=10_000)
    for i in range(300):
        sink.write(make_result("a" if i % 3 else "b", i))
    assert sink.close(30.0)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["frame_index"] for r in rows] == list(range(300))
    stats = sink.stats()
    assert (stats.written, stats.dropped, stats.errors, stats.queued) == (300, 0, 0, 0)
    assert stats.per_stream == {"a": {"written": 200, "dropped": 0, "errors": 0},
                                "b": {"written": 100, "dropped": 0, "errors": 0}}
    assert set(stats.publish_ms) == {"p50", "p99", "max"}


def test_a_stuck_sink_never_blocks_and_a_full_queue_drops_the_oldest() -> None:
    inner = GatedSink(gate_open=False)
    sink = AsyncSink(inner, name="stuck", max_queue=5)
    sink.write(make_result("cam", 0))
    wait_for(inner.entered.is_set, 10, "the writer thread holding frame 0")
    for i in range(1, 21):
        sink.write(make_result("cam", i))  # returns although the sink is stuck (it would hang here otherwise)
    assert not inner.gate.is_set() and inner.written == []
    stats = sink.stats()
    assert (stats.dropped, stats.queued) == (15, 6)  # 5 queued + 1 being written
    inner.gate.set()
    assert sink.close(10.0)
    # Frame 0 was being written; of 1..20 only the newest 5 survived, in order.
    assert inner.written == [("cam", 0), ("cam", 16), ("cam", 17), ("cam", 18), ("cam", 19), ("cam", 20)]
    assert sink.stats().per_stream["cam"] == {"written": 6, "dropped": 15, "errors": 0}
    assert inner.closed


def test_errors_are_counted_never_raised(caplog: pytest.LogCaptureFixture) -> None:
    inner = GatedSink(fail=frozenset({2, 3, 4, 7}))
    sink = AsyncSink(inner, name="flaky")
    with caplog.at_level("WARNING", logger="stream.sinks.async_sink"):
        for i in range(10):
            sink.write(make_result("cam", i))
        assert sink.close(10.0)
    stats = sink.stats()
    assert (stats.written, stats.errors, stats.dropped) == (6, 4, 0)
    assert stats.last_error == "cannot write frame 7: server said no"
    assert [i for _, i in inner.written] == [0, 1, 5, 6, 8, 9]
    failures = [r for r in caplog.records if "write failed" in r.getMessage()]
    assert len(failures) == 1, "logged once per kind of error"
    assert sum("writing again" in r.getMessage() for r in caplog.records) == 2  # after 2-4 and after 7


def test_close_gives_up_on_a_stuck_sink_at_its_timeout() -> None:
    inner = GatedSink(gate_open=False)
    sink = AsyncSink(inner, name="stuck")
    for i in range(3):
        sink.write(make_result("cam", i))
    wait_for(inner.entered.is_set, 10, "the writer thread holding frame 0")
    assert not sink.close(0.3)
    assert inner.aborted and not inner.closed
    assert sink.stats().dropped == 2  # frames 1 and 2 never reached the sink; frame 0 is still inside it
    with pytest.raises(SinkError, match="closed"):
        sink.write(make_result("cam", 3))
    inner.gate.set()
