"""`vidrec video --tracks-out`: the run's track events as JSONL, through the real CLI, models and footage."""
from __future__ import annotations

import uuid
from collections import defaultdict
from pathlib import Path

import redis

from stream.track_events import load_track_event_schema
from tests.cli_helpers import assert_one_line_error, read_jsonl, run_vidrec, sample_gallery
from tests.serve_helpers import TopicReader, wait_for
from tests.schema_check import validate

SCHEMA = load_track_event_schema()


def test_tracks_out_has_every_track_started_and_ended_once(tmp_path: Path, bikes_mp4: Path, kafka_bootstrap: str,
                                                         redis_url: str) -> None:
    gallery = sample_gallery(tmp_path / "index")
    results_path, tracks_path = tmp_path / "r.jsonl", tmp_path / "tracks.jsonl"
    topic, prefix = f"vidrec-video-tracks-{uuid.uuid4().hex[:8]}", f"vv{uuid.uuid4().hex[:6]}"
    proc = run_vidrec("video", bikes_mp4, "--json", results_path, "--tracks-out", tracks_path, "--kafka", kafka_bootstrap,
                      "--topic", topic, "--redis", redis_url, "-o", f"Redis.key_prefix={prefix}", *gallery)
    assert proc.returncode == 0, proc.stderr
    events = read_jsonl(tracks_path)
    assert events, "bikes.mp4 has cyclists, cars and people to track"
    kinds: dict[int, list[str]] = defaultdict(list)
    for event in events:
        validate(event, SCHEMA)
        assert event["stream_id"] == "bikes" and event["run_id"] is None
        kinds[event["track_id"]].append(event["event"])
    for track_id, seen in kinds.items():
        assert seen[0] == "started" and seen[-1] == "ended", (track_id, seen)
        assert seen.count("started") == 1 and seen.count("ended") == 1, (track_id, seen)
    # The tracks still open at the end of the file are ended there, last in the file.
    last_frame = max(e["frame_index"] for e in events)
    at_end = [e for e in events if e["event"] == "ended" and e["reason"] == "stream ended"]
    assert at_end and events[-len(at_end):] == at_end, [e["reason"] for e in events[-5:]]
    assert all(e["frame_index"] <= last_frame for e in events)
    # Every box with a track id in the results belongs to a track of the events.
    result_ids = {obj["track_id"] for r in read_jsonl(results_path) for obj in r["objects"]} - {None}
    assert result_ids == set(kinds)
    # The same events, in the same order, on the tracks topic (key = stream id); none left in Redis's current tracks.
    with TopicReader(kafka_bootstrap, f"{topic}.tracks") as reader:
        wait_for(lambda: len(reader.all()) >= len(events), 60, "the track events on Kafka")
        assert [m.value for m in reader.all()] == events and {m.key for m in reader.all()} == {b"bikes"}
    client = redis.Redis.from_url(redis_url)
    try:
        assert not client.exists(f"{prefix}:tracks:bikes")
    finally:
        client.close()


def test_tracks_out_with_tracking_off_is_a_one_line_error(tmp_path: Path, bikes_mp4: Path) -> None:
    proc = run_vidrec("video", bikes_mp4, "--tracks-out", tmp_path / "t.jsonl", "-o", "Tracker.enabled=false")
    assert_one_line_error(proc, "--tracks-out", "Tracker.enabled=false")
    assert not list(tmp_path.glob("t.jsonl*"))
