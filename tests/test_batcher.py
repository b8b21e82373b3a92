"""Cross-stream batching rules, driven by a fake clock: max size, max wait, staleness, fairness, order.

Each case is a script of steps at given times: ``add`` items (``"A0 A1 B0"`` = stream A frames 0 and
1, stream B frame 0), expect ``next`` to return a batch (same notation) or None, expect ``deadline``.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest

from workers.batcher import Batcher


@dataclass(frozen=True)
class Item:
    stream_id: str
    index: int

    def __str__(self) -> str:
        return f"{self.stream_id}{self.index}"


def items(spec: str) -> list[Item]:
    return [Item(token[0], int(token[1:])) for token in spec.split()]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_script(batcher: Batcher[Item], clock: FakeClock, script: list[tuple]) -> None:
    for step_no, (op, t, *arg) in enumerate(script):
        clock.now = t
        if op == "add":
            for item in items(arg[0]):
                batcher.add(item)
        elif op == "next":
            got = batcher.next_batch()
            shown = None if got is None else " ".join(map(str, got))
            assert shown == arg[0], f"step {step_no} at t={t}: next_batch -> {shown!r}, expected {arg[0]!r}"
        elif op == "deadline":
            got = batcher.deadline()
            assert got == pytest.approx(arg[0]), f"step {step_no} at t={t}: deadline -> {got}, expected {arg[0]}"
        else:  # pragma: no cover - a typo in a script
            raise AssertionError(f"unknown step {op!r}")


CASES = [
    # Max size: a batch closes the moment it can be full, round-robin across streams.
    ("full_batch_closes_at_once", dict(max_batch=3, max_wait_s=0.01, staleness_s=0.05), [
        ("add", 0.0, "A0 A1"), ("next", 0.0, None), ("deadline", 0.0, 0.01),
        ("add", 0.001, "B0"), ("next", 0.001, "A0 B0 A1"), ("next", 0.001, None), ("deadline", 0.001, math.inf),
    ]),
    # Max size: more than one batch's worth leaves as back-to-back batches, the rest waits its turn.
    ("overflow_splits", dict(max_batch=2, max_wait_s=0.01, staleness_s=0.05), [
        ("add", 0.0, "A0 A1 A2"), ("next", 0.0, "A0 A1"), ("next", 0.0, None), ("deadline", 0.0, 0.01),
        ("next", 0.01, "A2"),
    ]),
    # Max wait: a lone item leaves when it has waited max_wait_s, not before.
    ("max_wait_from_oldest", dict(max_batch=8, max_wait_s=0.01, staleness_s=0.05), [
        ("add", 0.0, "A0"), ("next", 0.0099, None), ("add", 0.005, "B0"), ("deadline", 0.005, 0.01),
        ("next", 0.01, "A0 B0"),
    ]),
    # Max wait: the timer is the oldest item's, so a late camera does not hold the others back.
    ("late_camera_does_not_hold", dict(max_batch=3, max_wait_s=0.02, staleness_s=0.02), [
        ("add", 0.0, "A0"), ("add", 0.015, "B0"), ("next", 0.019, None), ("next", 0.02, "A0 B0"),
        ("add", 0.03, "C0"), ("next", 0.049, None), ("next", 0.05, "C0"),
    ]),
    # Max wait 0: every item leaves as soon as it is asked for.
    ("zero_wait", dict(max_batch=4, max_wait_s=0.0, staleness_s=0.0), [
        ("add", 1.0, "A0 B0"), ("deadline", 1.0, 1.0), ("next", 1.0, "A0 B0"),
    ]),
    # Fairness: a burst of A fills spare room but B and C, waiting, each get their turn in the first batch.
    ("bursty_stream_round_robin", dict(max_batch=4, max_wait_s=0.01, staleness_s=0.05), [
        ("add", 0.0, "A0 A1 A2 A3 A4 A5 A6 A7"), ("add", 0.001, "B0"), ("add", 0.002, "C0"),
        ("next", 0.002, "A0 B0 C0 A1"), ("next", 0.002, "A2 A3 A4 A5"), ("next", 0.002, None),
        ("add", 0.003, "B1"), ("next", 0.01, "A6 B1 A7"),
    ]),
    # Fairness: per_stream_max caps one stream's share; a batch that cannot fill then waits max_wait_s.
    ("per_stream_cap", dict(max_batch=4, max_wait_s=0.01, staleness_s=0.05, per_stream_max=1), [
        ("add", 0.0, "A0 A1 A2 A3"), ("add", 0.0, "B0 B1"), ("next", 0.0, None), ("deadline", 0.0, 0.01),
        ("add", 0.001, "C0 D0"), ("next", 0.001, "A0 B0 C0 D0"), ("next", 0.002, None), ("next", 0.01, "A1 B1"),
    ]),
    # Staleness: items that waited staleness_s go first, before round-robin picks of younger streams.
    ("stale_items_first", dict(max_batch=2, max_wait_s=0.01, staleness_s=0.03), [
        ("add", 0.0, "A0 A1 A2 A3"), ("add", 0.02, "B0 C0"), ("next", 0.02, "A0 B0"),
        ("next", 0.035, "A1 A2"), ("next", 0.035, "A3 C0"),
    ]),
    # Staleness: an overdue item ignores per_stream_max (it is never held back to be fair to others).
    ("stale_items_ignore_cap", dict(max_batch=4, max_wait_s=0.01, staleness_s=0.02, per_stream_max=1), [
        ("add", 0.0, "A0 A1 A2"), ("add", 0.015, "B0"), ("next", 0.02, "A0 A1 A2 B0"),
    ]),
    # Per-stream order: an out-of-order arrival time is clamped, never reordered.
    ("stream_order_kept", dict(max_batch=3, max_wait_s=0.01, staleness_s=0.05), [
        ("add", 0.005, "A0"), ("add", 0.001, "A1"), ("add", 0.002, "B0"), ("next", 0.002, "B0 A0 A1"),
    ]),
]


@pytest.mark.parametrize("name, params, script", CASES, ids=[case[0] for case in CASES])
def test_batching_rules(name: str, params: dict, script: list[tuple]) -> None:
    clock = FakeClock()
    run_script(Batcher(**params, clock=clock), clock, script)


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(max_batch=0, max_wait_s=0.01, staleness_s=0.05), "max_batch"),  # empty batches
        (dict(max_batch=2.0, max_wait_s=0.01, staleness_s=0.05), "max_batch"),  # not an int
        (dict(max_batch=2, max_wait_s=-1.0, staleness_s=0.05), "max_wait_s"),  # negative wait
        (dict(max_batch=2, max_wait_s=float("nan"), staleness_s=0.05), "max_wait_s"),  # NaN wait
        (dict(max_batch=2, max_wait_s=0.05, staleness_s=0.01), "staleness_s"),  # bound below the wait
        (dict(max_batch=2, max_wait_s=0.01, staleness_s=0.05, per_stream_max=0), "per_stream_max"),  # no share
    ],
)
def test_bad_parameters(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Batcher(**params)


def test_deadline_says_when_to_ask() -> None:
    clock = FakeClock()
    batcher: Batcher[Item] = Batcher(max_batch=4, max_wait_s=0.01, staleness_s=0.05, clock=clock)
    assert batcher.deadline() == math.inf
    clock.now = 2.0
    batcher.add(Item("A", 0))
    assert batcher.deadline() == pytest.approx(2.01)
    assert batcher.next_batch(now=2.0099) is None
    assert [str(i) for i in batcher.next_batch(now=batcher.deadline())] == ["A0"]
    assert len(batcher) == 0


def test_drain_and_remove_stream() -> None:
    batcher: Batcher[Item] = Batcher(max_batch=8, max_wait_s=1.0, staleness_s=1.0, clock=lambda: 0.0)
    for item in items("A0 B0 A1 C0 B1 A2"):
        batcher.add(item)
    assert [str(i) for i in batcher.remove_stream("B")] == ["B0", "B1"]
    assert batcher.pending("B") == 0 and len(batcher) == 4
    assert [str(i) for i in batcher.drain()] == ["A0", "A1", "C0", "A2"]
    assert len(batcher) == 0 and batcher.next_batch(now=10.0) is None


@pytest.mark.parametrize("per_stream_max", [None, 1, 3])
def test_every_item_leaves_once_in_stream_order_and_within_staleness(per_stream_max: int | None) -> None:
    """Random arrivals of five cameras (two bursty) served as the worker loop would: ask at
    ``deadline`` or on arrival. Every item leaves exactly once, in order per stream, and no item
    waits past the staleness bound while the loop keeps up."""
    rng = random.Random(7)
    clock = FakeClock()
    batcher: Batcher[Item] = Batcher(
        max_batch=6, max_wait_s=0.010, staleness_s=0.030, per_stream_max=per_stream_max, clock=clock
    )
    arrivals: list[tuple[float, Item]] = []
    for stream, period, burst in [("A", 0.040, 1), ("B", 0.040, 1), ("C", 0.033, 1), ("D", 0.100, 12), ("E", 0.200, 20)]:
        t, index = rng.uniform(0, period), 0
        while t < 2.0:
            for _ in range(burst):
                arrivals.append((t, Item(stream, index)))
                index += 1
            t += period
    arrivals.sort(key=lambda a: a[0])
    added_at: dict[Item, float] = {}
    out: dict[str, list[int]] = {}
    worst_wait = 0.0
    pos = 0
    while pos < len(arrivals) or len(batcher):
        next_arrival = arrivals[pos][0] if pos < len(arrivals) else math.inf
        clock.now = max(clock.now, min(next_arrival, batcher.deadline()))
        while pos < len(arrivals) and arrivals[pos][0] <= clock.now:
            batcher.add(arrivals[pos][1])
            added_at[arrivals[pos][1]] = clock.now
            pos += 1
        while (batch := batcher.next_batch()) is not None:
            assert 1 <= len(batch) <= 6
            for item in batch:
                out.setdefault(item.stream_id, []).append(item.index)
                worst_wait = max(worst_wait, clock.now - added_at.pop(item))
    assert not added_at
    for stream, indices in out.items():
        assert indices == sorted(indices) == list(range(len(indices))), stream
    assert worst_wait <= 0.030 + 1e-9
