"""What one camera costs the results topic and Redis, measured on the real service (for docs/scaling.md).

Runs `vidrec serve` on live RTSP cameras (default: the test server's /bikes and /street720) with the Kafka and
Redis sinks for ``--seconds``, stops it (SIGTERM: everything published), then reads back:

- every result and track event from the topics: value and key bytes (what a consumer receives; the producer
  sends uncompressed), objects per result, track events per result, and how far gzip (the codec every Kafka
  client has) shrinks a stream's results in batches of 100, as a producer's or broker's compression would;
- Redis: ``MEMORY USAGE`` of each stream's keys while it runs (the current tracks hash is only full then), and
  of a history at ``Redis.history_len`` entries (the steady state of a stream that has run that long), built per
  stream in a scratch key from that stream's own result JSONs, so the per-entry cost is measured at the size and
  encoding the real key has then.

With ``--gallery`` the sample gallery (samples/gallery: taxi, cyclist, parked bicycle) names objects, so labels
and scores are in the messages as in a real deployment.

    .venv/bin/python bench/message_sizes.py --seconds 90 --gallery
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.service_probe import free_port, get_json, pct  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record, read until the topic is quiet for 3 s."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                             enable_auto_commit=False)
    out: list[tuple[bytes, bytes]] = []
    quiet = time.monotonic()
    try:
        while time.monotonic() - quiet < 3.0 or not out:
            polled = consumer.poll(timeout_ms=500)
            for records in polled.values():
                out += [(r.key or b"", r.value) for r in records]
                quiet = time.monotonic()
    finally:
        consumer.close()
    return out


def stats(values: list[float]) -> str:
    mean = sum(values) / len(values)
    return f"mean {mean:.0f}, p50 {pct(values, 50):.0f}, p95 {pct(values, 95):.0f}, max {max(values):.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--gallery", action="store_true", help="name objects with the sample gallery")
    parser.add_argument("--camera", action="append", metavar="ID=URL",
                        help="cameras (default: bikes and street720 of $RTSP_BASE)")
    args = parser.parse_args()
    bootstrap, redis_url, rtsp = os.environ["KAFKA_BOOTSTRAP"], os.environ["REDIS_URL"], os.environ["RTSP_BASE"]
    cameras = args.camera or [f"bikes={rtsp}/bikes", f"street720={rtsp}/street720"]
    topic, prefix = f"vidrec-sizes-{uuid.uuid4().hex[:8]}", f"sizes{uuid.uuid4().hex[:6]}"
    port = free_port()
    cmd = [sys.executable, "-m", "workers.cli", "serve", "--kafka", bootstrap, "--topic", topic, "--redis", redis_url,
           "-o", f"Redis.key_prefix={prefix}", "--http", f"127.0.0.1:{port}"]
    for camera in cameras:
        cmd += ["--stream", camera]
    if args.gallery:
        gallery, index_dir = REPO / "samples" / "gallery", Path(f"/tmp/{topic}-index")
        options = ["-o", f"IndexProcess.image_root={gallery}", "-o", f"IndexProcess.index_dir={index_dir}"]
        subprocess.run([sys.executable, "-m", "workers.cli", "gallery", "build", "-o",
                        f"IndexProcess.data_file={gallery / 'data_file.txt'}", *options], cwd=REPO, check=True)
        cmd += options
    log = open(f"/tmp/{topic}.log", "w")
    serve = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                get_json(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"vidrec serve did not come up; see {log.name}")
                time.sleep(1)
        time.sleep(args.seconds)
        import redis

        client = redis.Redis.from_url(redis_url)
        live_usage = {}
        for sid in (c.split("=", 1)[0] for c in cameras):
            keys = {kind: f"{prefix}:{kind}:{sid}" for kind in ("latest", "history", "tracks")}
            live_usage[sid] = ({kind: client.memory_usage(key) or 0 for kind, key in keys.items()},
                               client.zcard(keys["history"]), client.hlen(keys["tracks"]))
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(120)
    results = read_topic(bootstrap, topic)
    events = read_topic(bootstrap, f"{topic}.tracks")
    decoded = [json.loads(v) for _, v in results]
    print(f"cameras: {', '.join(cameras)}; {args.seconds:g} s; {len(results)} results, {len(events)} track events")
    for sid in sorted({m['stream_id'] for m in decoded}):
        mine = [(k, v) for (k, v), m in zip(results, decoded) if m["stream_id"] == sid]
        objects = [len(m["objects"]) for m in decoded if m["stream_id"] == sid]
        times = sorted(m["capture_time"] for m in decoded if m["stream_id"] == sid)
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
        print(f"- {sid}: {len(mine)} results ({rate:.1f}/s here); value bytes {stats([len(v) for _, v in mine])}; key {len(mine[0][0])} B; "
              f"objects per result mean {sum(objects) / len(objects):.1f}, max {max(objects)}")
        raw = [v for _, v in mine]
        batches = [raw[i:i + 100] for i in range(0, len(raw) - 99, 100)]
        if batches:
            ratio = sum(len(gzip.compress(b"".join(b))) for b in batches) / sum(len(b"".join(b)) for b in batches)
            print(f"  gzip of batches of 100 results: {ratio:.2f} of the bytes")
        mine_events = [v for k, v in events if k == sid.encode()]
        if mine_events:
            print(f"  track events: {len(mine_events)} ({len(mine_events) / len(mine):.3f} per result); "
                  f"value bytes {stats([len(v) for v in mine_events])}")

    history_len = 1000  # Redis.history_len's default
    for sid, (usage, entries, tracks) in sorted(live_usage.items()):
        print(f"- redis {sid} while running: {usage} bytes; history entries {entries}, tracks in view {tracks}")
        # The steady state: a history of history_len of this stream's real result JSONs (cycled with a distinct
        # frame_index when the run made fewer: the same JSON would collapse into one member).
        values = [v for _, v in results if json.loads(v)["stream_id"] == sid]
        scratch = f"{prefix}:scratch-history:{sid}"
        pipe = client.pipeline()
        for i in range(history_len):
            doc = json.loads(values[i % len(values)])
            doc["frame_index"] += (i // len(values)) * 1_000_000
            pipe.zadd(scratch, {json.dumps(doc, separators=(",", ":")): doc["capture_time"] + i})
        pipe.execute()
        full = client.memory_usage(scratch) or 0
        print(f"  history at history_len={history_len}: {full} bytes ({full / history_len:.0f} per entry); with the "
              f"latest key and the tracks hash as seen: {full + usage['latest'] + usage['tracks']} bytes")
    client.delete(*client.keys(f"{prefix}:*"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
