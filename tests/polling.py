"""Wait for a condition another thread or process makes true: poll with a deadline, fail naming what."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, *, every_s: float = 0.02) -> Any:
    """Poll until ``condition()`` is truthy and return it; fail naming ``what`` at the deadline (a bound, not a timing claim)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s:g}s")
        time.sleep(every_s)
