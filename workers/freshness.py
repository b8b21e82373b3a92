"""What the inference worker drops of a live stream so that its results stay fresh: pure rules, in numbers.

A live camera is only worth its newest frames: when inference falls behind, waiting longer makes every later
result later too. Two rules keep it current (file streams lose nothing, so both say "keep" for them):

- ``backlog_overflow``: before one more frame of a live stream joins the batcher, how many of its oldest
  waiting frames to release, so that at most ``live_backlog`` wait (counted ``dropped_backlog``).
- ``too_old``: when a batch starts, whether a live frame captured more than ``live_max_age_s`` ago is released
  instead of recognised (counted ``dropped_too_old``).
"""
from __future__ import annotations


def backlog_overflow(*, live: bool, waiting: int, live_backlog: int) -> int:
    """How many of the ``waiting`` frames (oldest first) to release before one more joins them."""
    if not live:
        return 0
    return min(waiting, max(0, waiting + 1 - live_backlog))


def too_old(*, live: bool, capture_time: float, batch_started: float, live_max_age_s: float) -> bool:
    """Whether a frame captured at ``capture_time`` is too old to recognise in a batch started at ``batch_started``
    (both wall-clock seconds)."""
    return live and batch_started - capture_time > live_max_age_s
