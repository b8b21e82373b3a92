"""`vidrec serve` metrics and read-protected routes, end to end: a real file through the real models with a
real gallery, results on real Kafka and Redis; the scrape's counts must agree with what reached Kafka, and
``/recognitions`` with the labels counted in the Kafka messages themselves."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.cli_helpers import run_vidrec, sample_gallery
from tests.prometheus_helpers import metric_samples
from tests.serve_helpers import ServeProcess, TopicReader, free_port, wait_for

TOKEN = "metrics-token-" + uuid.uuid4().hex
FRAMES = 250  # samples/bikes.mp4


def get(base: str, path: str, *, token: str | None = None, header: bool = True) -> tuple[int, bytes, dict]:
    url = base + path
    if token is not None and not header:
        url += ("&" if "?" in url else "?") + f"access_token={token}"
    request = urllib.request.Request(url)
    if token is not None and header:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    status, body, headers = get(base, "/metrics", token=TOKEN)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return metric_samples(body.decode())


@pytest.mark.timeout(300)
def test_counts_on_the_metrics_agree_with_kafka_and_reads_need_the_token(
    tmp_path: Path, repo_dir: Path, kafka_bootstrap: str, redis_url: str
) -> None:
    index_dir = tmp_path / "index"
    gallery = sample_gallery(index_dir)
    topic = f"vidrec-metrics-{uuid.uuid4().hex[:8]}"
    serve = ServeProcess(
        ["--stream", f"bikes={repo_dir / 'samples' / 'bikes.mp4'}", "--kafka", kafka_bootstrap, "--topic", topic,
         "--redis", redis_url, "-o", f"Redis.key_prefix=vm{uuid.uuid4().hex[:6]}", "-o", "Service.http_read_auth=True",
         "-o", "Cluster.node=metrics-node-1", *gallery],
        log_path=tmp_path / "serve.log", http_port=free_port(), env={"VIDREC_API_TOKEN": TOKEN},
    )
    reader: TopicReader | None = None
    try:
        wait_for(serve.healthy, 120, "healthy service (needs VIDREC_MODEL_DIR and scripts/services)")
        reader = TopicReader(kafka_bootstrap, topic)

        # Reads need the token: header or ?access_token=; /healthz stays open for orchestrators.
        for path in ("/metrics", "/recognitions", "/streams", "/streams/bikes", "/overlay", "/streams/bikes/frame.jpg"):
            status, body, headers = get(serve.base, path)
            assert status == 401, (path, status, body[:200])
            assert headers.get("WWW-Authenticate") == 'Bearer realm="vidrec"'
            assert get(serve.base, path, token="wrong")[0] == 401, path
        assert get(serve.base, "/overlay", token=TOKEN, header=False)[0] == 200
        assert get(serve.base, "/healthz")[0] == 200

        wait_for(lambda: reader.count("bikes") >= FRAMES, 120, "every frame's result on Kafka")
        wait_for(lambda: scrape(serve.base)[("vidrec_stream_state", (("state", "ended"), ("stream", "bikes")))] == 1,
                 60, "the stream's state 'ended' on /metrics")
        def settled() -> bool:
            now = scrape(serve.base)
            return (all(now[("vidrec_sink_published_total", (("sink", sink),))] == FRAMES for sink in ("kafka", "redis"))
                    and now[("vidrec_e2e_latency_seconds_count", (("stream", "bikes"),))] == FRAMES)

        wait_for(settled, 30, "the last report of the sink counters (Kafka counts a result when the broker "
                              "acknowledged it, and times it just after)")
        samples = scrape(serve.base)
        s = (("stream", "bikes"),)
        assert samples[("vidrec_frames_decoded_total", s)] == FRAMES
        assert samples[("vidrec_frames_processed_total", s)] == FRAMES
        assert samples[("vidrec_sink_published_total", (("sink", "kafka"),))] == FRAMES
        assert samples[("vidrec_sink_errors_total", (("sink", "kafka"),))] == 0
        assert samples[("vidrec_e2e_latency_seconds_count", s)] == FRAMES
        assert samples[("vidrec_e2e_latency_seconds_bucket", (("le", "+Inf"), ("stream", "bikes")))] == FRAMES
        assert samples[("vidrec_batch_size_sum", ())] == FRAMES
        assert samples[("vidrec_batch_size_count", ())] == samples[("vidrec_batches_total", ())]
        for reason in ("every_nth", "backlog", "too_old", "inference_error", "overwritten"):
            assert samples[("vidrec_frames_dropped_total", (("reason", reason), ("stream", "bikes")))] == 0, reason
        for model in ("detector", "recognizer", "search"):
            assert samples[("vidrec_inference_seconds_count", (("model", model),))] == samples[("vidrec_batches_total", ())]
            assert samples[("vidrec_inference_seconds_sum", (("model", model),))] > 0, model
        assert samples[("vidrec_gallery_version", ())] == 1 and samples[("vidrec_gallery_entries", ())] == 3
        assert samples[("vidrec_process_resident_memory_bytes", (("process", "inference"),))] > 50e6
        assert samples[("vidrec_process_cpu_seconds_total", (("process", "inference"),))] > 0

        # Every series and every result names the node.
        metric_samples(get(serve.base, "/metrics", token=TOKEN)[1].decode(), node="metrics-node-1")
        assert {m.value["node"] for m in reader.of("bikes")} == {"metrics-node-1"}

        # Detected/recognised counts and the per-label table equal what the Kafka messages say.
        objects = [o for m in reader.of("bikes") for o in m.value["objects"]]
        named = Counter(o["label"] for o in objects if o["label"] is not None)
        assert named, "the sample gallery names something in its own footage"
        assert samples[("vidrec_objects_detected_total", s)] == len(objects)
        assert samples[("vidrec_objects_recognized_total", s)] == sum(named.values())
        status, body, _ = get(serve.base, "/recognitions", token=TOKEN)
        assert status == 200
        table = json.loads(body)
        assert {row["label"]: row["count"] for row in table["labels"]} == dict(named)
        assert all(row["streams"] == {"bikes": row["count"]} for row in table["labels"])
        assert table["total"] == sum(named.values())
        assert serve.terminate() == 0, serve.log_text()[-3000:]
    finally:
        serve.kill()
        if reader is not None:
            reader.close()


@pytest.mark.timeout(300)
def test_gallery_api_needs_the_token_and_a_new_entry_reaches_the_running_camera(
    tmp_path: Path, repo_dir: Path, rtsp_base: str, kafka_bootstrap: str
) -> None:
    gallery_dir = repo_dir / "samples" / "gallery"
    data_file = tmp_path / "two.txt"
    data_file.write_text("taxi_f36.jpg\ttaxi\ncyclist_f120.jpg\tcyclist\n")
    index_dir = tmp_path / "index"
    gallery = ["-o", f"IndexProcess.image_root={gallery_dir}", "-o", f"IndexProcess.index_dir={index_dir}"]
    built = run_vidrec("gallery", "build", "-o", f"IndexProcess.data_file={data_file}", *gallery)
    assert built.returncode == 0, built.stderr
    topic = f"vidrec-gapi-{uuid.uuid4().hex[:8]}"
    serve = ServeProcess(["--stream", f"cam={rtsp_base}/bikes", "--kafka", kafka_bootstrap, "--topic", topic,
                          *gallery], log_path=tmp_path / "serve.log", http_port=free_port(),
                         env={"VIDREC_API_TOKEN": TOKEN})
    reader: TopicReader | None = None
    try:
        wait_for(serve.healthy, 120, "healthy service (needs VIDREC_MODEL_DIR and scripts/services)")
        reader = TopicReader(kafka_bootstrap, topic)
        info = serve.api("GET", "/gallery").body
        assert (info["version"], info["entries"]) == (1, 2) and info["labels"] == {"taxi": 1, "cyclist": 1}
        saved = {p.name: p.read_bytes() for p in index_dir.iterdir()}

        item = {"path": "parked_bicycle_f216.jpg", "label": "parked bicycle"}
        assert serve.api("POST", "/gallery/items", item).status == 401
        assert serve.api("POST", "/gallery/items", item, token="wrong").status == 401
        assert serve.api("DELETE", "/gallery/items", {"labels": ["taxi"]}).status == 401
        traversal = serve.api("POST", "/gallery/items", {"path": "../../README.md", "label": "x"}, token=TOKEN)
        assert traversal.status == 400 and "outside" in traversal.body["error"], traversal
        assert {p.name: p.read_bytes() for p in index_dir.iterdir()} == saved, "refused requests changed nothing"

        added = serve.api("POST", "/gallery/items", item, token=TOKEN)
        assert added.status == 201 and added.body["added"] == 1 and added.body["version"] == 2, added
        assert serve.api("GET", "/gallery").body["labels"] == {"taxi": 1, "cyclist": 1, "parked bicycle": 1}
        wait_for(lambda: any(m.value["gallery_version"] == 2 for m in reader.of("cam")), 60,
                 "the camera's results named by gallery version 2")
        wait_for(lambda: scrape(serve.base)[("vidrec_gallery_version", ())] == 2, 30, "gallery version 2 on /metrics")
        assert scrape(serve.base)[("vidrec_gallery_entries", ())] == 3
        removed = serve.api("DELETE", "/gallery/items", {"labels": ["taxi"]}, token=TOKEN)
        assert removed.status == 200 and removed.body["removed"] == 1, removed
        assert serve.terminate() == 0, serve.log_text()[-3000:]
    finally:
        serve.kill()
        if reader is not None:
            reader.close()
