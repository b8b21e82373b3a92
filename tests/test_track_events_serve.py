"""Track events out of `vidrec serve`, end to end: a file and a live RTSP camera through the real models with a
real gallery; events on the real Kafka tracks topic, each stream's current tracks in real Redis, the counts on
/metrics, and the recent events with their thumbnails on the HTTP API."""
from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import redis

from stream.track_events import load_track_event_schema
from tests.cli_helpers import sample_gallery
from tests.prometheus_helpers import metric_samples
from tests.schema_check import validate
from tests.serve_helpers import ServeProcess, TopicReader, free_port, wait_for
from tests.test_serve_metrics import get
from workers import http_schemas

TOKEN = "tracks-token-" + uuid.uuid4().hex
FRAMES = 250  # samples/bikes.mp4
SCHEMA = load_track_event_schema()


def _events(reader: TopicReader, stream_id: str) -> list[dict[str, Any]]:
    return [m.value for m in reader.of(stream_id)]


def _lifetimes(events: list[dict[str, Any]]) -> dict[int, list[str]]:
    """track id -> its events' kinds, in order."""
    kinds: dict[int, list[str]] = defaultdict(list)
    for event in events:
        kinds[event["track_id"]].append(event["event"])
    return kinds


def _all_ended(reader: TopicReader, stream_id: str) -> bool:
    lives = _lifetimes(_events(reader, stream_id))
    return bool(lives) and all(kinds[-1] == "ended" for kinds in lives.values())


def _check_lifetimes(events: list[dict[str, Any]]) -> None:
    """Every track: one ``started`` first, one ``ended`` last, ``labelled`` between; times never go back."""
    for track_id, kinds in _lifetimes(events).items():
        assert kinds[0] == "started" and kinds[-1] == "ended", (track_id, kinds)
        assert kinds.count("started") == 1 and kinds.count("ended") == 1, (track_id, kinds)
        assert set(kinds[1:-1]) <= {"labelled"}, (track_id, kinds)
    for event in events:
        assert event["first_seen"] <= event["last_seen"], event


@pytest.mark.timeout(420)
def test_track_events_reach_kafka_redis_metrics_and_the_api(
    tmp_path: Path, repo_dir: Path, rtsp_base: str, kafka_bootstrap: str, redis_url: str
) -> None:
    gallery = sample_gallery(tmp_path / "index")
    topic = f"vidrec-tracks-{uuid.uuid4().hex[:8]}"
    prefix = f"vt{uuid.uuid4().hex[:6]}"
    serve = ServeProcess(
        ["--stream", f"file={repo_dir / 'samples' / 'bikes.mp4'}", "--stream", f"cam={rtsp_base}/bikes",
         "--kafka", kafka_bootstrap, "--topic", topic, "--redis", redis_url, "-o", f"Redis.key_prefix={prefix}",
         *gallery],
        log_path=tmp_path / "serve.log", http_port=free_port(), env={"VIDREC_API_TOKEN": TOKEN},
    )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    results: TopicReader | None = None
    tracks: TopicReader | None = None
    try:
        wait_for(serve.healthy, 180, "healthy service (needs VIDREC_MODEL_DIR and the services)")
        results = TopicReader(kafka_bootstrap, topic)
        tracks = TopicReader(kafka_bootstrap, f"{topic}.tracks")  # the default: <Kafka.topic>.tracks

        # -- the file: every track started is ended once its stream ended ------------------------------------
        wait_for(lambda: results.count("file") >= FRAMES, 180, "every frame's result of the file on Kafka")
        wait_for(lambda: _all_ended(tracks, "file"), 60, "an ended event for every track of the file")
        file_events = _events(tracks, "file")
        for message in tracks.all():
            validate(message.value, SCHEMA)
            assert message.key == message.value["stream_id"].encode()
        _check_lifetimes(file_events)
        ended = [e for e in file_events if e["event"] == "ended"]
        assert any(e["reason"] == "stream ended" for e in ended), Counter(e["reason"] for e in ended)
        assert any(e["label"] is not None for e in file_events), "the sample gallery names some bikes"
        result_ids = {obj["track_id"] for m in results.of("file") for obj in m.value["objects"]} - {None}
        event_ids = set(_lifetimes(file_events))
        assert result_ids and result_ids <= event_ids, result_ids - event_ids
        run_ids = {e["run_id"] for e in file_events} | {m.value["run_id"] for m in results.of("file")}
        assert len(run_ids) == 1, run_ids
        # The file's tracks are gone from its current tracks; the camera's are there while they live.
        assert client.hlen(f"{prefix}:tracks:file") == 0

        # -- /metrics counts what reached Kafka ------------------------------------------------------------
        by_kind = Counter(e["event"] for e in file_events)

        def counted() -> dict[tuple[str, tuple], float] | None:
            samples = metric_samples(get(serve.base, "/metrics")[1].decode())
            ok = all(samples[("vidrec_tracks_total", (("event", kind), ("stream", "file")))] == by_kind[kind]
                     for kind in ("started", "labelled", "ended"))
            return samples if ok else None

        samples = wait_for(counted, 30, "the file's track events counted on /metrics")
        assert samples[("vidrec_tracks_active", (("stream", "file"),))] == 0
        crops = samples[("vidrec_recognizer_crops_total", (("stream", "file"),))]
        # Every embedded box was a crop; the whole-frame box is one more crop that shows only when it was named
        # (PP-ShiTu's rule), and the recognition NMS may drop a recognised box: so at most one per frame more.
        embedded = sum(obj["embedded"] for m in results.of("file") for obj in m.value["objects"])
        assert 0 < embedded <= crops <= embedded + FRAMES, (crops, embedded)

        # -- the camera: Redis holds its current tracks, each the newest event of a live track ---------------
        def current() -> dict[str, str] | None:
            held = client.hgetall(f"{prefix}:tracks:cam")
            return held or None

        held = wait_for(current, 90, "current tracks of the camera in Redis")
        for field, value in held.items():
            event = json.loads(value)
            validate(event, SCHEMA)
            assert event["event"] in ("started", "labelled") and str(event["track_id"]) == field, event
        assert client.ttl(f"{prefix}:tracks:cam") > 0
        started_live = wait_for(lambda: set(_lifetimes(_events(tracks, "cam"))) >= {int(f) for f in held} and
                                set(_lifetimes(_events(tracks, "cam"))), 30, "the camera's held tracks on Kafka")
        # Removing the camera ends its tracks: each one ended on Kafka, none left in Redis.
        assert serve.api("DELETE", "/streams/cam", token=TOKEN).status == 202
        wait_for(lambda: _all_ended(tracks, "cam"), 60, "an ended event for every track of the removed camera")
        cam_events = _events(tracks, "cam")
        _check_lifetimes(cam_events)
        assert set(_lifetimes(cam_events)) >= started_live
        wait_for(lambda: client.hlen(f"{prefix}:tracks:cam") == 0, 30, "the camera's tracks gone from Redis")

        # -- GET /track-events and the thumbnails ---------------------------------------------------------
        page = serve.api("GET", "/track-events?limit=500").body
        http_schemas.TrackEventPage.model_validate(page)  # the answer is what /openapi.json describes
        rows = page["events"]
        assert [r["n"] for r in rows] == sorted(r["n"] for r in rows) and page["next"] == rows[-1]["n"]
        on_kafka = [m.value for m in tracks.all()]
        assert len(on_kafka) <= 500 or len(rows) == 500
        tail = on_kafka[-len(rows):] if len(on_kafka) >= len(rows) else on_kafka
        key = lambda e: (e["stream_id"], e["track_id"], e["event"], e["frame_index"])  # noqa: E731
        assert sorted(map(key, (r["event"] for r in rows))) == sorted(map(key, tail))
        assert serve.api("GET", f"/track-events?after={page['next']}").body == {"events": [], "next": page["next"]}
        with_thumbnail = [r for r in rows if r["thumbnail"]]
        assert with_thumbnail, "labelled and ended tracks of a gallery run have a best crop"
        status, jpeg, headers = get(serve.base, with_thumbnail[-1]["thumbnail"])
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and 0 < max(image.shape[:2]) <= 128, None if image is None else image.shape
        missing = with_thumbnail[-1]["thumbnail"].rsplit("/", 1)[0] + "/999999"
        assert get(serve.base, missing)[0] == 404
        assert serve.terminate() == 0
    finally:
        for reader in (results, tracks):
            if reader is not None:
                reader.close()
        client.close()
        serve.kill()


