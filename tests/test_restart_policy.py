"""The one restart policy of the worker processes (workers/children.py): the delay after a death and when to
give up, from the restarts in a row and how long the dead process ran."""
from __future__ import annotations

import pytest

from workers.children import INFERENCE_RESTARTS, INGEST_RESTARTS, GiveUp, Restart, RestartPolicy


@pytest.mark.parametrize(
    "policy, restarts, uptime_s, decision",
    [
        # the first death: the first delay
        (INGEST_RESTARTS, 0, 3.0, Restart(delay_s=1.0, streak=0)),
        # each quick death in a row doubles it
        (INGEST_RESTARTS, 1, 3.0, Restart(delay_s=2.0, streak=1)),
        (INGEST_RESTARTS, 3, 3.0, Restart(delay_s=8.0, streak=3)),
        # up to the longest delay
        (INGEST_RESTARTS, 5, 3.0, Restart(delay_s=30.0, streak=5)),
        (INGEST_RESTARTS, 40, 3.0, Restart(delay_s=30.0, streak=40)),
        # a process that ran over a minute starts a new streak: a new failure, not a crash loop
        (INGEST_RESTARTS, 7, 61.0, Restart(delay_s=1.0, streak=0)),
        # exactly the stable time is not yet stable
        (INGEST_RESTARTS, 2, 60.0, Restart(delay_s=4.0, streak=2)),
        # ingest is never given up, inference after 5 quick restarts in a row (its 6th quick death)
        (INFERENCE_RESTARTS, 4, 3.0, Restart(delay_s=16.0, streak=4)),
        (INFERENCE_RESTARTS, 5, 3.0, GiveUp(deaths=6)),
        # ... unless it had run long enough
        (INFERENCE_RESTARTS, 5, 120.0, Restart(delay_s=1.0, streak=0)),
        # other numbers, same rule
        (RestartPolicy(first_delay_s=0.5, max_delay_s=3.0, stable_after_s=10.0, max_streak=2), 2, 1.0, GiveUp(deaths=3)),
        (RestartPolicy(first_delay_s=0.5, max_delay_s=3.0, stable_after_s=10.0, max_streak=2), 1, 1.0,
         Restart(delay_s=1.0, streak=1)),
    ],
)
def test_after_death(policy: RestartPolicy, restarts: int, uptime_s: float, decision: Restart | GiveUp) -> None:
    assert policy.after_death(restarts, uptime_s) == decision
