"""The latency window: nearest-rank percentiles of the most recent values, checked with numbers."""
from __future__ import annotations

import pytest

from stream.latency import LatencyWindow, percentile


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([7.0], 0.5, 7.0),  # one value is every percentile
        ([7.0], 0.99, 7.0),
        ([1.0, 2.0], 0.5, 2.0),  # an even count takes the upper middle (index n // 2)
        ([1.0, 2.0, 3.0], 0.5, 2.0),  # an odd count takes the middle
        ([float(v) for v in range(100)], 0.99, 99.0),  # int(100 * 0.99) = 99: the last
        ([float(v) for v in range(200)], 0.99, 198.0),  # int(200 * 0.99) = 198: one below the max
        ([1.0, 2.0, 3.0], 1.0, 3.0),  # q = 1 is clamped to the last value, never past the end
        ([1.0, 2.0, 3.0], 0.0, 1.0),  # q = 0 is the smallest
    ],
)
def test_percentile_is_the_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == expected


@pytest.mark.parametrize(
    ("values", "q", "error"),
    [
        ([], 0.5, "no values"),  # nothing to take a percentile of
        ([1.0], 1.5, "within 0..1"),  # a quantile is a fraction
        ([1.0], -0.1, "within 0..1"),
    ],
)
def test_percentile_refuses_what_has_no_answer(values: list[float], q: float, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        percentile(values, q)


@pytest.mark.parametrize(
    ("size", "added", "expected"),
    [
        (4, [], {}),  # nothing yet: nothing to report
        (4, [3.0, 1.0, 2.0], {"p50": 2.0, "p99": 3.0, "max": 3.0}),  # sorted before ranking
        (4, [100.0, 1.0, 2.0, 3.0, 4.0], {"p50": 3.0, "p99": 4.0, "max": 4.0}),  # the oldest (100) fell out
        (1, [5.0, 9.0], {"p50": 9.0, "p99": 9.0, "max": 9.0}),  # a window of one holds the newest
    ],
)
def test_window_keeps_the_newest_values(size: int, added: list[float], expected: dict[str, float]) -> None:
    window = LatencyWindow(size)
    for value in added:
        window.add(value)
    assert window.summary() == expected
    assert len(window) == min(size, len(added))


def test_window_size_must_hold_a_value() -> None:
    with pytest.raises(ValueError, match="size must be >= 1"):
        LatencyWindow(0)
