"""What the service benchmarks share: a free loopback port for the service, its JSON API, and the numbers they
read off it (percentiles of latencies, a stream's dropped frames from ``GET /streams`` counters)."""
from __future__ import annotations

import json
import socket
import urllib.request
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank on the sorted values); NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100.0 * (len(ordered) - 1))))]


def dropped(counters: dict) -> int:
    """Frames a stream lost on the way to the models: every drop reason of its ``GET /streams`` counters."""
    return (counters["dropped_source"] + sum(counters["dropped_ring"].values()) + counters["dropped_backlog"]
            + counters["dropped_too_old"])
