"""`vidrec serve` end to end: the real command as a subprocess, two RTSP cameras from the real test server
(scripts/rtsp_server.py) and a real file at once, results on real Kafka and Redis, the HTTP API, a server
outage, streams added and removed at runtime, and the drain on SIGTERM.

Every wait polls a condition with a deadline; deadlines are bounds for a slow machine, not timing claims.
"""
from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import jsonschema
import pytest
import redis

from stream.messages import STREAM_STATES, load_schema
from tests.cli_helpers import assert_one_line_error, run_vidrec
from tests.serve_helpers import ServeProcess, TopicReader, free_port, wait_for

SCHEMA = load_schema()
TOKEN = "test-token-" + uuid.uuid4().hex
MODEL_ENV_HINT = "VIDREC_MODEL_DIR (the models) and a running scripts/services"


@pytest.fixture(scope="module")
def rtsp_base() -> str:
    value = os.environ.get("RTSP_BASE")
    assert value, 'RTSP_BASE is not set: start the services with `set -a; eval "$(scripts/services up)"; set +a`'
    return value.rstrip("/")


def services(repo_dir: Path, *args: str) -> None:
    done = subprocess.run([str(repo_dir / "scripts" / "services"), *args], cwd=repo_dir, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"scripts/services {' '.join(args)} failed:\n{done.stderr[-2000:]}"


def captured_after(messages, t: float) -> list:
    return [m for m in messages if m.value["capture_time"] > t]


def assert_in_order_and_valid(messages) -> None:
    indices = [m.value["frame_index"] for m in messages]
    assert all(a < b for a, b in zip(indices, indices[1:])), f"frame_index not increasing: {indices[:50]}"
    for m in messages:
        jsonschema.validate(m.value, SCHEMA)
        assert m.key == m.value["stream_id"].encode()
        assert m.value["stream_state"] in STREAM_STATES
        latency = m.value["latency_ms"]
        assert {"decode", "queue", "detect", "total"} <= set(latency), latency
        assert latency["queue"] <= latency["total"]


@pytest.mark.timeout(420)
def test_cameras_and_a_file_outage_api_and_drain(
    tmp_path: Path, repo_dir: Path, rtsp_base: str, vtest_avi: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    topic = f"vidrec-serve-{uuid.uuid4().hex[:8]}"
    prefix = f"vs{uuid.uuid4().hex[:6]}"
    config = tmp_path / "serve.yaml"
    config.write_text(
        "streams:\n"
        f"  - {{id: bikes, url: '{rtsp_base}/bikes'}}\n"
        f"  - {{id: clock, url: '{rtsp_base}/clock', clock_stamp: true}}\n"
        f"  - {{id: file, url: '{vtest_avi}'}}\n"
    )
    port = free_port()
    serve = ServeProcess(
        ["--config", str(config), "--kafka", kafka_bootstrap, "--topic", topic, "--redis", redis_url,
         "-o", f"Redis.key_prefix={prefix}", "-o", "Service.live.backoff_max_s=2"],
        log_path=tmp_path / "serve.log", http_port=port, env={"VIDREC_API_TOKEN": TOKEN},
    )
    reader: TopicReader | None = None
    rtsp_stopped = False
    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        reader = TopicReader(kafka_bootstrap, topic)

        # 1. Results for all three streams on Kafka; the API lists them with states and counters.
        wait_for(lambda: all(reader.count(s) >= 5 for s in ("bikes", "clock", "file")), 60, "results of all streams")
        streams = serve.streams()
        assert set(streams) == {"bikes", "clock", "file"}
        assert streams["file"]["kind"] == "file" and streams["clock"]["kind"] == "live"
        for view in streams.values():
            assert view["state"] in STREAM_STATES
            assert view["counters"]["processed"] > 0 and view["counters"]["published"]["kafka"] > 0, view
        assert streams["file"]["state"] == "live", "the file must still be running for the outage check"

        # 2. Changes without (or with a wrong) token are refused and change nothing.
        body = {"id": "vtest-cam", "url": f"{rtsp_base}/vtest"}
        assert serve.api("POST", "/streams", body).status == 401
        assert serve.api("POST", "/streams", body, token="wrong").status == 401
        assert serve.api("DELETE", "/streams/clock", token="wrong").status == 401
        assert set(serve.streams()) == {"bikes", "clock", "file"}

        # 3. The RTSP server goes away: cameras reconnect, the file's results keep coming, nothing crashes.
        services(repo_dir, "stop", "rtsp")
        rtsp_stopped = True
        down_at = time.time()
        wait_for(lambda: serve.streams()["clock"]["state"] == "reconnecting", 30, "clock reconnecting")
        wait_for(lambda: len(captured_after(reader.of("file"), down_at)) >= 20, 60,
                 "file results while the cameras are down")
        assert serve.streams()["file"]["state"] == "live"
        services(repo_dir, "start", "rtsp")
        rtsp_stopped = False
        up_at = time.time()
        wait_for(lambda: (s := serve.stream("clock")) and s["state"] == "live" and s["since"] > up_at, 60,
                 "clock live again")
        wait_for(lambda: captured_after(reader.of("clock"), up_at), 60, "clock results after the outage")
        during = [m for m in reader.of("file") if down_at < m.value["capture_time"] < up_at]
        assert len(during) >= 20, f"{len(during)} file results captured during the outage"
        assert serve.alive()
        assert serve.stream("clock")["counters"]["reconnects"] >= 1

        # 4. A camera added through the API publishes; removed, it stops.
        added = serve.api("POST", "/streams", body, token=TOKEN)
        assert added.status == 201, added
        assert added.body["id"] == "vtest-cam" and added.body["kind"] == "live"
        assert serve.api("POST", "/streams", body, token=TOKEN).status == 409  # already there
        wait_for(lambda: reader.count("vtest-cam") >= 5, 60, "results of the added camera")
        assert serve.stream("vtest-cam")["state"] in ("live", "stalled")
        removed = serve.api("DELETE", "/streams/vtest-cam", token=TOKEN)
        assert removed.status == 202, removed
        wait_for(lambda: serve.stream("vtest-cam") is None, 30, "the removed camera gone from the API")
        gone_at = time.time()
        wait_for(lambda: len(captured_after(reader.of("clock"), gone_at)) >= 15, 60, "clock results after the removal")
        late = captured_after(reader.of("vtest-cam"), gone_at)
        assert not late, f"{len(late)} results of the removed camera captured after it was gone"
        assert set(serve.streams()) == {"bikes", "clock", "file"}

        # 5. The file finishes: ended, every frame processed; then SIGTERM drains and exits 0.
        file_view = wait_for(lambda: (s := serve.stream("file")) and s["state"] == "ended" and s, 240, "file ended")
        assert file_view["frame_count"] == 795
        code = serve.terminate()
        assert code == 0, serve.log_text()[-4000:]

        # 6. Every frame that entered inference reached Kafka: processed == published == on the topic.
        final = serve.final()
        assert final["exit_code"] == 0
        by_id = {s["id"]: s for s in final["streams"]}
        assert set(by_id) == {"bikes", "clock", "file"}
        for sid, view in by_id.items():
            processed = view["counters"]["processed"]
            assert view["sinks"]["kafka"] == {"written": processed, "dropped": 0, "errors": 0}, view
            wait_for(lambda: reader.count(sid) >= processed, 30, f"{processed} messages of {sid} on the topic")
            assert reader.count(sid) == processed, sid
        file_counters = by_id["file"]["counters"]
        assert file_counters["processed"] == file_counters["written"] == file_counters["taken"] == 795
        assert sum(file_counters["dropped_ring"].values()) == 0
        assert by_id["clock"]["latency_ms"]["e2e_p50"] > 0
        for sid in ("bikes", "clock", "file", "vtest-cam"):
            assert_in_order_and_valid(reader.of(sid))
        assert Counter(m.value["stream_state"] for m in reader.of("file"))["live"] > 0
        assert all("camera" in m.value["latency_ms"] for m in reader.of("clock"))
        # Redis holds the newest result of each stream.
        client = redis.Redis.from_url(redis_url)
        try:
            for sid in ("bikes", "clock", "file"):
                assert client.get(f"{prefix}:latest:{sid}") is not None, sid
        finally:
            client.close()
        assert "Traceback" not in serve.log_text()
    finally:
        if rtsp_stopped:
            services(repo_dir, "start", "rtsp")
        serve.kill()
        if reader is not None:
            reader.close()


def test_api_refuses_bad_requests(tmp_path: Path, bikes_mp4: Path) -> None:
    port = free_port()
    serve = ServeProcess(["--stream", f"file={bikes_mp4}", "-o", "Service.ingest_processes=1"],
                         log_path=tmp_path / "serve.log", http_port=port, env={"VIDREC_API_TOKEN": TOKEN})
    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        cases = [
            # (method, path, body or raw bytes, expected status, fragment of the error)
            ("POST", "/streams", b"{not json", 400, "not JSON"),
            ("POST", "/streams", [1, 2], 400, "JSON object"),
            ("POST", "/streams", {"url": "rtsp://127.0.0.1:9/x"}, 400, "id: missing"),
            ("POST", "/streams", {"id": "bad id", "url": "rtsp://127.0.0.1:9/x"}, 400, "id:"),
            ("POST", "/streams", {"id": "x", "url": "rtsp://127.0.0.1:9/x", "fps": 3}, 400, "unknown field"),
            ("POST", "/streams", {"id": "x", "url": "rtsp://127.0.0.1:9/x", "every_nth": 0}, 400, "every_nth"),
            ("POST", "/streams", {"id": "x", "url": str(tmp_path / "missing.mp4")}, 400, "no such file"),
            ("POST", "/streams", {"id": "file", "url": str(bikes_mp4)}, 409, "already present"),
            ("POST", "/streams", b"x" * (65 * 1024), 413, "limit"),
            ("DELETE", "/streams/nope", None, 404, "no stream"),
            ("GET", "/streams/nope", None, 404, "no stream"),
            ("GET", "/nothing", None, 404, "no route"),
            ("PUT", "/streams", None, 405, "not allowed"),
        ]
        for method, path, body, status, fragment in cases:
            raw = body if isinstance(body, bytes) else None
            response = serve.api(method, path, None if raw is not None else body, token=TOKEN, raw=raw)
            assert response.status == status, (method, path, response)
            assert fragment in response.body["error"] and "\n" not in response.body["error"], response.body
        assert set(serve.streams()) == {"file"}
        wait_for(lambda: serve.stream("file")["state"] == "ended", 120, "the file to end")
        assert serve.terminate() == 0
        final = serve.final()
        assert final["streams"][0]["counters"]["processed"] == 250  # no sink: computed and counted
    finally:
        serve.kill()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--stream", "bad id=rtsp://127.0.0.1:9/x"], ["--stream bad id=", "id:"]),
        (["--stream", "noequals"], ["--stream noequals", "ID=URL"]),
        (["--stream", "a=/no/such/file.mp4"], ["/no/such/file.mp4", "no such file"]),
        (["--stream", "a=rtsp://x/1", "--stream", "a=rtsp://x/2"], ["'a'", "twice"]),
        (["--stream", "a=rtsp://x/1", "--http", "nope"], ["--http nope", "HOST:PORT"]),
        (["--stream", "a=rtsp://x/1", "--topic", "t"], ["--topic", "--kafka"]),
        (["--stream", "a=rtsp://x/1", "-o", "Service.max_batch=0"], ["Service.max_batch", ">= 1"]),
        ([], ["nothing to serve"]),
    ],
)
def test_serve_usage_errors_are_one_line(args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(run_vidrec("serve", *args, timeout=60), *fragments)


def test_unreachable_kafka_is_one_line(bikes_mp4: Path) -> None:
    port = free_port()  # nothing listens there
    proc = run_vidrec("serve", "--stream", f"file={bikes_mp4}", "--kafka", f"127.0.0.1:{port}",
                      "-o", "Kafka.connect_timeout_s=1", timeout=180)
    assert_one_line_error(proc, f"127.0.0.1:{port}", "Kafka")
