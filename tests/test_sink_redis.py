"""RedisSink against the real Redis from `scripts/services up` (REDIS_URL)."""
from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator

import jsonschema
import pytest
import redis

from stream.errors import SinkError
from stream.messages import load_schema
from stream.sinks.redis import RedisSink, redis_address
from tests.factories import T0, make_result


@pytest.fixture()
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=10)
    yield c
    c.close()


@pytest.fixture()
def prefix(client: redis.Redis) -> Iterator[str]:
    """A key prefix of this test's own, deleted afterwards (the Redis is shared)."""
    p = f"vidrec-test-{uuid.uuid4().hex}"
    yield p
    keys = list(client.scan_iter(match=f"{p}:*", count=1000))
    if keys:
        client.delete(*keys)


def test_latest_history_and_streams(redis_url: str, client: redis.Redis, prefix: str) -> None:
    sink = RedisSink(redis_url, history_len=5, ttl_s=600, key_prefix=prefix)
    results = {sid: [make_result(sid, i) for i in range(12)] for sid in ("cam-a", "cam-b")}
    for i in range(12):
        for sid in results:
            sink.write(results[sid][i])
    sink.close()

    validator = jsonschema.Draft202012Validator(load_schema())
    assert client.smembers(f"{prefix}:streams") == {b"cam-a", b"cam-b"}
    for sid, written in results.items():
        latest = client.get(f"{prefix}:latest:{sid}")
        assert latest is not None
        validator.validate(json.loads(latest))
        assert latest.decode() == written[-1].to_json()

        history = client.zrange(f"{prefix}:history:{sid}", 0, -1, withscores=True)
        assert len(history) == 5
        assert [m.decode() for m, _ in history] == [r.to_json() for r in written[-5:]]
        assert [s for _, s in history] == [r.capture_time for r in written[-5:]]
        for member, _ in history:
            validator.validate(json.loads(member))

        # A time window, as a reader would ask for it.
        window = client.zrange(f"{prefix}:history:{sid}", written[8].capture_time, written[9].capture_time, byscore=True)
        assert [json.loads(m)["frame_index"] for m in window] == [8, 9]

        for key in (f"{prefix}:latest:{sid}", f"{prefix}:history:{sid}"):
            assert 0 < client.ttl(key) <= 600
    assert 0 < client.ttl(f"{prefix}:streams") <= 600


def test_history_is_ordered_by_capture_time_not_arrival(redis_url: str, client: redis.Redis, prefix: str) -> None:
    results = [make_result("cam-x", i, capture_time=T0 + 10 * i) for i in range(10)]
    shuffled = results[:]
    random.Random(7).shuffle(shuffled)
    sink = RedisSink(redis_url, history_len=4, ttl_s=None, key_prefix=prefix)
    for r in shuffled:
        sink.write(r)
    sink.close()
    history = client.zrange(f"{prefix}:history:cam-x", 0, -1)
    assert [json.loads(m)["frame_index"] for m in history] == [6, 7, 8, 9]
    assert client.get(f"{prefix}:latest:cam-x").decode() == shuffled[-1].to_json()  # last written
    assert client.ttl(f"{prefix}:history:cam-x") == -1 and client.ttl(f"{prefix}:latest:cam-x") == -1


def test_subscriber_gets_a_notice_per_frame(redis_url: str, client: redis.Redis, prefix: str) -> None:
    pubsub = client.pubsub()
    channel = f"{prefix}:frames:cam-a"
    pubsub.subscribe(channel)
    deadline = time.monotonic() + 10
    confirmed = None
    while confirmed is None and time.monotonic() < deadline:
        confirmed = pubsub.get_message(timeout=1.0)
    assert confirmed is not None and confirmed["type"] == "subscribe"

    written = [make_result("cam-a", i) for i in range(20)]
    sink = RedisSink(redis_url, history_len=100, key_prefix=prefix)
    for r in written:
        sink.write(r)
    sink.write(make_result("cam-b", 0))  # another stream's channel: not delivered here
    sink.close()

    notices = []
    deadline = time.monotonic() + 10
    while len(notices) < len(written) and time.monotonic() < deadline:
        msg = pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if msg is not None:
            notices.append(json.loads(msg["data"]))
    pubsub.close()
    assert notices == [
        {"stream_id": "cam-a", "frame_index": r.frame_index, "capture_time": r.capture_time} for r in written
    ]


@pytest.mark.timeout(30)
def test_unreachable_redis_raises_sink_error_naming_it() -> None:
    with pytest.raises(SinkError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1/0"):
        RedisSink("redis://127.0.0.1:1/0")


@pytest.mark.timeout(30)
def test_wrong_password_raises_sink_error_without_the_password(redis_url: str, client: redis.Redis) -> None:
    user = f"vidrec-test-{uuid.uuid4().hex[:12]}"
    client.acl_setuser(user, enabled=True, passwords=["+right-password"], keys=["vidrec-test-*"], commands=["+@all"])
    try:
        good = redis_url.replace("redis://", f"redis://{user}:right-password@", 1)
        RedisSink(good, key_prefix="vidrec-test-acl").close()  # the user itself works
        bad = redis_url.replace("redis://", f"redis://{user}:wrong-password@", 1)
        with pytest.raises(SinkError) as info:
            RedisSink(bad)
        message = str(info.value)
        assert f"cannot reach Redis at {redis_address(redis_url)}" in message
        assert "wrong-password" not in message
    finally:
        client.acl_deluser(user)
