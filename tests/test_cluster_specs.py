"""The streams topic's records (workers/cluster_specs.py): a spec to (key, value) and back, every malformed
record a one-line ``BadSpec`` naming the stream, tombstones, the partition of a key; and the Cluster config's
refusals. Pure: no broker."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from config import ConfigError, load_config
from tests.cli_helpers import assert_one_line_error, run_vidrec
from config.schema import ClusterSection, StreamSpec
from workers.cluster_specs import BadSpec, decode_record, encode_spec, partition_of


@pytest.mark.parametrize(
    "spec",
    [
        # a camera with the defaults
        StreamSpec(id="door", url="rtsp://10.0.0.5/1"),
        # every field away from its default
        StreamSpec(id="a.b:c-d_e", url="/data/x.mp4", every_nth=5, kind="file", clock_stamp=True),
    ],
)
def test_a_spec_survives_the_topic(spec: StreamSpec) -> None:
    key, value = encode_spec(spec)
    assert key == spec.id.encode()
    record = decode_record(key, value)
    assert record.stream_id == spec.id and record.spec == spec
    # every field is written, so a node with other defaults reads the same spec
    assert set(json.loads(value)) == set(StreamSpec.model_fields)


def test_a_tombstone_removes() -> None:
    record = decode_record(b"door", None)
    assert record.stream_id == "door" and record.spec is None


@pytest.mark.parametrize(
    "key, value, message",
    [
        # no key: no stream to give it to
        (None, b'{"id": "x", "url": "rtsp://h/1"}', "without a key"),
        # a key that is not text
        (b"\xff\xfe", b"{}", "not UTF-8"),
        # not JSON at all
        (b"door", b"rtsp://h/1", "stream 'door': value is not JSON"),
        # JSON, but not an object
        (b"door", b"[1, 2]", "stream 'door': value is a JSON list"),
        # a field missing
        (b"door", b'{"id": "door"}', "stream 'door': url: missing"),
        # a field out of range
        (b"door", b'{"id": "door", "url": "rtsp://h/1", "every_nth": 0}', "stream 'door': every_nth:"),
        # a field nobody knows
        (b"door", b'{"id": "door", "url": "rtsp://h/1", "fps": 5}', "stream 'door': fps: unknown field"),
        # the spec names another stream than its key
        (b"door", b'{"id": "gate", "url": "rtsp://h/1"}', "the spec's id is 'gate'"),
    ],
)
def test_a_malformed_record_is_one_line_naming_it(key: bytes | None, value: bytes, message: str) -> None:
    with pytest.raises(BadSpec) as caught:
        decode_record(key, value)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("partitions", [1, 3, 24])
def test_partition_of_spreads_ids_over_every_partition(partitions: int) -> None:
    # (that it is the producer's own choice is checked against the broker in tests/test_cluster.py)
    seen = Counter(partition_of(f"cam-{i}", partitions) for i in range(40 * partitions))
    assert set(seen) == set(range(partitions))
    assert max(seen.values()) < 3 * 40  # no partition takes most of the keys


def test_partition_of_refuses_no_partitions() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        partition_of("door", 0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        # the heartbeat must come well within the session
        (["Cluster.session_timeout_ms=6000", "Cluster.heartbeat_interval_ms=6000"], "must be below"),
        # a topic name Kafka would refuse
        (["Cluster.streams_topic=a b"], "streams_topic"),
        # no partitions
        (["Cluster.partitions=0"], "partitions"),
    ],
)
def test_cluster_config_refusals(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_cluster_defaults_suit_cameras() -> None:
    section = ClusterSection()
    # seconds, not Kafka's 45 s, and not below what a default broker accepts (group.min.session.timeout.ms)
    assert 6000 <= section.session_timeout_ms <= 15_000
    assert section.heartbeat_interval_ms * 3 <= section.session_timeout_ms


@pytest.mark.parametrize(
    "args, fragments",
    [
        # a cluster shares streams through Kafka: none given
        (["--cluster", "site1", "--http", "127.0.0.1:0"], ["cluster 'site1' needs Kafka", "--kafka"]),
        # a cluster name Kafka could not use as a group and topic prefix
        (["--cluster", "site 1", "--kafka", "127.0.0.1:1"], ["--cluster site 1"]),
    ],
)
def test_serve_cluster_refusals(args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(run_vidrec("serve", *args, timeout=60), *fragments)
