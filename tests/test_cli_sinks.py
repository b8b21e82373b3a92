"""`vidrec video` into the real Kafka broker and Redis server; read back by real consumers."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import redis
from kafka import KafkaConsumer

from stream.messages import load_schema
from tests.cli_helpers import read_jsonl, run_vidrec
from tests.schema_check import validate

SCHEMA = load_schema()


def _consume(bootstrap: str, topic: str, expected: int, deadline_s: float = 60.0) -> list[tuple[bytes, dict]]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        group_id=None, consumer_timeout_ms=1000,
    )
    got: list[tuple[bytes, dict]] = []
    deadline = time.monotonic() + deadline_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for message in consumer:
                got.append((message.key, json.loads(message.value)))
    finally:
        consumer.close()
    return got


def test_video_to_kafka_and_redis(tmp_path: Path, bikes_mp4: Path, kafka_bootstrap: str, redis_url: str) -> None:
    topic = f"vidrec-test-{uuid.uuid4().hex[:8]}"
    stream_id = f"bikes-{uuid.uuid4().hex[:6]}"
    jsonl = tmp_path / "r.jsonl"
    proc = run_vidrec(
        "video", bikes_mp4, "--every-nth", "10", "--stream-id", stream_id,
        "--kafka", kafka_bootstrap, "--topic", topic, "--redis", redis_url, "--json", jsonl,
        "-o", "Redis.history_len=20",
    )
    assert proc.returncode == 0, proc.stderr
    written = read_jsonl(jsonl)
    assert len(written) == 25

    # Kafka, read by kafka-python: same messages, key = stream id, frame order kept, schema-valid.
    messages = _consume(kafka_bootstrap, topic, expected=25)
    assert len(messages) == 25
    assert {key for key, _ in messages} == {stream_id.encode()}
    for _, value in messages:
        validate(value, SCHEMA)
    assert [value for _, value in messages] == written

    # ... and by Debian's kcat, an independent client.
    kcat = shutil.which("kcat")
    assert kcat, "kcat missing: scripts/setup --test installs it"
    out = subprocess.run(
        [kcat, "-C", "-b", kafka_bootstrap, "-t", topic, "-e", "-q", "-f", "%k\t%s\n"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    rows = [line.split("\t", 1) for line in out.splitlines() if line]
    assert [key for key, _ in rows] == [stream_id] * 25
    assert [json.loads(value) for _, value in rows] == written

    # Redis: latest = last frame, history bounded by history_len and ordered by capture time.
    client = redis.Redis.from_url(redis_url)
    try:
        latest = json.loads(client.get(f"vidrec:latest:{stream_id}"))
        assert latest == written[-1]
        history = [json.loads(m) for m in client.zrange(f"vidrec:history:{stream_id}", 0, -1)]
        assert [h["frame_index"] for h in history] == [r["frame_index"] for r in written[-20:]]
        assert client.sismember("vidrec:streams", stream_id)
        assert 0 < client.ttl(f"vidrec:latest:{stream_id}") <= 3600
    finally:
        client.close()


def test_redis_pubsub_notice_per_frame(tmp_path: Path, photos_dir: Path, redis_url: str) -> None:
    stream_id = f"photos-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    pubsub.subscribe(f"vidrec:frames:{stream_id}")
    try:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        proc = run_vidrec("video", photos_dir, "--stream-id", stream_id, "--redis", redis_url)
        assert proc.returncode == 0, proc.stderr
        notices = []
        deadline = time.monotonic() + 10
        while len(notices) < 4 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=1)
            if message and message["type"] == "message":
                notices.append(json.loads(message["data"]))
        assert [n["frame_index"] for n in notices] == [0, 1, 2, 3]
        assert {n["stream_id"] for n in notices} == {stream_id}
    finally:
        pubsub.close()
        client.close()
