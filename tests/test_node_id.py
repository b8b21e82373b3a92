"""workers/node_id.py: a node's id, configured or made from the host name and the HTTP port (or the pid)."""
from __future__ import annotations

import pytest

from workers.node_id import node_id


@pytest.mark.parametrize(
    ("configured", "http_port", "host", "pid", "expected"),
    [
        # Cluster.node set: used as given
        ("edge-1", 8080, "box", 7, "edge-1"),
        # the host name and the HTTP port: two nodes on one machine differ by their ports
        (None, 8080, "box", 7, "box:8080"),
        # no HTTP API: the process id instead
        (None, None, "box", 7, "box:7"),
        # characters a node id may not hold (Prometheus label values take any, ids in URLs should not) become -
        (None, 8081, "my box/1", 7, "my-box-1:8081"),
        # an empty host name still gives an id
        (None, 8082, "", 7, "node:8082"),
    ],
)
def test_node_id(configured: str | None, http_port: int | None, host: str, pid: int, expected: str) -> None:
    assert node_id(configured, http_port, host=host, pid=pid) == expected