@pytest.mark.timeout(300)
def test_a_restarted_ingest_process_ends_its_cameras_tracks_and_new_ones_start(
    tmp_path: Path, rtsp_base: str, kafka_bootstrap: str, redis_url: str
) -> None:
    """SIGKILL the ingest process of a camera with tracks in view: those tracks end (its producer died, or the
    restarted stream is announced), the camera's new tracks get new ids, and Redis drops the ended ones."""
    topic = f"vidrec-tracks-restart-{uuid.uuid4().hex[:8]}"
    prefix = f"vr{uuid.uuid4().hex[:6]}"
    serve = ServeProcess(
        ["--stream", f"cam={rtsp_base}/bikes", "--kafka", kafka_bootstrap, "--topic", topic, "--redis", redis_url,
         "-o", f"Redis.key_prefix={prefix}"],
        log_path=tmp_path / "serve.log", http_port=free_port(),
    )
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    tracks: TopicReader | None = None
    try:
        wait_for(serve.healthy, 180, "healthy service (needs VIDREC_MODEL_DIR and the services)")
        tracks = TopicReader(kafka_bootstrap, f"{topic}.tracks")
        held = wait_for(lambda: client.hgetall(f"{prefix}:tracks:cam"), 90, "tracks of the camera in view")
        victim = serve.api("GET", "/healthz").body["workers"]["ingest"][0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        in_view = {int(track_id) for track_id in held}
        wait_for(lambda: all(_lifetimes(_events(tracks, "cam")).get(t, [""])[-1] == "ended" for t in in_view), 60,
                 "an ended event for every track in view when the ingest process died")
        wait_for(lambda: any(e["event"] == "started" and e["first_seen"] > killed_at for e in _events(tracks, "cam")),
                 90, "new tracks of the camera after its restart")
        events = _events(tracks, "cam")
        ended_by_restart = [e for e in events if e["event"] == "ended" and e["reason"] in ("producer died", "stream restarted")]
        assert ended_by_restart or all(e["reason"] == "lost" for e in events if e["track_id"] in in_view), events[-5:]
        started = [e["track_id"] for e in events if e["event"] == "started"]
        assert len(started) == len(set(started)), "a track id is never given twice within a run"
        new = {e["track_id"] for e in events if e["event"] == "started" and e["first_seen"] > killed_at}
        assert not new & in_view
        wait_for(lambda: not {int(t) for t in client.hkeys(f"{prefix}:tracks:cam")} & in_view, 30,
                 "the ended tracks gone from Redis")
        assert serve.terminate() == 0, serve.log_text()[-3000:]
        wait_for(lambda: _all_ended(tracks, "cam"), 30, "every track of the camera ended at shutdown")
        _check_lifetimes(_events(tracks, "cam"))
    finally:
        if tracks is not None:
            tracks.close()
        client.close()
        serve.kill()
