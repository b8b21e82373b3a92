"""The recent-latency window: the last few hundred times of one kind, and their p50/p99/max.

Used wherever vidrec reports "how long, lately": a stream's result latency in the inference worker, and a
sink's publish time. Percentiles are nearest-rank over the sorted window (``values[int(n * q)]``, clamped to
the last value), so every reported number is one that was observed. Not thread-safe: callers that add from
one thread and read from another hold their own lock around both.
"""
from __future__ import annotations

from collections import deque
from typing import Sequence

WINDOW_SIZE = 512  # recent values kept: enough for a stable p99, small enough to sort at every report


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The value at quantile ``q`` (0..1) of ``sorted_values`` (ascending, not empty), by nearest rank."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within 0..1, got {q}")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


class LatencyWindow:
    """The last ``size`` values added (milliseconds, by convention); older ones fall out."""

    def __init__(self, size: int = WINDOW_SIZE) -> None:
        if size < 1:
            raise ValueError(f"LatencyWindow size must be >= 1, got {size}")
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self._values.append(value)

    def __len__(self) -> int:
        return len(self._values)

    def summary(self) -> dict[str, float]:
        """``{"p50", "p99", "max"}`` of the window; empty when nothing was added yet."""
        if not self._values:
            return {}
        values = sorted(self._values)
        return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99), "max": values[-1]}
