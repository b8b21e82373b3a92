"""The Kafka spool outlives a killed service: a node restarted with the same ``Kafka.spool_dir`` publishes what its
previous run had spooled and never saw acknowledged, first, with that run's own ``run_id`` and ``seq``.

The fault: the broker refuses every write to the results topic (its ``max.message.bytes`` set below one result),
a per-topic refusal on the real, shared broker that leaves it up for everybody else (stopping the broker, as
tests/test_outages.py does, would cut off every other test using it). For the spool it is the same as a broker
that is unreachable: nothing is acknowledged, so everything stays spooled, memory first, then disk. The whole
service (supervisor and workers) is then killed with SIGKILL, as a crashed node would be; the topic is made
writable again; a new run on the same spool folder must publish every result the dead run left on disk, each
before any result of its own of the same stream.

Every wait polls a condition with a deadline; deadlines are bounds for a slow machine, not timing claims.
"""
from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

import pytest
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

from tests.polling import wait_for
from tests.serve_helpers import ServeProcess, TopicReader, free_port

TOO_SMALL = "64"  # bytes: below any result (and any record batch), so the broker refuses every write
KAFKA_DEFAULT_MAX_MESSAGE = "1048588"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc."""
    children: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        out.append(todo.pop())
        todo.extend(children.get(out[-1], []))
    return out


def kill_node(serve: ServeProcess) -> None:
    """SIGKILL the supervisor and every worker at once: no process gets to drain, close or clean anything."""
    for pid in [*descendants(serve.proc.pid), serve.proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    serve.proc.wait(10)


def spooled_on_disk(spool_dir: Path) -> list[dict]:
    """The whole lines of every results spool segment under ``spool_dir`` (a half-written last line is no result)."""
    lines = []
    for segment in sorted(spool_dir.glob("vidrec-spool-*-kafka/segment-*.jsonl")):
        data = segment.read_bytes()
        lines += [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]
    return lines


def set_max_message_bytes(admin: KafkaAdminClient, topic: str, value: str) -> None:
    admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": value})])


@pytest.mark.timeout(300)
def test_a_restarted_node_publishes_what_its_killed_run_spooled_first(
    tmp_path: Path, bikes_mp4: Path, kafka_bootstrap: str, model_dir: Path
) -> None:
    topic = f"vidrec-respool-{uuid.uuid4().hex[:8]}"
    spool_dir = tmp_path / "spool"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(topic, 3, 1, topic_configs={"max.message.bytes": TOO_SMALL})])
    args = ["--stream", f"bikes={bikes_mp4}", "--kafka", kafka_bootstrap, "--topic", topic,
            "-o", "Tracker.enabled=false", "-o", "Kafka.spool_memory_results=2",
            "-o", f"Kafka.spool_dir={spool_dir}", "-o", "Kafka.spool_max_bytes=4194304"]
    first = ServeProcess(args, log_path=tmp_path / "first.log", http_port=free_port())
    second: ServeProcess | None = None
    reader: TopicReader | None = None
    try:
        wait_for(first.healthy, 120, "healthy first run (needs VIDREC_MODEL_DIR and scripts/services)")
        wait_for(lambda: len(spooled_on_disk(spool_dir)) >= 20, 120, "20 refused results spooled on disk", every_s=0.2)
        kill_node(first)
        left = spooled_on_disk(spool_dir)
        old_run = {m["run_id"] for m in left}
        assert len(old_run) == 1 and all(m["stream_id"] == "bikes" for m in left), old_run
        seqs = [m["seq"] for m in left]
        # Memory holds the oldest two (lost with the process); the disk part follows them without a gap.
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and seqs[0] >= 2, seqs[:5]

        set_max_message_bytes(admin, topic, KAFKA_DEFAULT_MAX_MESSAGE)
        second = ServeProcess(args, log_path=tmp_path / "second.log", http_port=free_port())
        reader = TopicReader(kafka_bootstrap, topic)
        wait_for(second.healthy, 120, "healthy second run")
        (new_run,) = wait_for(lambda: {m.value["run_id"] for m in reader.of("bikes")} - old_run or None, 120,
                              "a result of the new run", every_s=0.2)
        # Once the new run's results come, the old run's are all there: every one the disk held, once each
        # first, with its own run_id and seq, and none of the new run's before them (one key, one partition).
        on_topic = [m.value for m in reader.of("bikes")]
        runs = [m["run_id"] for m in on_topic]
        first_new = runs.index(new_run)
        assert set(runs[first_new:]) == {new_run}, "an old result after the new run's first"
        assert [m["seq"] for m in on_topic[:first_new]] == seqs, "the spooled results, in order, each once"
        assert on_topic[:first_new] == left, "republished as they were spooled"
        assert "left on disk go out first" in second.log_text()
        assert second.terminate() == 0, second.log_text()[-3000:]
        assert not list(spool_dir.glob("*/segment-*")), "the adopted segments are gone once published"
    finally:
        first.kill()
        if second is not None:
            second.kill()
        if reader is not None:
            reader.close()
        admin.delete_topics([topic])
        admin.close()
