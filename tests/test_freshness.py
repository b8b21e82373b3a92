"""The live-stream drop rules of the inference worker, checked with numbers (no processes, no frames)."""
from __future__ import annotations

import pytest

from workers.freshness import backlog_overflow, too_old


@pytest.mark.parametrize(
    ("live", "waiting", "live_backlog", "release"),
    [
        (True, 0, 2, 0),  # nothing waits: the new frame joins
        (True, 1, 2, 0),  # one waits, the new one makes two: within the backlog
        (True, 2, 2, 1),  # two wait: the oldest goes so that two (one old, the new) wait
        (True, 5, 2, 4),  # far behind: only the newest waiting frame stays besides the new one
        (True, 1, 1, 1),  # backlog 1: the new frame replaces the one waiting
        (True, 3, 1, 3),  # backlog 1: every waiting frame goes
        (True, 3, 8, 0),  # a generous backlog keeps them all
        (False, 50, 2, 0),  # a file stream loses nothing, however much waits
    ],
)
def test_backlog_overflow(live: bool, waiting: int, live_backlog: int, release: int) -> None:
    assert backlog_overflow(live=live, waiting=waiting, live_backlog=live_backlog) == release


@pytest.mark.parametrize(
    ("live", "capture_time", "batch_started", "live_max_age_s", "dropped"),
    [
        (True, 100.0, 100.5, 1.0, False),  # half a second old: recognised
        (True, 100.0, 101.0, 1.0, False),  # exactly the limit: still recognised
        (True, 100.0, 101.25, 1.0, True),  # past the limit: released
        (True, 100.0, 99.0, 1.0, False),  # a capture stamp ahead of the batch (clock step) is never too old
        (False, 100.0, 500.0, 1.0, False),  # a file stream's frames are never too old
    ],
)
def test_too_old(live: bool, capture_time: float, batch_started: float, live_max_age_s: float, dropped: bool) -> None:
    assert too_old(live=live, capture_time=capture_time, batch_started=batch_started,
                   live_max_age_s=live_max_age_s) is dropped
