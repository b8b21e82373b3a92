"""KafkaSink against the real broker from `scripts/services up` (KAFKA_BOOTSTRAP), read back with
kafka-python and with Debian's kcat."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections import defaultdict

import jsonschema
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from stream.errors import SinkError
from stream.messages import FrameResult, load_schema
from stream.sinks.kafka import KafkaSink
from tests.factories import make_result

STREAMS = ("cam-a", "cam-b")
N_PER_STREAM = 60


def fresh_topic() -> str:
    return f"vidrec-test-{uuid.uuid4().hex}"


def consume_all(bootstrap: str, topic: str, expected: int, deadline_s: float = 60.0) -> list[tuple[int, str, dict]]:
    """(partition, key, value) of every record, polled from the earliest offset until `expected` arrive."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        bootstrap_timeout_ms=10_000,
    )
    try:
        partitions = consumer.partitions_for_topic(topic)
        assert partitions, f"topic {topic} has no partitions"
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        records: list[tuple[int, str, dict]] = []
        deadline = time.monotonic() + deadline_s
        while len(records) < expected and time.monotonic() < deadline:
            for tp, batch in consumer.poll(timeout_ms=500).items():
                for rec in batch:
                    records.append((tp.partition, rec.key.decode("utf-8"), json.loads(rec.value)))
        return records
    finally:
        consumer.close()


def write_interleaved(sink: KafkaSink) -> list[FrameResult]:
    written = []
    for i in range(N_PER_STREAM):
        for sid in STREAMS:
            result = make_result(sid, i * 2)  # gaps, as with frame sampling
            sink.write(result)
            written.append(result)
    return written


@pytest.mark.timeout(120)
def test_results_round_trip_through_kafka(kafka_bootstrap: str) -> None:
    topic = fresh_topic()
    sink = KafkaSink(kafka_bootstrap, topic)
    written = write_interleaved(sink)
    sink.close()

    records = consume_all(kafka_bootstrap, topic, expected=len(written))
    assert len(records) == len(written)

    validator = jsonschema.Draft202012Validator(load_schema())
    by_key: dict[str, list[int]] = defaultdict(list)
    partitions_of_key: dict[str, set[int]] = defaultdict(set)
    for partition, key, value in records:
        validator.validate(value)
        assert key == value["stream_id"]
        by_key[key].append(value["frame_index"])
        partitions_of_key[key].add(partition)
    assert set(by_key) == set(STREAMS)
    for sid in STREAMS:
        assert by_key[sid] == [i * 2 for i in range(N_PER_STREAM)], f"order of {sid} not preserved"
        assert len(partitions_of_key[sid]) == 1, f"{sid} spread over partitions {partitions_of_key[sid]}"
    # The values are byte-for-byte what the other sinks write.
    assert sorted(json.dumps(v, separators=(",", ":")) for _, _, v in records) == sorted(r.to_json() for r in written)


@pytest.mark.timeout(120)
def test_kcat_reads_the_same_messages(kafka_bootstrap: str) -> None:
    kcat = shutil.which("kcat")
    assert kcat, "kcat not installed: run `scripts/services deps` (Debian package kcat)"
    topic = fresh_topic()
    sink = KafkaSink(kafka_bootstrap, topic)
    written = write_interleaved(sink)
    sink.close()

    proc = subprocess.run(
        [kcat, "-C", "-b", kafka_bootstrap, "-t", topic, "-o", "beginning", "-e", "-q", "-f", "%k\t%s\n"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(written)
    validator = jsonschema.Draft202012Validator(load_schema())
    by_key: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        key, value = line.split("\t", 1)
        data = json.loads(value)
        validator.validate(data)
        assert key == data["stream_id"]
        by_key[key].append(value)
    for sid in STREAMS:
        assert by_key[sid] == [r.to_json() for r in written if r.stream_id == sid]


@pytest.mark.timeout(60)
def test_existing_topic_is_reused(kafka_bootstrap: str) -> None:
    topic = fresh_topic()
    first = KafkaSink(kafka_bootstrap, topic)
    first.write(make_result("cam-a", 0))
    first.close()
    second = KafkaSink(kafka_bootstrap, topic)  # topic exists now: no error
    second.write(make_result("cam-a", 1))
    second.close()
    records = consume_all(kafka_bootstrap, topic, expected=2)
    assert [v["frame_index"] for _, _, v in records] == [0, 1]


@pytest.mark.timeout(60)
def test_rejected_records_fail_close_naming_broker_and_topic(kafka_bootstrap: str) -> None:
    """A delivery failure reported asynchronously by the broker surfaces in close()."""
    topic = fresh_topic()
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, bootstrap_timeout_ms=10_000)
    try:
        admin.create_topics({topic: {"configs": {"max.message.bytes": "300"}}}, wait_for_metadata=True)
    finally:
        admin.close()
    sink = KafkaSink(kafka_bootstrap, topic)
    big = make_result("cam-a", 0, n_objects=12)
    assert len(big.to_json()) > 300
    sink.write(big)  # accepted locally; the broker rejects it
    with pytest.raises(SinkError) as info:
        sink.close()
    message = str(info.value)
    assert kafka_bootstrap in message and topic in message


@pytest.mark.timeout(30)
def test_unreachable_broker_raises_sink_error_naming_it() -> None:
    # Port 1 (tcpmux) is privileged and never served here: connections are refused.
    with pytest.raises(SinkError, match=r"cannot reach Kafka at 127\.0\.0\.1:1\b"):
        KafkaSink("127.0.0.1:1", fresh_topic(), connect_timeout_s=2.0)
