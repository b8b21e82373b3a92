"""The stream registry (workers/registry.py): placement on the ingest processes, refusals, removal, states.
No process is started."""
from __future__ import annotations

import pytest

from stream.states import StreamKind, StreamState
from tests.worker_reports import plan
from workers.registry import StreamRegistry, place
from workers.service_errors import Conflict


@pytest.mark.parametrize(
    "loads, running, expected",
    [
        # the least loaded process
        ([2, 0, 1], [True, True, True], 1),
        # a tie: the first of them
        ([1, 1, 1], [True, True, True], 0),
        # a dead process waiting for its restart takes no new stream, however idle
        ([3, 0, 2], [True, False, True], 2),
        # none runs: the least loaded anyway (its restart will add the live ones)
        ([1, 0], [False, False], 1),
        # one process
        ([7], [True], 0),
        (pytest.param([0, 0], [True], None, id="mismatched lengths")),
    ],
)
def test_place(loads: list[int], running: list[bool], expected: int | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="one load and one running flag"):
            place(loads, running)
    else:
        assert place(loads, running) == expected


def test_streams_spread_over_the_processes_and_removal_frees_a_place() -> None:
    registry = StreamRegistry(ingest_processes=2, max_streams=3)
    up = [True, True]
    placed = [registry.add(plan(sid), running=up, first_index=0).ingest for sid in ("a", "b", "c")]
    assert placed == [0, 1, 0]
    assert registry.loads() == [2, 1]
    with pytest.raises(Conflict, match="max_streams=3"):
        registry.check_room("d")
    with pytest.raises(Conflict, match="'a' is already present"):
        registry.check_room("a")
    registry.get("a").removing = True
    with pytest.raises(Conflict, match="'a' is being removed"):
        registry.check_room("a")
    assert registry.drop("a") is not None and "a" not in registry
    registry.check_room("d")  # room again
    assert registry.add(plan("d"), running=up, first_index=0).ingest == 0  # loads were [1, 1]
    assert [entry.id for entry in registry.on_process(0)] == ["c", "d"]


def test_a_stream_added_again_starts_at_the_index_it_is_given() -> None:
    registry = StreamRegistry(ingest_processes=1, max_streams=4)
    registry.add(plan("cam"), running=[True], first_index=0)
    registry.drop("cam")
    entry = registry.add(plan("cam"), running=[True], first_index=120)
    assert (entry.first_index, entry.state, entry.removing) == (120, StreamState.STARTING, False)


def test_states_are_counted_and_a_reason_stays_until_replaced() -> None:
    registry = StreamRegistry(ingest_processes=1, max_streams=4)
    cam = registry.add(plan("cam"), running=[True], first_index=0)
    registry.add(plan("file", StreamKind.FILE), running=[True], first_index=0)
    cam.set_state(StreamState.RECONNECTING, "connection refused", at=5.0)
    cam.set_state(StreamState.RUNNING, None, at=6.0)
    assert (cam.state, cam.reason, cam.since) == (StreamState.RUNNING, "connection refused", 6.0)
    assert registry.state_counts() == {"live": 1, "starting": 1}
