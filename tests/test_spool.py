"""The sink spool with numbers: order through memory and disk, bounds, what is dropped and counted, and
results that are being delivered are never the ones dropped."""
from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from stream.messages import FrameResult, ObjectResult
from stream.sinks.spool import Spool


def result(i: int, stream: str = "cam") -> FrameResult:
    return FrameResult(stream, i, i / 25.0, 1000.0 + i, 640, 360, {"total": 12.5, "detect": 3.25},
                       (ObjectResult((1.5, 2.25, 30.0, 40.0), 0.9, "person", "alice", 0.8125),), gallery_version=2,
                       stream_state="live", seq=i, run_id="r1")


def indices(items: list[FrameResult]) -> list[int]:
    return [r.frame_index for r in items]


def drain_in_batches(spool: Spool, batch: int) -> list[FrameResult]:
    out: list[FrameResult] = []
    while True:
        items = spool.peek(batch)
        if not items:
            return out
        out += items
        spool.pop(len(items))


def test_memory_only_keeps_order_and_drops_the_oldest_when_full() -> None:
    spool = Spool(memory_max=3)
    for i in range(3):
        assert not spool.put(result(i))
    assert spool.put(result(3)) == {"cam": 1}
    assert spool.depth() == {"memory": 3, "disk": 0}
    assert indices(drain_in_batches(spool, 2)) == [1, 2, 3]
    assert spool.dropped == {"cam": 1}


def test_results_being_delivered_are_not_the_ones_dropped() -> None:
    spool = Spool(memory_max=3)
    for i in range(3):
        spool.put(result(i))
    assert indices(spool.peek(2)) == [0, 1]  # on their way to the broker
    assert spool.put(result(3)) == {"cam": 1}  # drops 2, the oldest not in flight
    spool.pop(2)
    assert indices(drain_in_batches(spool, 5)) == [3]
    spool.put(result(4))
    spool.put(result(5))
    spool.put(result(6))
    assert indices(spool.peek(3)) == [4, 5, 6]
    assert spool.put(result(7)) == {"cam": 1}, "all in flight: the new one has no room"
    with pytest.raises(ValueError, match="more than"):
        spool.pop(4)


def test_overflow_goes_to_disk_and_comes_back_in_order_byte_identical(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool = Spool(memory_max=4, directory=directory, disk_max_bytes=64 * 1024, segment_bytes=1024)
    sent = [result(i, "a" if i % 3 else "b") for i in range(40)]
    for r in sent:
        assert not spool.put(r)
    depth = spool.depth()
    assert depth == {"memory": 4, "disk": 36}
    segments = sorted(directory.glob("segment-*.jsonl"))
    assert len(segments) > 3, "1 KiB segments: several files"
    assert all(p.stat().st_size <= 1024 for p in segments)
    got = drain_in_batches(spool, 3)
    assert [r.to_json() for r in got] == [r.to_json() for r in sent]
    assert len(spool) == 0 and not list(directory.glob("segment-*.jsonl")), "read segments are deleted"
    spool.put(result(99))  # after the disk emptied, memory again
    assert spool.depth() == {"memory": 1, "disk": 0}


def test_new_results_queue_behind_the_disk_even_when_memory_has_room(tmp_path: Path) -> None:
    spool = Spool(memory_max=2, directory=tmp_path, disk_max_bytes=64 * 1024, segment_bytes=4096)
    for i in range(5):
        spool.put(result(i))
    assert indices(spool.peek(1)) == [0]
    spool.pop(1)  # memory: 1 left + refilled from disk
    spool.put(result(5))
    assert indices(drain_in_batches(spool, 10)) == [1, 2, 3, 4, 5]


def test_disk_bound_drops_the_oldest_segment_and_counts_it_per_stream(tmp_path: Path) -> None:
    per_segment = 3
    total = 2 + 6 * per_segment
    # Segments of three lines and a disk of three segments, whatever a result's size (lines differ by a few
    # digits, far less than a quarter, so a fourth line or a fourth segment never fits).
    segment_bytes = per_segment * max(len(result(i, "a").to_json()) + 1 for i in range(total))
    spool = Spool(memory_max=2, directory=tmp_path, disk_max_bytes=3 * segment_bytes, segment_bytes=segment_bytes)
    dropped_total = 0
    for i in range(total):
        dropped_total += sum(spool.put(result(i, "a" if i % 2 else "b")).values())
    assert spool.disk_bytes() <= 3 * segment_bytes
    assert dropped_total == 3 * per_segment, "three whole segments went"
    assert sum(spool.dropped.values()) == dropped_total
    assert spool.dropped["a"] + spool.dropped["b"] == dropped_total and spool.dropped["a"] > 0 and spool.dropped["b"] > 0
    got = indices(drain_in_batches(spool, 7))
    assert got[:2] == [0, 1], "memory (the head) is kept"
    assert got[2:] == list(range(2 + 3 * per_segment, total)), "then the newest segments, in order"


def test_directory_is_emptied_at_open_and_close(tmp_path: Path) -> None:
    (tmp_path / "segment-00000007.jsonl").write_text("left over\n")
    spool = Spool(memory_max=1, directory=tmp_path / "", disk_max_bytes=8192, segment_bytes=4096)
    assert not (tmp_path / "segment-00000007.jsonl").exists()
    spool.put(result(0))
    spool.put(result(1))
    assert list(tmp_path.glob("segment-*.jsonl"))
    assert indices(spool.drain()) == [0, 1]
    spool.put(result(2))
    spool.put(result(3))
    spool.close()
    assert not tmp_path.exists() or not list(tmp_path.glob("segment-*.jsonl"))


def test_bad_bounds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="memory_max"):
        Spool(memory_max=0)
    with pytest.raises(ValueError, match="at least one segment"):
        Spool(memory_max=1, directory=tmp_path, disk_max_bytes=10, segment_bytes=1024)


