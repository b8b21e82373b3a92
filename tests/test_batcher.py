"""Cross-stream batching rules, driven by a fake clock: what waits, least recently served, shares, max wait, order.

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


def camera(item: Item) -> bool:
    """Streams F and G are files; every other letter is a live camera."""
    return item.stream_id not in "FG"


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
    # Batch what is waiting: with max_wait_s 0 a lone item leaves as soon as the loop asks.
    ("lone_item_leaves_at_once", dict(max_batch=4), [
        ("add", 1.0, "A0"), ("deadline", 1.0, 1.0), ("next", 1.0, "A0"), ("deadline", 1.0, math.inf),
        ("next", 1.0, None),
    ]),
    # Batch what is waiting: what arrived while the models were busy is the next batch, not a wait for a full one.
    ("what_arrived_meanwhile", dict(max_batch=4), [
        ("add", 0.0, "A0"), ("next", 0.0, "A0"), ("add", 0.03, "B0"), ("add", 0.05, "A1"),
        ("next", 0.08, "B0 A1"),
    ]),
    # Batch what is waiting: more than max_batch leaves as back-to-back batches.
    ("overflow_splits", dict(max_batch=2), [
        ("add", 0.0, "A0 A1 A2"), ("next", 0.0, "A0 A1"), ("next", 0.0, "A2"), ("next", 0.0, None),
    ]),
    # Least recently served: a file always waiting is served after the cameras that waited since their turn.
    ("file_after_waiting_cameras", dict(max_batch=2), [
        ("add", 0.0, "F0 F1 F2 F3 F4 F5"), ("next", 0.0, "F0 F1"), ("add", 0.01, "A0 B0"),
        ("next", 0.02, "A0 B0"), ("next", 0.05, "F2 F3"), ("add", 0.06, "A1"), ("next", 0.07, "A1 F4"),
    ]),
    # Least recently served: more streams than max_batch take turns; none waits more than ceil(3 / 2) batches.
    ("streams_take_turns", dict(max_batch=2, per_stream_max=1), [
        ("add", 0.0, "A0 A1 A2 B0 B1 B2 C0 C1 C2"), ("next", 0.0, "A0 B0"), ("next", 0.0, "C0 A1"),
        ("next", 0.0, "B1 A2"), ("next", 0.0, "C1 B2"), ("next", 0.0, "C2"),
    ]),
    # Least recently served: never-served streams first, in the order of their oldest item.
    ("new_streams_by_oldest_item", dict(max_batch=2, per_stream_max=1), [
        ("add", 0.0, "A0 A1"), ("next", 0.0, "A0"), ("add", 0.02, "C0"), ("add", 0.01, "B0"),
        ("next", 0.03, "B0 C0"), ("next", 0.03, "A1"),
    ]),
    # Live first: a file's frames wait while a camera's frame waits, and run as soon as none does.
    ("file_waits_for_cameras", dict(max_batch=4, per_stream_max=1, live=camera), [
        ("add", 0.0, "F0 F1 F2"), ("next", 0.0, "F0"), ("add", 0.01, "A0 B0"), ("next", 0.02, "A0 B0"),
        ("next", 0.05, "F1"), ("add", 0.06, "A1"), ("next", 0.07, "A1"), ("next", 0.09, "F2"),
    ]),
    # Live first: files among themselves take turns, least recently served first.
    ("files_take_turns", dict(max_batch=1, live=camera), [
        ("add", 0.0, "F0 F1 G0 G1"), ("next", 0.0, "F0"), ("next", 0.0, "G0"), ("next", 0.0, "F1"),
        ("next", 0.0, "G1"),
    ]),
    # No starvation: a file passed over max_skips (2) batches in a row goes first, then waits its turn again.
    ("busy_cameras_do_not_starve_a_file", dict(max_batch=1, max_skips=2, live=camera), [
        ("add", 0.0, "F0 F1 A0 A1 A2 A3 A4 A5"), ("next", 0.0, "A0"), ("next", 0.0, "A1"), ("next", 0.0, "F0"),
        ("next", 0.0, "A2"), ("next", 0.0, "A3"), ("next", 0.0, "F1"), ("next", 0.0, "A4"),
    ]),
    # No starvation: an overdue file joins the cameras' batch when there is room, first.
    ("overdue_file_joins_live_batch", dict(max_batch=3, per_stream_max=1, max_skips=1, live=camera), [
        ("add", 0.0, "F0 F1 A0 A1"), ("next", 0.0, "A0"), ("add", 0.01, "B0"), ("next", 0.01, "F0 B0 A1"),
    ]),
    # Shares: without a cap a stream fills the spare room round by round, after one item of every stream.
    ("spare_room_round_robin", dict(max_batch=4), [
        ("add", 0.0, "A0 A1 A2 A3 A4"), ("add", 0.001, "B0"), ("add", 0.002, "C0"),
        ("next", 0.002, "A0 B0 C0 A1"), ("next", 0.002, "A2 A3 A4"),
    ]),
    # Max wait (accelerators): a batch closes the moment it can be full...
    ("full_batch_closes_at_once", dict(max_batch=3, max_wait_s=0.01), [
        ("add", 0.0, "A0 A1"), ("next", 0.0, None), ("deadline", 0.0, 0.01),
        ("add", 0.001, "B0"), ("next", 0.001, "A0 B0 A1"), ("next", 0.001, None), ("deadline", 0.001, math.inf),
    ]),
    # ...or when its oldest item has waited max_wait_s, not before.
    ("max_wait_from_oldest", dict(max_batch=8, max_wait_s=0.01), [
        ("add", 0.0, "A0"), ("next", 0.0099, None), ("add", 0.005, "B0"), ("deadline", 0.005, 0.01),
        ("next", 0.01, "A0 B0"),
    ]),
    # Max wait: the timer is the oldest item's, so a late camera does not hold the others back.
    ("late_camera_does_not_hold", dict(max_batch=3, max_wait_s=0.02), [
        ("add", 0.0, "A0"), ("add", 0.015, "B0"), ("next", 0.019, None), ("next", 0.02, "A0 B0"),
        ("add", 0.03, "C0"), ("next", 0.049, None), ("next", 0.05, "C0"),
    ]),
    # Max wait: a batch that per_stream_max keeps from filling waits out max_wait_s.
    ("capped_batch_waits", dict(max_batch=4, max_wait_s=0.01, per_stream_max=1), [
        ("add", 0.0, "A0 A1 A2 A3"), ("add", 0.0, "B0 B1"), ("next", 0.0, None), ("deadline", 0.0, 0.01),
        ("add", 0.001, "C0 D0"), ("next", 0.001, "A0 B0 C0 D0"), ("next", 0.002, None), ("next", 0.01, "A1 B1"),
    ]),
    # Per-stream order: an out-of-order arrival time is clamped, never reordered.
    ("stream_order_kept", dict(max_batch=3), [
        ("add", 0.005, "A0"), ("add", 0.001, "A1"), ("add", 0.002, "B0"), ("next", 0.006, "B0 A0 A1"),
    ]),
]


@pytest.mark.parametrize("name, params, script", CASES, ids=[case[0] for case in CASES])
def test_batching_rules(name: str, params: dict, script: list[tuple]) -> None:
    clock = FakeClock()
    run_script(Batcher(**params, clock=clock), clock, script)


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(max_batch=0), "max_batch"),  # empty batches
        (dict(max_batch=2.0), "max_batch"),  # not an int
        (dict(max_batch=2, max_wait_s=-1.0), "max_wait_s"),  # negative wait
        (dict(max_batch=2, max_wait_s=float("nan")), "max_wait_s"),  # NaN wait
        (dict(max_batch=2, per_stream_max=0), "per_stream_max"),  # no share
        (dict(max_batch=2, per_stream_max=1.0), "per_stream_max"),  # not an int
        (dict(max_batch=2, max_skips=-1), "max_skips"),  # a negative bound
    ],
)
def test_bad_parameters(params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Batcher(**params)


def test_deadline_says_when_to_ask() -> None:
    clock = FakeClock()
    batcher: Batcher[Item] = Batcher(max_batch=4, max_wait_s=0.01, clock=clock)
    assert batcher.deadline() == math.inf
    clock.now = 2.0
    batcher.add(Item("A", 0))
    assert batcher.deadline() == pytest.approx(2.01)
    assert batcher.next_batch(now=2.0099) is None
    assert [str(i) for i in batcher.next_batch(now=batcher.deadline())] == ["A0"]
    assert len(batcher) == 0


def test_drop_oldest_drain_and_remove_stream() -> None:
    batcher: Batcher[Item] = Batcher(max_batch=8, per_stream_max=1, clock=lambda: 0.0)
    for item in items("A0 B0 A1 C0 B1 A2 D0"):
        batcher.add(item)
    assert [str(i) for i in batcher.next_batch()] == ["A0", "B0", "C0", "D0"]
    assert [str(i) for i in batcher.drop_oldest("A", 1)] == ["A1"]  # a live backlog overflowed
    assert [str(i) for i in batcher.drop_oldest("D", 3)] == [] and batcher.pending("A") == 1
    assert [str(i) for i in batcher.remove_stream("B")] == ["B1"]
    assert batcher.pending("B") == 0 and len(batcher) == 1
    batcher.add(Item("C", 1))
    assert [str(i) for i in batcher.drain()] == ["A2", "C1"]
    assert len(batcher) == 0 and batcher.next_batch(now=10.0) is None


def test_turns_survive_a_dropped_backlog_and_end_with_the_stream() -> None:
    batcher: Batcher[Item] = Batcher(max_batch=1, clock=lambda: 0.0)
    for item in items("A0 B0 A1 A2"):
        batcher.add(item)
    assert [str(i) for i in batcher.next_batch()] == ["A0"]
    batcher.drop_oldest("A", 1)  # A keeps its turn: B, never served, still goes first
    assert [str(i) for i in batcher.next_batch()] == ["B0"]
    batcher.remove_stream("A")  # A's source ended: a new A is a new stream, served before B
    batcher.add(Item("B", 1))
    batcher.add(Item("A", 0))
    assert [str(i) for i in batcher.next_batch()] == ["A0"]


def test_a_file_beside_two_cameras_does_not_delay_them() -> None:
    """Two 15 fps cameras and a file whose ring always has 4 frames ready, served by a loop that spends 20 ms
    per frame of a batch (as the service runs: per_stream_max 1, live streams first): every camera frame leaves
    in the first batch that starts after it arrived, and the file gets the time the cameras leave (nothing lost)."""
    clock = FakeClock()
    batcher: Batcher[Item] = Batcher(max_batch=4, per_stream_max=1, live=camera, clock=clock)
    cameras = sorted((k / 15 + offset, Item(name, k)) for name, offset in (("A", 0.0), ("B", 0.031))
                     for k in range(45))
    file_next = 0
    out: dict[str, list[int]] = {"A": [], "B": [], "F": []}
    pos = 0
    while clock.now < 3.0:
        while batcher.pending("F") < 4:  # the file's ingest fills every free slot of its ring at once
            batcher.add(Item("F", file_next))
            file_next += 1
        while pos < len(cameras) and cameras[pos][0] <= clock.now:
            batcher.add(cameras[pos][1])
            pos += 1
        batch = batcher.next_batch()
        assert batch is not None  # the file always waits
        for item in batch:
            out[item.stream_id].append(item.index)
        assert batcher.pending("A") == batcher.pending("B") == 0, f"a camera frame left waiting at t={clock.now}"
        clock.now += 0.020 * len(batch)
    for stream, indices in out.items():
        assert indices == list(range(len(indices))), stream
    # 30 camera frames/s take 0.6 s of every second: the file gets the other 0.4 s, 20 frames/s.
    assert len(out["A"]) >= 44 and len(out["B"]) >= 44 and len(out["F"]) >= 55


@pytest.mark.parametrize("per_stream_max, max_wait_s", [
    (None, 0.0),  # the room of a batch goes round by round
    (1, 0.0),  # the service's setting: one frame per stream per batch
    (3, 0.010),  # a cap and a wait to fill (an accelerator's setting)
])
def test_every_item_leaves_once_in_stream_order_and_in_its_turn(per_stream_max: int | None, max_wait_s: float) -> None:
    """Random arrivals of three cameras and two bursty files served as the worker loop would: a batch when one
    is due, 20 ms of work per frame in it. Every item leaves exactly once, in order per stream, and no stream
    with items waiting is passed over by more than max_skips (1) + 2 batches in a row: once overdue, the five
    streams at most are served two per batch."""
    rng = random.Random(7)
    clock = FakeClock()
    batcher: Batcher[Item] = Batcher(max_batch=2, max_wait_s=max_wait_s, per_stream_max=per_stream_max,
                                     live=lambda item: item.stream_id in "ABC", clock=clock)
    arrivals: list[tuple[float, Item]] = []
    for stream, period, burst in [("A", 0.040, 1), ("B", 0.040, 1), ("C", 0.033, 1), ("D", 0.100, 12), ("E", 0.200, 20)]:
        t, index = rng.uniform(0, period), 0
        while t < 2.0:
            for _ in range(burst):
                arrivals.append((t, Item(stream, index)))
                index += 1
            t += period
    arrivals.sort(key=lambda a: a[0])
    out: dict[str, list[int]] = {}
    passed_over: dict[str, int] = {}  # batches since the stream, waiting, last got an item
    worst = 0
    left = 0
    pos = 0
    while pos < len(arrivals) or len(batcher):
        next_arrival = arrivals[pos][0] if pos < len(arrivals) else math.inf
        clock.now = max(clock.now, min(next_arrival, batcher.deadline()))
        while pos < len(arrivals) and arrivals[pos][0] <= clock.now:
            batcher.add(arrivals[pos][1])
            pos += 1
        batch = batcher.next_batch()
        if batch is None:
            continue
        assert 1 <= len(batch) <= 2
        served = {item.stream_id for item in batch}
        for stream in "ABCDE":
            passed_over[stream] = 0 if stream in served or not batcher.pending(stream) else passed_over.get(stream, 0) + 1
            worst = max(worst, passed_over[stream])
        for item in batch:
            out.setdefault(item.stream_id, []).append(item.index)
            left += 1
        clock.now += 0.020 * len(batch)
    assert left == len(arrivals)
    for stream, indices in out.items():
        assert indices == list(range(len(indices))), stream
    assert 1 <= worst <= 1 + 2  # the files were passed over (the cameras keep the loop busy), never for longer
