"""RedisTrackSink against the real Redis (REDIS_URL): each stream's current tracks as a hash."""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
import redis

from stream.errors import SinkError
from stream.track_events import TrackEvent, load_track_event_schema
from stream.sinks.redis import RedisTrackSink
from tests.schema_check import validate


@pytest.fixture()
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=10, decode_responses=True)
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


def _event(kind: str, track_id: int, *, stream_id: str = "cam", label: str | None = None) -> TrackEvent:
    return TrackEvent(event=kind, stream_id=stream_id, track_id=track_id, frame_index=10 * track_id, time=1000.0,
                      label=label, score=None if label is None else 0.8, det_class="person",
                      box=(1.0, 2.0, 30.0, 60.0), first_seen=1000.0, last_seen=1000.5, dwell_s=0.5,
                      attempts=1 if label else 0, best_box=None, best_frame_index=None, run_id="r1",
                      previous_label=None, reason="lost" if kind == "ended" else None)


def test_the_hash_holds_each_tracks_newest_event_until_it_ends(redis_url: str, client: redis.Redis, prefix: str) -> None:
    sink = RedisTrackSink(redis_url, ttl_s=600, key_prefix=prefix)
    for event in (_event("started", 1), _event("started", 2), _event("started", 1, stream_id="other"),
                  _event("labelled", 1, label="cyclist")):
        sink.write(event)
    held = client.hgetall(f"{prefix}:tracks:cam")
    assert set(held) == {"1", "2"}
    for value in held.values():
        validate(json.loads(value), load_track_event_schema())
    assert json.loads(held["1"])["label"] == "cyclist" and json.loads(held["2"])["event"] == "started"
    assert 0 < client.ttl(f"{prefix}:tracks:cam") <= 600
    sink.write(_event("ended", 1, label="cyclist"))
    assert set(client.hgetall(f"{prefix}:tracks:cam")) == {"2"}
    sink.write(_event("ended", 2))
    assert not client.exists(f"{prefix}:tracks:cam")  # the last field gone: the key is gone
    assert set(client.hgetall(f"{prefix}:tracks:other")) == {"1"}  # another stream's tracks are its own
    sink.close()
    with pytest.raises(SinkError, match="closed"):
        sink.write(_event("started", 3))