def _spool_and_die(directory: Path, n: int) -> None:
    """In a child process: spool ``n`` results, then die without closing anything (as SIGKILL would)."""
    spool = Spool(memory_max=2, directory=directory, disk_max_bytes=64 * 1024, segment_bytes=1024)
    for i in range(n):
        spool.put(result(i, "a" if i % 2 else "b"))
    os._exit(0)


def spooled_by_a_dead_process(directory: Path, n: int) -> None:
    child = multiprocessing.get_context("fork").Process(target=_spool_and_die, args=(directory, n))
    child.start()
    child.join(30)
    assert child.exitcode == 0


def test_a_dead_predecessors_segments_come_first_and_a_torn_line_is_cut(tmp_path: Path) -> None:
    # The worker dies: its memory part (0, 1) is gone, its segments stay; the last line is half written.
    spooled_by_a_dead_process(tmp_path / "old", 12)
    newest = sorted((tmp_path / "old").glob("segment-*.jsonl"))[-1]
    with newest.open("ab") as f:
        f.write(result(12).to_json().encode()[:40])
    new = Spool(memory_max=2, directory=tmp_path / "new", disk_max_bytes=64 * 1024, segment_bytes=1024,
                adopt=[tmp_path / "old"])
    assert new.adopted == 10 and new.depth() == {"memory": 0, "disk": 10}
    assert not (tmp_path / "old").exists(), "the old folder is taken over"
    new.put(result(100))
    got = drain_in_batches(new, 4)
    assert indices(got) == list(range(2, 12)) + [100]
    assert [r.to_json() for r in got[:10]] == [result(i, "a" if i % 2 else "b").to_json() for i in range(2, 12)]


def test_a_live_spools_folder_is_never_adopted_and_cannot_be_opened_twice(tmp_path: Path) -> None:
    live = Spool(memory_max=1, directory=tmp_path / "live", disk_max_bytes=8192, segment_bytes=4096)
    for i in range(3):
        live.put(result(i))
    other = Spool(memory_max=1, directory=tmp_path / "other", disk_max_bytes=8192, segment_bytes=4096,
                  adopt=[tmp_path / "live"])
    assert other.adopted == 0 and len(live) == 3, "its lock is held: it is alive"
    with pytest.raises(OSError, match="in use by another process"):
        Spool(memory_max=1, directory=tmp_path / "live", disk_max_bytes=8192, segment_bytes=4096)
    assert indices(drain_in_batches(live, 2)) == [0, 1, 2]
    live.close()
    other.close()
    assert not (tmp_path / "live").exists() and not (tmp_path / "other").exists(), "lock files go with the folders"


def test_leftover_folders_are_other_runs_oldest_first(tmp_path: Path) -> None:
    from stream.sinks.spool import leftover_spool_dirs, spool_dir

    for label, age in (("new1", 10), ("old1.2", 300), ("mid1", 100), ("now", 0)):
        folder = spool_dir(tmp_path, label)
        folder.mkdir()
        segment = folder / "segment-00000000.jsonl"
        segment.write_text(result(0).to_json() + "\n")
        os.utime(segment, (time.time() - age, time.time() - age))
    spool_dir(tmp_path, "old1", "kafka.tracks").mkdir()  # another sink's: not this one's
    assert [d.name for d in leftover_spool_dirs(tmp_path, exclude_run="now")] == [
        "vidrec-spool-old1.2-kafka", "vidrec-spool-mid1-kafka", "vidrec-spool-new1-kafka"]


def test_track_events_spool_through_disk_too(tmp_path: Path) -> None:
    """The track events' Kafka sink has a spool of its own: the same FIFO, read back as TrackEvents."""
    from stream.track_events import TrackEvent

    def event(i: int) -> TrackEvent:
        return TrackEvent(event="started", stream_id="cam", track_id=i + 1, frame_index=i, time=1000.0 + i,
                          label=None, score=None, det_class="person", box=(1.5, 2.25, 30.0, 40.0), first_seen=1000.0,
                          last_seen=1000.0 + i, dwell_s=0.0, attempts=0, best_box=None, best_frame_index=None)

    spool = Spool(memory_max=2, directory=tmp_path, disk_max_bytes=8192, segment_bytes=1024, decode=TrackEvent.from_json)
    for i in range(6):
        assert not spool.put(event(i))
    assert spool.disk_bytes() > 0
    got = drain_in_batches(spool, 4)
    assert got == [event(i) for i in range(6)]  # whole events, in order, memory then disk


def test_spool_folders_are_per_sink(tmp_path: Path) -> None:
    from stream.sinks.spool import spool_dir, spool_dirs_of_run

    for label in ("r1", "r1.1"):
        for sink in ("kafka", "kafka.tracks"):
            spool_dir(tmp_path, label, sink).mkdir()
    spool_dir(tmp_path, "r2", "kafka").mkdir()  # another run's
    assert [d.name for d in spool_dirs_of_run(tmp_path, "r1")] == ["vidrec-spool-r1-kafka", "vidrec-spool-r1.1-kafka"]
    assert [d.name for d in spool_dirs_of_run(tmp_path, "r1", "kafka.tracks")] == [
        "vidrec-spool-r1-kafka.tracks", "vidrec-spool-r1.1-kafka.tracks"]
