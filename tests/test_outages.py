"""Outages of the real Kafka broker while `vidrec serve` runs two cameras and a file: the broker is stopped for
30 s and started again on the same port (`scripts/services stop|start kafka`). Nothing may stall, nothing
within the spool's bounds may be lost, and whatever a full spool drops must show as counted gaps in ``seq``.

Every wait polls a condition with a deadline; deadlines are bounds for a slow machine, not timing claims. The
30 s of the outage is the fault being injected, not a measurement.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from tests.prometheus_helpers import metric_samples
from tests.serve_helpers import ServeProcess, free_port, services, wait_for

OUTAGE_S = 30.0


def read_topic(bootstrap: str, topic: str, *, timeout_s: float = 120.0) -> list[dict]:
    """Every message of the topic, in partition order: each partition read from its start up to the end offset the
    broker reports now (the service has exited, so that is all it wrote). Exact, where waiting for a few quiet
    seconds cost each call those seconds and could in principle stop early."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    messages: list[dict] = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        assert partitions, f"topic {topic} not found"
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"{topic} not read to its end offsets {end} within {timeout_s:g}s"
            batches = consumer.poll(timeout_ms=500)
            messages += [json.loads(r.value) for tp in partitions for r in batches.get(tp, [])]
    finally:
        consumer.close()
    return messages


