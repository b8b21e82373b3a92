"""SpooledSink on the real broker: every result reaches the topic in order and is counted; what a dead
predecessor spooled on disk goes out first; with no broker, results wait in the spool and close counts them.
(Kafka stopped and started under a running service: tests/test_outages.py.)"""
from __future__ import annotations

import multiprocessing
import os
import uuid
from pathlib import Path

import pytest

from stream.messages import FrameResult
from stream.sinks.kafka import KafkaSink
from stream.sinks.spool import Spool
from stream.sinks.spooled import SpooledSink
from tests.factories import make_result
from tests.polling import wait_for
from tests.serve_helpers import TopicReader, free_port

DISK = 1024 * 1024  # room for every result these tests write


def _results(stream_ids: tuple[str, ...], n: int) -> list[FrameResult]:
    return [make_result(sid, i) for i in range(n) for sid in stream_ids]


def _fresh_topic() -> str:
    return f"vidrec-test-{uuid.uuid4().hex}"


def _read(bootstrap: str, topic: str, expected: int) -> list[tuple[str, int]]:
    """(stream_id, frame_index) of every record on ``topic``, in order, once ``expected`` came."""
    reader = TopicReader(bootstrap, topic)
    try:
        wait_for(lambda: len(reader.all()) >= expected, 60, f"{expected} records on {topic}")
        return [(m.value["stream_id"], m.value["frame_index"]) for m in reader.all()]
    finally:
        reader.close()


@pytest.mark.timeout(120)
def test_every_result_reaches_the_topic_in_order_and_is_counted(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = _fresh_topic()
    accepted: list[tuple[str, int]] = []
    spool = Spool(20, tmp_path / "spool", disk_max_bytes=DISK, segment_bytes=DISK // 4)
    sink = SpooledSink(KafkaSink(kafka_bootstrap, topic), name="kafka", spool=spool, batch_max=10,
                       on_written=lambda r: accepted.append((r.stream_id, r.frame_index)))
    written = _results(("cam-a", "cam-b"), 150)
    for result in written:
        sink.write(result)
    assert sink.close(60.0)

    records = _read(kafka_bootstrap, topic, len(written))
    for sid in ("cam-a", "cam-b"):
        assert [i for s, i in records if s == sid] == list(range(150)), f"order of {sid}"
    assert sorted(accepted) == sorted((r.stream_id, r.frame_index) for r in written)  # each acknowledged once
    stats = sink.stats()
    assert (stats.written, stats.dropped, stats.errors, stats.queued) == (300, 0, 0, 0)
    assert stats.per_stream == {"cam-a": {"written": 150, "dropped": 0, "errors": 0},
                                "cam-b": {"written": 150, "dropped": 0, "errors": 0}}
    assert set(stats.publish_ms) == {"p50", "p99", "max"} and not stats.retrying
    assert not (tmp_path / "spool").exists()  # the spool's files go with it


@pytest.mark.timeout(120)
def _spool_and_die(directory: Path) -> None:
    dead = Spool(1, directory, disk_max_bytes=DISK, segment_bytes=DISK // 4)
    for result in _results(("cam",), 20):
        dead.put(result)  # frame 0 in memory (lost with the process), 1..19 on disk
    os._exit(0)  # as SIGKILL: nothing closed; the kernel drops the spool's lock


def test_what_a_dead_predecessor_spooled_goes_out_first(tmp_path: Path, kafka_bootstrap: str) -> None:
    child = multiprocessing.get_context("fork").Process(target=_spool_and_die, args=(tmp_path / "dead",))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    topic = _fresh_topic()
    spool = Spool(20, tmp_path / "successor", disk_max_bytes=DISK, segment_bytes=DISK // 4, adopt=[tmp_path / "dead"])
    assert spool.adopted == 19
    sink = SpooledSink(KafkaSink(kafka_bootstrap, topic), name="kafka", spool=spool, batch_max=10)
    for i in range(20, 30):
        sink.write(make_result("cam", i))
    assert sink.close(60.0)
    assert _read(kafka_bootstrap, topic, 29) == [("cam", i) for i in range(1, 30)]
    assert sink.stats().written == 29


@pytest.mark.timeout(120)
def test_without_a_broker_results_wait_and_close_counts_them_dropped(tmp_path: Path) -> None:
    inner = KafkaSink(f"127.0.0.1:{free_port()}", _fresh_topic(), connect_timeout_s=1.0, require_broker=False)
    assert not inner.connected
    spool = Spool(10, tmp_path / "spool", disk_max_bytes=DISK, segment_bytes=DISK // 4)
    sink = SpooledSink(inner, name="kafka", spool=spool, batch_max=5)
    for result in _results(("cam-a", "cam-b"), 25):
        sink.write(result)
    wait_for(lambda: sink.stats().retrying, 30, "the sink to say it retries")
    stats = sink.stats()
    assert stats.written == 0 and stats.queued == 50 and stats.spool["disk"] > 0
    assert stats.last_error and "Kafka" in stats.last_error

    assert not sink.close(0.5)  # nothing could go out
    stats = sink.stats()
    assert (stats.written, stats.dropped, stats.queued) == (0, 50, 0)
    assert stats.per_stream["cam-a"]["dropped"] == stats.per_stream["cam-b"]["dropped"] == 25
    assert not (tmp_path / "spool").exists()
