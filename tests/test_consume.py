"""`vidrec consume`, the reference consumer: its rules with numbers, then the real command on the real broker —
repeats dropped by (run_id, stream_id, seq), gaps reported, a new run_id starting over, track events, --stream,
--summary, and two copies with one --group sharing the partitions."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from tests.factories import make_result
from tests.polling import wait_for
from tests.serve_helpers import REPO
from workers.consume_job import FIRST, GAP, NEXT, REPEAT, Deduplicator, seq_verdict


@pytest.mark.parametrize(("last", "seq", "expected"), [
    (None, 0, (FIRST, 0)),  # a run's first result
    (None, 7, (FIRST, 0)),  # joined mid-run: nothing to compare with, no gap claimed
    (4, 5, (NEXT, 0)),  # the next one
    (4, 4, (REPEAT, 0)),  # the same again (a lost acknowledgement)
    (4, 2, (REPEAT, 0)),  # an older one again (a re-sent batch)
    (4, 8, (GAP, 3)),  # 5, 6, 7 lost
])
def test_seq_verdict(last: int | None, seq: int, expected: tuple[str, int]) -> None:
    assert seq_verdict(last, seq) == expected


def result(stream: str, run: str, seq: int, node: str = "n1") -> dict:
    return {**make_result(stream, seq).to_dict(), "run_id": run, "seq": seq, "node": node}


def event(stream: str, run: str, track: int, kind: str, frame: int) -> dict:
    return {"event": kind, "stream_id": stream, "run_id": run, "track_id": track, "frame_index": frame,
            "label": None, "score": None, "node": "n1"}


# Stream "a": run r1 with two repeats and a gap of 2, then run r2 (another node) from seq 0; stream "b": a track
# event twice and three results.
MESSAGES = [result("a", "r1", s) for s in (0, 1, 2, 2, 1, 5, 6)] + [result("a", "r2", s, "n2") for s in (0, 1)] + [
    event("b", "r1", 3, "started", 10), event("b", "r1", 3, "started", 10)] + [result("b", "r1", s) for s in range(3)]


def test_the_deduplicator_counts_what_the_command_reports() -> None:
    dedup = Deduplicator()
    verdicts = [dedup.result(m)[0] if "event" not in m else dedup.event(m) for m in MESSAGES]
    assert verdicts[:9] == [FIRST, NEXT, NEXT, REPEAT, REPEAT, GAP, NEXT, FIRST, NEXT]
    assert verdicts[9:11] == [True, False]
    a, b = dedup.tally["a"], dedup.tally["b"]
    assert (a.results, a.repeats, a.gaps, a.missing, a.runs, a.nodes) == (7, 2, 1, 2, {"r1", "r2"}, {"n1", "n2"})
    assert (b.results, b.events, b.repeats, b.gaps) == (3, 1, 1, 0)


def fresh_topic(bootstrap: str, partitions: int = 3) -> str:
    topic = f"vidrec-consume-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()
    return topic


def produce(bootstrap: str, topic: str, messages: list[dict], partition_of=None) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for m in messages:
        producer.send(topic, key=m["stream_id"].encode(), value=json.dumps(m).encode(),
                      partition=None if partition_of is None else partition_of(m["stream_id"]))
    producer.flush(30)
    producer.close()


def consume(*args: str, stdout=subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workers.cli", "consume", *args], cwd=REPO, stdout=stdout,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.timeout(120)
def test_consume_drops_repeats_reports_gaps_and_sums_up(kafka_bootstrap: str) -> None:
    topic = fresh_topic(kafka_bootstrap)
    produce(kafka_bootstrap, topic, MESSAGES)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(topic, key=b"a", value=b"not json")  # someone else's record: skipped, said, not fatal
    producer.flush(30)
    producer.close()
    common = ("--kafka", kafka_bootstrap, "--topic", topic, "--idle-exit", "3")
    runs = {"lines": consume(*common), "b": consume(*common, "--stream", "b"), "summary": consume(*common, "--summary")}
    out = {}
    for name, proc in runs.items():
        stdout, stderr = proc.communicate(timeout=90)
        assert proc.returncode == 0, stderr
        assert ("skipped, not a vidrec message (JSONDecodeError" in stderr) == (name != "b"), stderr  # its key is a
        out[name] = stdout.splitlines()

    lines = out["lines"]
    a = [line for line in lines if line.startswith("a ")]
    assert [line.split()[1:3] for line in a if "gap:" not in line] == [
        ["run=r1", f"seq={s}"] for s in (0, 1, 2, 5, 6)] + [["run=r2", "seq=0"], ["run=r2", "seq=1"]]
    assert "a run=r1 gap: 2 result(s) lost before seq=5" in lines
    assert len([line for line in lines if line.startswith("b ")]) == 4, "three results and one track event"
    assert "b run=r1 track=3 started - node=n1 frame=10" in lines
    assert all(line.startswith("b ") for line in out["b"]) and len(out["b"]) == 4
    assert out["summary"] == ["stream\tresults\tevents\trepeats\tgaps\tmissing\truns\tnodes",
                              "a\t7\t0\t2\t1\t2\t2\tn1,n2", "b\t3\t1\t1\t0\t0\t1\tn1"]


def assigned(stderr_path: Path) -> set[int] | None:
    """The partitions a copy reads now (its latest assignment), None before its first."""
    lines = [line for line in stderr_path.read_text().splitlines() if "reading partitions" in line]
    if not lines:
        return None
    parts = lines[-1].rsplit(" ", 1)[1]
    return set() if parts == "(none)" else {int(p.rsplit(":", 1)[1]) for p in parts.split(",")}


@pytest.mark.timeout(150)
def test_two_copies_with_one_group_share_the_partitions(tmp_path: Path, kafka_bootstrap: str) -> None:
    topic = fresh_topic(kafka_bootstrap)
    group = f"vidrec-consume-{uuid.uuid4().hex[:8]}"
    copies = []
    for i in range(2):
        out, err = tmp_path / f"out{i}", tmp_path / f"err{i}"
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "consume", "--kafka", kafka_bootstrap,
                                 "--topic", topic, "--group", group], cwd=REPO,
                                stdout=out.open("w"), stderr=err.open("w"), text=True)
        copies.append((proc, out, err))
    try:
        def shared() -> bool:
            parts = [assigned(err) for _, _, err in copies]
            return all(parts) and parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == {0, 1, 2}

        wait_for(shared, 90, "both copies in the group, each with its own partitions", every_s=0.2)
        streams = [f"cam{p}" for p in range(3)]
        produce(kafka_bootstrap, topic, [result(s, "r1", i) for s in streams for i in range(5)],
                partition_of=lambda sid: int(sid[-1]))  # one camera per partition

        def lines() -> list[list[str]]:
            return [out.read_text().splitlines() for _, out, _ in copies]

        wait_for(lambda: sum(map(len, lines())) >= 15, 60, "every result printed by one copy or the other", every_s=0.2)
        for proc, _, _ in copies:
            proc.send_signal(signal.SIGTERM)
        for proc, _, err in copies:
            assert proc.wait(30) == 0, err.read_text()
        got = lines()
        read_by = [{line.split()[0] for line in copy} for copy in got]
        assert all(read_by) and read_by[0].isdisjoint(read_by[1]), read_by
        assert sorted(line.split()[2] for copy in got for line in copy) == sorted(f"seq={i}" for _ in streams for i in range(5))
    finally:
        for proc, _, _ in copies:
            if proc.poll() is None:
                proc.kill()


def test_an_unreachable_broker_is_one_line_and_exit_1() -> None:
    from tests.serve_helpers import free_port

    proc = consume("--kafka", f"127.0.0.1:{free_port()}", "-o", "Kafka.connect_timeout_s=1")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1 and stdout == ""
    assert stderr.startswith("vidrec: error: cannot reach Kafka at 127.0.0.1:") and stderr.count("\n") == 1, stderr
