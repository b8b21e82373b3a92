"""`vidrec serve` end to end: the real command as a subprocess, two RTSP cameras from the real test server
(scripts/rtsp_server.py) and a real file at once, results on real Kafka and Redis, the HTTP API, a server
outage, streams added and removed at runtime, and the drain on SIGTERM.

Every wait polls a condition with a deadline; deadlines are bounds for a slow machine, not timing claims.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
import redis

from stream.messages import STREAM_STATES, load_schema
from tests.cli_helpers import assert_one_line_error, run_vidrec, sample_gallery
from tests.media import video_head
from tests.prometheus_helpers import metric_samples
from tests.schema_check import validate
from tests.serve_helpers import ServeProcess, TopicReader, free_port, services, wait_for

SCHEMA = load_schema()
TOKEN = "test-token-" + uuid.uuid4().hex
MODEL_ENV_HINT = "VIDREC_MODEL_DIR (the models) and a running scripts/services"


# The file stream of the tests below: the first 300 frames of vtest.avi, not all 795. It must still run when the
# RTSP outage is checked (measured on two busy cores: at frame ~60 of it) and when the inference worker is killed
# (at frame ~8), and then be read to its end; each frame past that margin cost ~0.13 s there (shared with the
# cameras) and proved nothing more.
FILE_FRAMES = 300


@pytest.fixture(scope="module")
def vtest_clip(tmp_path_factory: pytest.TempPathFactory, vtest_avi: Path) -> Path:
    return video_head(vtest_avi, FILE_FRAMES, tmp_path_factory.mktemp("vtest_head") / "vtest_head.avi")


# test_api_refuses_bad_requests waits for its file to end and counts its frames: 50 frames of bikes.mp4 do that as
# well as all 250 (measured on two busy cores: the test took 20 s with them, 41 s with all 250).
BIKES_FRAMES = 50


@pytest.fixture(scope="module")
def bikes_clip(tmp_path_factory: pytest.TempPathFactory, bikes_mp4: Path) -> Path:
    return video_head(bikes_mp4, BIKES_FRAMES, tmp_path_factory.mktemp("bikes_head") / "bikes_head.mp4")


def captured_after(messages, t: float) -> list:
    return [m for m in messages if m.value["capture_time"] > t]


def assert_in_order_and_valid(messages) -> None:
    indices = [m.value["frame_index"] for m in messages]
    assert all(a < b for a, b in zip(indices, indices[1:])), f"frame_index not increasing: {indices[:50]}"
    for m in messages:
        validate(m.value, SCHEMA)
        assert m.key == m.value["stream_id"].encode()
        assert m.value["stream_state"] in STREAM_STATES
        latency = m.value["latency_ms"]
        assert {"decode", "queue", "detect", "total"} <= set(latency), latency
        assert latency["queue"] <= latency["total"]


@pytest.mark.timeout(420)
def test_cameras_and_a_file_outage_api_and_drain(
    tmp_path: Path, rtsp_base: str, vtest_clip: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    topic = f"vidrec-serve-{uuid.uuid4().hex[:8]}"
    prefix = f"vs{uuid.uuid4().hex[:6]}"
    config = tmp_path / "serve.yaml"
    config.write_text(
        "streams:\n"
        f"  - {{id: bikes, url: '{rtsp_base}/bikes'}}\n"
        f"  - {{id: clock, url: '{rtsp_base}/clock', clock_stamp: true}}\n"
        f"  - {{id: file, url: '{vtest_clip}'}}\n"
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
        # Counters reach the API with the workers' periodic reports: wait for them rather than race them.
        def counted() -> bool:
            views = serve.streams().values()
            return all(v["counters"]["processed"] > 0 and v["counters"]["published"]["kafka"] > 0 for v in views)

        wait_for(counted, 30, "processed and published counters of every stream")
        streams = serve.streams()
        assert set(streams) == {"bikes", "clock", "file"}
        assert streams["file"]["kind"] == "file" and streams["clock"]["kind"] == "live"
        for view in streams.values():
            assert view["state"] in STREAM_STATES
        assert streams["file"]["state"] == "live", "the file must still be running for the outage check"

        # 2. Changes without (or with a wrong) token are refused and change nothing.
        body = {"id": "vtest-cam", "url": f"{rtsp_base}/vtest"}
        assert serve.api("POST", "/streams", body).status == 401
        assert serve.api("POST", "/streams", body, token="wrong").status == 401
        assert serve.api("DELETE", "/streams/clock", token="wrong").status == 401
        assert set(serve.streams()) == {"bikes", "clock", "file"}

        # 3. The RTSP server goes away: cameras reconnect, the file's results keep coming, nothing crashes.
        services("stop", "rtsp")
        rtsp_stopped = True
        down_at = time.time()
        wait_for(lambda: serve.streams()["clock"]["state"] == "reconnecting", 30, "clock reconnecting")
        wait_for(lambda: len(captured_after(reader.of("file"), down_at)) >= 20, 60,
                 "file results while the cameras are down")
        assert serve.streams()["file"]["state"] == "live"
        services("start", "rtsp")
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
        assert file_view["frame_count"] == FILE_FRAMES
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
        assert file_counters["processed"] == file_counters["written"] == file_counters["taken"] == FILE_FRAMES
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
        assert not shm_left(final["run_id"]), "shared memory left behind"
    finally:
        if rtsp_stopped:
            services("start", "rtsp")
        serve.kill()
        if reader is not None:
            reader.close()


def test_api_refuses_bad_requests(tmp_path: Path, bikes_clip: Path) -> None:
    port = free_port()
    with ServeProcess(["--stream", f"file={bikes_clip}", "-o", "Service.ingest_processes=1"],
                      log_path=tmp_path / "serve.log", http_port=port, env={"VIDREC_API_TOKEN": TOKEN}) as serve:
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
            ("POST", "/streams", {"id": "file", "url": str(bikes_clip)}, 409, "already present"),
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
        assert final["streams"][0]["counters"]["processed"] == BIKES_FRAMES  # no sink: computed and counted


@pytest.mark.parametrize(
    ("http_host", "status"),
    [
        ("127.0.0.1", 201),  # no token on loopback: changes are open to local users
        ("0.0.0.0", 403),    # no token elsewhere: changes are disabled
    ],
)
def test_without_a_token_changes_are_open_only_on_loopback(tmp_path: Path, bikes_mp4: Path, http_host: str,
                                                            status: int) -> None:
    with ServeProcess(["--stream", f"file={bikes_mp4}", "-o", "Service.ingest_processes=1"],
                      log_path=tmp_path / "serve.log", http_port=free_port(), http_host=http_host) as serve:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        response = serve.api("POST", "/streams", {"id": "again", "url": str(bikes_mp4), "every_nth": 50})
        assert response.status == status, response
        assert (set(serve.streams()) == {"file", "again"}) == (status == 201)
        assert serve.terminate() == 0


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


def test_http_address_taken_is_one_line(bikes_mp4: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_vidrec("serve", "--stream", f"file={bikes_mp4}", "--http", f"127.0.0.1:{port}", timeout=60)
    assert_one_line_error(proc, f"127.0.0.1:{port}", "HTTP API")


def test_unreachable_kafka_is_one_line(bikes_mp4: Path) -> None:
    port = free_port()  # nothing listens there
    proc = run_vidrec("serve", "--stream", f"file={bikes_mp4}", "--kafka", f"127.0.0.1:{port}",
                      "-o", "Kafka.connect_timeout_s=1", timeout=180)
    assert_one_line_error(proc, f"127.0.0.1:{port}", "Kafka")


# ---- failures and the gallery --------------------------------------------------------------------------------


def shm_left(run_id: str) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"vidrec_{run_id}_")]


@pytest.mark.timeout(240)
def test_a_killed_ingest_process_is_restarted_and_the_others_go_on(
    tmp_path: Path, rtsp_base: str, kafka_bootstrap: str
) -> None:
    topic = f"vidrec-serve-{uuid.uuid4().hex[:8]}"
    serve = ServeProcess(
        ["--stream", f"clock={rtsp_base}/clock", "--stream", f"vtest={rtsp_base}/vtest",
         "--kafka", kafka_bootstrap, "--topic", topic],
        log_path=tmp_path / "serve.log", http_port=free_port(),
    )
    reader: TopicReader | None = None
    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        reader = TopicReader(kafka_bootstrap, topic)
        wait_for(lambda: reader.count("clock") >= 5 and reader.count("vtest") >= 5, 60, "results of both cameras")
        health = serve.api("GET", "/healthz").body
        index = serve.stream("clock")["ingest_process"]
        assert serve.stream("vtest")["ingest_process"] != index
        victim = health["workers"]["ingest"][index]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        wait_for(lambda: "died" in (serve.stream("clock")["reason"] or ""), 30, "the clock stream marked as orphaned")
        wait_for(lambda: (s := serve.stream("clock"))["state"] == "live" and s["since"] > killed_at, 60,
                 "the clock stream live again in a new ingest process")
        wait_for(lambda: captured_after(reader.of("clock"), killed_at), 60, "clock results after the restart")
        assert captured_after(reader.of("vtest"), killed_at), "the other camera kept publishing"
        restarted = serve.api("GET", "/healthz").body["workers"]["ingest"][index]
        assert restarted not in (None, victim)
        assert serve.terminate() == 0, serve.log_text()[-4000:]
        final = serve.final()
        assert final["exit_code"] == 0 and not shm_left(final["run_id"])
        for sid in ("clock", "vtest"):
            assert_in_order_and_valid(reader.of(sid))
    finally:
        serve.kill()
        if reader is not None:
            reader.close()


@pytest.mark.timeout(300)
def test_a_killed_inference_process_is_restarted_and_its_streams_resume(
    tmp_path: Path, rtsp_base: str, vtest_clip: Path, kafka_bootstrap: str
) -> None:
    topic = f"vidrec-serve-{uuid.uuid4().hex[:8]}"
    serve = ServeProcess(
        ["--stream", f"clock={rtsp_base}/clock", "--stream", f"file={vtest_clip}", "--kafka", kafka_bootstrap,
         "--topic", topic],
        log_path=tmp_path / "serve.log", http_port=free_port(),
    )
    reader: TopicReader | None = None
    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        reader = TopicReader(kafka_bootstrap, topic)
        wait_for(lambda: reader.count("clock") >= 5 and reader.count("file") >= 5, 60, "results of both streams")
        health = serve.api("GET", "/healthz").body
        run_id, victim, ingest = health["run_id"], health["workers"]["inference"], health["workers"]["ingest"]
        before = serve.stream("file")["counters"]["processed"]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: serve.api("GET", "/healthz").body["workers"]["inference"] not in (None, victim), 60,
                 "a new inference worker")
        wait_for(lambda: any(m.value["run_id"] == f"{run_id}.1" for m in reader.of("clock")), 90,
                 "camera results from the restarted worker")
        after = serve.api("GET", "/healthz").body
        assert after["workers"]["ingest"] == ingest, "the ingest processes were not restarted"
        assert serve.alive()
        wait_for(lambda: serve.stream("file")["state"] == "ended", 180, "the file read to its end")
        # The dead worker's last counters came up to a report interval before it died, so for it the counters are
        # lower bounds: the topic may hold a few more of its results than "published" says, never fewer.
        wait_for(lambda: reader.count("file") >= serve.stream("file")["counters"]["published"]["kafka"] > before, 30,
                 "the file's results on the topic")
        counters = serve.stream("file")["counters"]
        assert counters["processed"] > before, "counters go on from the dead worker's, never back"
        # Per run_id, seq counts 0, 1, 2... and frame_index only grows; the frames the dead worker held are
        # the only ones missing, and each run_id's seq shows where.
        file_msgs = reader.of("file")
        runs = sorted({m.value["run_id"] for m in file_msgs})
        assert runs == [run_id, f"{run_id}.1"], runs
        for run in runs:
            mine = [m.value for m in file_msgs if m.value["run_id"] == run]
            assert [v["seq"] for v in mine] == list(range(len(mine))), f"seq of {run} has gaps or repeats"
            assert all(a["frame_index"] < b["frame_index"] for a, b in zip(mine, mine[1:]))
        seen = {m.value["frame_index"] for m in file_msgs}
        lost = FILE_FRAMES - len(seen)
        assert len(file_msgs) == len(seen), "no duplicates"
        assert 0 <= lost <= 32, f"{lost} frames of the file lost with the killed worker (at most its in-flight work)"
        metrics = urllib.request.urlopen(serve.base + "/metrics", timeout=10).read().decode()
        assert metric_samples(metrics)[("vidrec_worker_restarts_total", (("process", "inference"),))] == 1
        assert "inference worker (pid" in serve.log_text() and "died with exit code -9" in serve.log_text()
        assert serve.terminate() == 0, serve.log_text()[-4000:]
        assert not shm_left(run_id)
    finally:
        serve.kill()
        if reader is not None:
            reader.close()


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has finished
    except FileNotFoundError:
        return True


@pytest.mark.timeout(180)
@pytest.mark.parametrize("when", ["as_soon_as_healthy", "while_publishing"])
def test_workers_stop_by_themselves_when_the_supervisor_is_killed(
    tmp_path: Path, rtsp_base: str, kafka_bootstrap: str, when: str
) -> None:
    # Pins a bug: ingest processes that started after the supervisor died took the reaper for their parent
    # and ran forever, blocked on a status pipe nobody read.
    serve = ServeProcess(
        ["--stream", f"clock={rtsp_base}/clock", "--stream", f"file={rtsp_base}/vtest",
         "--kafka", kafka_bootstrap, "--topic", f"vidrec-serve-{uuid.uuid4().hex[:8]}"],
        log_path=tmp_path / "serve.log", http_port=free_port(),
    )
    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        health = serve.api("GET", "/healthz").body
        if when == "while_publishing":
            wait_for(lambda: serve.stream("clock")["counters"]["published"]["kafka"] > 10, 60, "published results")
            health = serve.api("GET", "/healthz").body
        serve.proc.kill()
        serve.proc.wait(10)
        pids = [health["workers"]["inference"], *health["workers"]["ingest"]]
        assert all(pids), health
        wait_for(lambda: all(process_gone(pid) for pid in pids), 60, "every worker gone after the supervisor")
        wait_for(lambda: not shm_left(health["run_id"]), 30, "the run's shared memory removed")
    finally:
        serve.kill()


@pytest.mark.timeout(240)
def test_a_redis_outage_never_stalls_kafka(
    tmp_path: Path, rtsp_base: str, kafka_bootstrap: str, redis_url: str
) -> None:
    topic = f"vidrec-serve-{uuid.uuid4().hex[:8]}"
    prefix = f"vs{uuid.uuid4().hex[:6]}"
    serve = ServeProcess(
        ["--stream", f"clock={rtsp_base}/clock", "--kafka", kafka_bootstrap, "--topic", topic, "--redis", redis_url,
         "-o", f"Redis.key_prefix={prefix}"],
        log_path=tmp_path / "serve.log", http_port=free_port(),
    )
    reader: TopicReader | None = None
    redis_stopped = False

    def redis_counts() -> dict[str, int]:
        return serve.stream("clock")["sinks"]["redis"]

    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        reader = TopicReader(kafka_bootstrap, topic)
        wait_for(lambda: redis_counts()["written"] >= 5, 60, "results in Redis")
        services("stop", "redis")
        redis_stopped = True
        down_at = time.time()
        wait_for(lambda: redis_counts()["errors"] > 0, 60, "Redis errors counted")
        wait_for(lambda: len(captured_after(reader.of("clock"), down_at)) >= 30, 60, "Kafka results while Redis is down")
        services("start", "redis")
        redis_stopped = False
        written = redis_counts()["written"]
        back_at = time.time()
        wait_for(lambda: redis_counts()["written"] > written + 5, 60, "Redis written to again")
        assert serve.alive()
        # The overlay's cache catches up: the latest result in Redis becomes one made after Redis came back (the
        # first writes after it returned may still be results captured just before: seen in a clean-clone CI run).
        client = redis.Redis.from_url(redis_url)

        def latest_capture() -> float:
            latest = client.get(f"{prefix}:latest:clock")
            return json.loads(latest)["capture_time"] if latest is not None else 0.0

        wait_for(lambda: latest_capture() > back_at, 60, "a result captured after Redis came back in Redis")
        sink = next(s for s in serve.api("GET", "/streams").body["sinks"] if s["name"] == "redis")
        assert sink["errors"] > 0 and "Redis" in sink["last_error"]
        assert serve.terminate() == 0, serve.log_text()[-4000:]
        assert serve.log_text().count("sink redis: write failed") == 1  # logged once, counted always
        assert_in_order_and_valid(reader.of("clock"))
    finally:
        if redis_stopped:
            services("start", "redis")
        serve.kill()
        if reader is not None:
            reader.close()


@pytest.mark.timeout(240)
def test_a_new_gallery_version_is_picked_up_without_restart(
    tmp_path: Path, rtsp_base: str, kafka_bootstrap: str
) -> None:
    index_dir = tmp_path / "index"
    gallery = sample_gallery(index_dir)
    topic = f"vidrec-serve-{uuid.uuid4().hex[:8]}"
    serve = ServeProcess(
        ["--stream", f"bikes={rtsp_base}/bikes", "--kafka", kafka_bootstrap, "--topic", topic, *gallery],
        log_path=tmp_path / "serve.log", http_port=free_port(),
    )
    reader: TopicReader | None = None
    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})")
        reader = TopicReader(kafka_bootstrap, topic)
        wait_for(lambda: any(o["label"] for m in reader.of("bikes") for o in m.value["objects"]), 90,
                 "a recognised object on the live camera")
        assert {m.value["gallery_version"] for m in reader.of("bikes")} == {1}

        # A corrupt gallery in its place: the one in use stays, the error shows on /healthz and /metrics.
        good = {p.name: p.read_bytes() for p in index_dir.iterdir()}
        (index_dir / "vector.index").write_bytes(b"not a faiss index")
        corrupted_at = time.time()
        health = wait_for(lambda: (g := serve.api("GET", "/healthz").body["gallery"]) and g["error"] and g, 60,
                          "the refused gallery on /healthz")
        assert health["load_errors"] >= 1 and health["version"] == 1, health
        metrics = urllib.request.urlopen(serve.base + "/metrics", timeout=10).read().decode()
        assert metric_samples(metrics)[("vidrec_gallery_load_errors_total", ())] == 1
        wait_for(lambda: len(captured_after(reader.of("bikes"), corrupted_at)) >= 5, 60, "results after the corruption")
        assert {m.value["gallery_version"] for m in captured_after(reader.of("bikes"), corrupted_at)} == {1}
        assert serve.log_text().count("changed but was not loaded") == 1
        for name, data in good.items():  # a good one again
            (index_dir / name).write_bytes(data)
        wait_for(lambda: serve.api("GET", "/healthz").body["gallery"]["error"] is None, 60, "the good gallery loaded")

        taxi = tmp_path / "taxi.txt"
        taxi.write_text("taxi_f36.jpg\ttaxi\n")
        removed = run_vidrec("gallery", "remove", "-o", f"IndexProcess.data_file={taxi}", *gallery)
        assert removed.returncode == 0, removed.stderr
        seen = len(reader.of("bikes"))
        wait_for(lambda: any(m.value["gallery_version"] == 2 for m in reader.of("bikes")[seen:]), 60,
                 "results named by gallery version 2")
        versions = [m.value["gallery_version"] for m in reader.of("bikes")]
        assert versions == sorted(versions), "a version, once in use, stays"
        later = [m for m in reader.of("bikes") if m.value["gallery_version"] == 2]
        assert not any(o["label"] == "taxi" for m in later for o in m.value["objects"])
        assert serve.terminate() == 0, serve.log_text()[-4000:]
    finally:
        serve.kill()
        if reader is not None:
            reader.close()
