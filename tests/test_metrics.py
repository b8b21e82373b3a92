"""The metrics' pure parts with numbers: histograms, /proc readings, the exposition (checked by the real
promtool), overlay snapshots' rate limit and store, and the sink hook that times end-to-end latency."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.frames import Frame
from stream.messages import FrameResult
from stream.sinks.async_sink import AsyncSink
from workers import metrics as m
from workers.snapshots import SnapshotEncoder, SnapshotStore, encode_snapshot
from tests.prometheus_helpers import metric_samples


def test_histogram_buckets_are_inclusive_upper_bounds() -> None:
    hist = m.Histogram((0.1, 0.5, 1.0))
    for value in (0.05, 0.1, 0.2, 0.5, 0.7, 3.0):
        hist.observe(value)
    assert hist.counts == [2, 2, 1, 1]  # ≤0.1: 0.05, 0.1 | ≤0.5: 0.2, 0.5 | ≤1: 0.7 | +Inf: 3.0
    assert hist.cumulative() == [("0.1", 2), ("0.5", 4), ("1", 5), ("+Inf", 6)]
    assert hist.count == 6 and hist.total == pytest.approx(4.55)
    copy = hist.copy()
    hist.observe(0.01)
    assert copy.count == 6 and hist.count == 7, "a copy is a snapshot, not a view"
    with pytest.raises(ValueError, match="ascend"):
        m.Histogram((1.0, 0.5))


def test_process_usage_reads_cpu_and_memory_of_a_live_process_and_none_for_a_gone_one() -> None:
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # burn a little CPU so it shows
        pass
    cpu, rss = m.process_usage(os.getpid())
    assert cpu >= 0.2 * 0.9 and cpu <= time.process_time() + 0.05
    with open("/proc/self/status") as status:
        vm_rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    assert abs(rss - vm_rss_kb * 1024) < 16 * 1024 * 1024
    child = subprocess.Popen(["true"])
    child.wait()
    assert m.process_usage(child.pid) is None


def _service_metrics() -> m.ServiceMetrics:
    e2e = m.Histogram(m.LATENCY_BUCKETS_S)
    for value in (0.08, 0.12, 0.4):
        e2e.observe(value)
    size = m.Histogram(m.BATCH_SIZE_BUCKETS)
    size.observe(3)
    stream = m.StreamMetrics(stream="cam-1", state="stalled", last_frame_age_s=2.5, decoded=10, processed=3,
                             dropped={"backlog": 4, "overwritten": 2, "every_nth": 1}, reconnects=1, decode_errors=0,
                             detected=7, recognized=2, e2e=e2e)
    return m.ServiceMetrics(
        version="0.1.0", run_id="abc", streams=[stream],
        sinks=[m.SinkMetrics("kafka", published=3, errors=1, dropped=0, spool={"memory": 2})],
        batches=1, batch_size=size, batch_wait=None, inference={}, gallery_entries=12, gallery_version=3, gallery_load_errors=0,
        processes={"supervisor": os.getpid(), "inference": None}, restarts={"inference": 0}, node="gpu-7:8080",
    )


def _exposition() -> str:
    return m.render(m.ServiceCollector(_service_metrics)).decode()


def test_exposition_has_the_documented_names_and_values() -> None:
    text = _exposition()
    samples = metric_samples(text, node="gpu-7:8080")  # every series carries the node
    assert samples[("vidrec_stream_state", (("state", "stalled"), ("stream", "cam-1")))] == 1
    assert samples[("vidrec_stream_state", (("state", "live"), ("stream", "cam-1")))] == 0
    assert samples[("vidrec_frames_dropped_total", (("reason", "backlog"), ("stream", "cam-1")))] == 4
    assert samples[("vidrec_frames_dropped_total", (("reason", "too_old"), ("stream", "cam-1")))] == 0
    assert samples[("vidrec_e2e_latency_seconds_bucket", (("le", "0.1"), ("stream", "cam-1")))] == 1
    assert samples[("vidrec_e2e_latency_seconds_bucket", (("le", "0.15"), ("stream", "cam-1")))] == 2
    assert samples[("vidrec_e2e_latency_seconds_count", (("stream", "cam-1"),))] == 3
    assert samples[("vidrec_batch_size_sum", ())] == 3
    assert samples[("vidrec_batch_wait_seconds_count", ())] == 0  # present before the first batch
    assert samples[("vidrec_inference_seconds_count", (("model", "recognizer"),))] == 0
    assert samples[("vidrec_gallery_version", ())] == 3 and samples[("vidrec_gallery_entries", ())] == 12
    assert samples[("vidrec_sink_spool_results", (("sink", "kafka"), ("tier", "memory")))] == 2
    assert samples[("vidrec_process_resident_memory_bytes", (("process", "supervisor"),))] > 10_000_000
    assert ("vidrec_process_cpu_seconds_total", (("process", "inference"),)) not in samples  # not running
    # Every documented name is in the exposition, and nothing undocumented.
    doc = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
    documented = {line.split("`")[1] for line in doc.read_text().splitlines() if line.startswith("| `vidrec_")}
    exposed = {family.name for family in text_string_to_metric_families(text)}
    exposed_names = {n + "_total" if f.type == "counter" else n for f in text_string_to_metric_families(text) for n in [f.name]}
    assert exposed_names == documented, (exposed_names ^ documented, exposed)


@pytest.mark.services  # promtool: Debian's prometheus package, installed by scripts/setup --test
def test_exposition_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus) is needed: scripts/setup --test installs it"
    check = subprocess.run([promtool, "check", "metrics"], input=_exposition(), capture_output=True, text=True,
                           timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def _frame(width: int = 1280, height: int = 720, index: int = 0, sid: str = "cam") -> Frame:
    image = np.zeros((height, width, 3), np.uint8)
    cv2.rectangle(image, (100, 100), (300, 200), (0, 0, 255), -1)  # a red block to find after the round trip
    return Frame(sid, index, index / 25.0, 1000.0 + index, image)


def test_snapshots_only_while_watched_and_at_most_fps() -> None:
    enc = SnapshotEncoder(fps=5, max_width=640, quality=80)
    assert enc.maybe_encode(_frame(), 0, now=100.0) is None, "nobody watches yet"
    enc.watch("cam", until=110.0)
    first = enc.maybe_encode(_frame(index=1), 1, now=100.0)
    assert first is not None and first.frame_index == 1 and (first.width, first.height) == (1280, 720)
    assert enc.maybe_encode(_frame(index=2), 2, now=100.1) is None, "5 fps: one per 0.2 s"
    assert enc.maybe_encode(_frame(index=3), 3, now=100.21) is not None
    assert enc.maybe_encode(_frame(index=4, sid="other"), 4, now=100.21) is None, "watching is per stream"
    assert enc.maybe_encode(_frame(index=5), 5, now=110.5) is None, "the watch ran out"
    image = cv2.imdecode(np.frombuffer(first.jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (360, 640, 3), "scaled to max_width, aspect kept"
    b, g, r = image[75, 100]  # the block's centre (200, 150) at half scale
    assert r > 200 and g < 60 and b < 60


def test_small_frames_are_not_scaled() -> None:
    snap = encode_snapshot(_frame(320, 240), 7, max_width=960, quality=75)
    assert cv2.imdecode(np.frombuffer(snap.jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (240, 320, 3)


def test_snapshot_store_keeps_the_newest_and_tells_inference_about_viewers_sparingly() -> None:
    store = SnapshotStore(keep=3, watch_s=10.0)
    assert store.get("cam") is None
    for i in range(5):
        store.add(encode_snapshot(_frame(64, 48, index=i), i, 64, 50))
    assert store.get("cam").frame_index == 4
    assert store.get("cam", 2).frame_index == 2 and store.get("cam", 1) is None
    assert store.watch_due("cam", now=0.0) == 10.0
    assert store.watch_due("cam", now=4.0) is None
    assert store.watch_due("cam", now=5.0) == 15.0
    store.forget("cam")
    assert store.get("cam") is None


class _ListSink:
    def __init__(self, fail_on: set[int]) -> None:
        self.fail_on = fail_on
        self.written: list[int] = []

    def write(self, result: FrameResult) -> None:
        if result.frame_index in self.fail_on:
            raise OSError("refused")
        self.written.append(result.frame_index)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def test_async_sink_calls_on_written_for_accepted_results_only() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def on_written(result: FrameResult) -> None:
        with lock:
            seen.append(result.frame_index)

    inner = _ListSink(fail_on={2})
    sink = AsyncSink(inner, name="list", on_written=on_written)
    for i in range(5):
        sink.write(FrameResult("s", i, None, time.time(), 4, 4, {"total": 1.0}, ()))
    assert sink.close(10.0)
    assert seen == inner.written == [0, 1, 3, 4]