def scrape(serve: ServeProcess) -> dict[tuple[str, tuple], float]:
    import urllib.request

    with urllib.request.urlopen(serve.base + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return metric_samples(text)


def spooled(serve: ServeProcess) -> dict[str, float]:
    samples = scrape(serve)
    return {tier: samples.get(("vidrec_sink_spool_results", (("sink", "kafka"), ("tier", tier))), 0.0)
            for tier in ("memory", "disk")}


def by_stream(messages: list[dict]) -> dict[tuple[str, str], list[int]]:
    """(run_id, stream_id) -> seqs in the order they came off the topic."""
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    for m in messages:
        out[(m["run_id"], m["stream_id"])].append(m["seq"])
    return out


@pytest.fixture
def kafka_back():
    """Whatever happens in the test, the broker is running again afterwards."""
    yield
    services("start", "kafka")


@pytest.mark.timeout(480)
def test_kafka_down_for_30s_stalls_nothing_and_loses_nothing(
    tmp_path: Path, bikes_mp4: Path, rtsp_base: str, kafka_bootstrap: str, kafka_back: None
) -> None:
    topic = f"vidrec-outage-{uuid.uuid4().hex[:8]}"
    serve = ServeProcess(
        ["--stream", f"clock={rtsp_base}/clock", "--stream", f"vtest={rtsp_base}/vtest", "--stream", f"file={bikes_mp4}",
         "--kafka", kafka_bootstrap, "--topic", topic,
         # A small memory part, so the outage also goes through the disk segments.
         "-o", "Kafka.spool_memory_results=100", "-o", f"Kafka.spool_dir={tmp_path / 'spool'}",
         "-o", "Kafka.spool_max_bytes=67108864"],
        log_path=tmp_path / "serve.log", http_port=free_port(),
    )
    try:
        wait_for(serve.healthy, 120, "healthy service (needs VIDREC_MODEL_DIR and scripts/services)")
        wait_for(lambda: all(s["counters"]["published"]["kafka"] >= 5 for s in serve.streams().values()), 90,
                 "results of every stream acknowledged by Kafka")
        assert serve.streams()["file"]["state"] == "live", "the file must still be running when the broker goes"

        services("stop", "kafka")
        down = time.monotonic()
        processed_at_stop = {sid: s["counters"]["processed"] for sid, s in serve.streams().items()}
        disk_seen = 0.0
        while time.monotonic() - down < OUTAGE_S:  # the outage itself; meanwhile inference must go on
            wait_for(serve.healthy, 10, "a healthy service during the outage")
            disk_seen = max(disk_seen, spooled(serve)["disk"])
            time.sleep(1.0)
        streams = serve.streams()
        for sid, before in processed_at_stop.items():
            # A file whose frames were all processed by the time the broker was down has nothing left to go on
            # with (seen in a clean-clone CI run on a quiet machine: 250 of 250 just after the broker stopped).
            done = streams[sid]["frame_count"] is not None and before >= streams[sid]["frame_count"]
            assert done or streams[sid]["counters"]["processed"] > before, f"{sid}: inference stalled while Kafka was down"
        depth = spooled(serve)
        assert depth["memory"] + depth["disk"] > 100, f"results waiting in the spool: {depth}"
        assert disk_seen > 0, "the spool went to disk beyond its memory part"

        services("start", "kafka")
        wait_for(lambda: serve.stream("file")["state"] == "ended", 240, "the file read to its end")
        # The backlog goes out (the cameras keep adding a few results at a time, so "empty" is a moment).
        wait_for(lambda: (f := serve.stream("file")["counters"])["published"]["kafka"] == f["processed"], 180,
                 "every result of the file acknowledged after the broker came back")
        wait_for(lambda: (d := spooled(serve))["disk"] == 0 and d["memory"] < 50, 60, "the spool's backlog gone")
        final_streams = serve.streams()
        assert serve.terminate() == 0, serve.log_text()[-4000:]
        assert not list((tmp_path / "spool").glob("*/segment-*")), "spool segments removed"
    finally:
        serve.kill()

    messages = read_topic(kafka_bootstrap, topic)
    seqs = by_stream(messages)
    final = {s["id"]: s for s in serve.final()["streams"]}
    for sid in ("clock", "vtest", "file"):
        keys = [k for k in seqs if k[1] == sid]
        assert len(keys) == 1, f"{sid}: one run_id expected, got {keys}"
        got = seqs[keys[0]]
        unique_in_order = list(dict.fromkeys(got))
        # None lost: seq 0..n-1 all there; in order: first deliveries come in seq order.
        assert unique_in_order == list(range(len(unique_in_order))), f"{sid}: seq gaps or reordering"
        # Frames processed = messages on the topic (after dropping repeats, which seq makes detectable).
        assert len(unique_in_order) == final[sid]["counters"]["processed"], (sid, final[sid]["counters"])
        assert final[sid]["sinks"]["kafka"]["dropped"] == 0
        assert final_streams[sid]["warnings"] == [] or all("failed write" in w for w in final_streams[sid]["warnings"])
    assert final["file"]["counters"]["processed"] == 250, "every frame of the file"


@pytest.mark.timeout(300)
def test_a_full_spool_drops_the_oldest_counts_them_and_the_gaps_match(
    tmp_path: Path, rtsp_base: str, kafka_bootstrap: str, kafka_back: None
) -> None:
    topic = f"vidrec-overflow-{uuid.uuid4().hex[:8]}"
    serve = ServeProcess(
        ["--stream", f"clock={rtsp_base}/clock", "--kafka", kafka_bootstrap, "--topic", topic,
         "-o", "Kafka.spool_memory_results=20", "-o", "Kafka.spool_max_bytes=0"],  # memory only, 20 results
        log_path=tmp_path / "serve.log", http_port=free_port(),
    )
    try:
        wait_for(serve.healthy, 120, "healthy service (needs VIDREC_MODEL_DIR and scripts/services)")
        wait_for(lambda: serve.stream("clock")["counters"]["published"]["kafka"] >= 5, 90, "acknowledged results")
        services("stop", "kafka")
        wait_for(lambda: serve.stream("clock")["sinks"]["kafka"]["dropped"] >= 20, 120, "results dropped from the full spool")
        view = serve.stream("clock")
        assert any("kafka" in w and "dropped" in w for w in view["warnings"]), view["warnings"]
        assert view["state"] == "live", "the camera itself is fine"
        services("start", "kafka")
        wait_for(lambda: serve.stream("clock")["sinks"]["kafka"]["written"] > view["sinks"]["kafka"]["written"] + 20,
                 180, "publishing again after the broker came back")
        assert serve.terminate() == 0, serve.log_text()[-4000:]
    finally:
        serve.kill()
    final = {s["id"]: s for s in serve.final()["streams"]}["clock"]
    messages = read_topic(kafka_bootstrap, topic)
    (key, got), = by_stream(messages).items()
    unique = set(got)
    gaps = max(unique) + 1 - len(unique)
    dropped = final["sinks"]["kafka"]["dropped"]
    # Every gap is a counted drop. The converse holds but for the batch in flight when the broker stopped (at most
    # batch_max = spool_memory_results // 2 = 10 results): the broker may have appended some of it and gone down
    # before acknowledging; they are dropped from the full spool later, yet on the topic. Seen once in a
    # clean-clone CI run: 288 gaps, 289 dropped.
    assert dropped > 0 and gaps <= dropped <= gaps + 10, f"{gaps} seq gaps on the topic, {dropped} results counted as dropped"
    assert len(unique) == final["counters"]["processed"] - gaps, "every result made is on the topic or a gap"


@pytest.mark.timeout(240)
def test_a_silent_camera_is_caught_by_the_watchdog_while_the_other_goes_on(
    tmp_path: Path, rtsp_base: str, kafka_bootstrap: str
) -> None:
    """/stall sends for 2 s per session, then keeps the connection open and sends nothing (a paused camera)."""
    topic = f"vidrec-stall-{uuid.uuid4().hex[:8]}"
    serve = ServeProcess(
        ["--stream", f"paused={rtsp_base}/stall", "--stream", f"clock={rtsp_base}/clock", "--kafka", kafka_bootstrap,
         "--topic", topic, "-o", "Service.live.stall_after_s=1.0", "-o", "Service.live.backoff_max_s=2"],
        log_path=tmp_path / "serve.log", http_port=free_port(),
    )
    try:
        wait_for(serve.healthy, 120, "healthy service (needs VIDREC_MODEL_DIR and scripts/services)")
        # The other camera must be going before "it went on" means anything: in a clean-clone CI run its first
        # connection came after the paused one had stalled and reconnected (the broker restarted by the test
        # before was still starting, on two cores).
        wait_for(lambda: serve.stream("clock")["counters"]["published"]["kafka"] > 0, 60, "the clock camera publishing")
        wait_for(lambda: serve.stream("paused")["state"] == "stalled", 60, "the paused camera marked stalled")
        view = serve.stream("paused")
        assert "(watchdog)" in view["reason"], view["reason"]
        clock_then = serve.stream("clock")["counters"]["published"]["kafka"]
        wait_for(lambda: serve.stream("paused")["state"] in ("reconnecting", "live")
                 and serve.stream("paused")["since"] > view["since"], 60, "the paused camera reconnecting")
        assert serve.stream("clock")["counters"]["published"]["kafka"] > clock_then, "the other camera never paused"
        assert serve.stream("clock")["state"] == "live"
        wait_for(lambda: serve.stream("paused")["counters"]["reconnects"] >= 1
                 and serve.stream("paused")["state"] == "live", 60, "the paused camera live again")
        assert serve.terminate() == 0, serve.log_text()[-3000:]
        assert "Traceback" not in serve.log_text()
    finally:
        serve.kill()


@pytest.mark.timeout(300)
def test_what_a_killed_worker_spooled_on_disk_is_published_by_its_successor(
    tmp_path: Path, rtsp_base: str, kafka_bootstrap: str, kafka_back: None
) -> None:
    import signal

    topic = f"vidrec-adopt-{uuid.uuid4().hex[:8]}"
    serve = ServeProcess(
        ["--stream", f"clock={rtsp_base}/clock", "--kafka", kafka_bootstrap, "--topic", topic,
         "-o", "Kafka.spool_memory_results=20", "-o", f"Kafka.spool_dir={tmp_path / 'spool'}",
         "-o", "Kafka.spool_max_bytes=67108864"],
        log_path=tmp_path / "serve.log", http_port=free_port(),
    )
    try:
        wait_for(serve.healthy, 120, "healthy service (needs VIDREC_MODEL_DIR and scripts/services)")
        wait_for(lambda: serve.stream("clock")["counters"]["published"]["kafka"] >= 5, 90, "acknowledged results")
        run_id = serve.api("GET", "/healthz").body["run_id"]
        services("stop", "kafka")
        wait_for(lambda: spooled(serve)["disk"] >= 40, 120, "results spooled on disk while the broker is down")
        victim = serve.api("GET", "/healthz").body["workers"]["inference"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: serve.api("GET", "/healthz").body["workers"]["inference"] not in (None, victim), 60,
                 "a new inference worker")
        services("start", "kafka")
        wait_for(lambda: "left on disk go out first" in serve.log_text(), 60, "the old spool taken over")
        wait_for(lambda: serve.stream("clock")["counters"]["published"]["kafka"] > 0 and spooled(serve)["disk"] == 0,
                 180, "the taken-over spool published")
        assert serve.terminate() == 0, serve.log_text()[-3000:]
    finally:
        serve.kill()
    old = sorted(m["seq"] for m in read_topic(kafka_bootstrap, topic) if m["run_id"] == run_id)
    unique = sorted(set(old))
    # Lost with the killed worker: only its memory part (the 20 oldest waiting) and the batch it was sending.
    missing = set(range(unique[-1] + 1)) - set(unique)
    assert len(missing) <= 20 + 10, f"{len(missing)} results of the killed worker lost"
    assert max(unique) >= 40 + 20, "the results it had spooled on disk reached the topic"
    assert not list((tmp_path / "spool").glob("*")), "no spool folder left behind"
