"""Tracking's pure parts and the ByteTrack adapter (models/tracking), checked with numbers."""
from __future__ import annotations

import numpy as np
import pytest

from models.tracking import (
    EmbedPolicy,
    StreamTracker,
    StreamTracks,
    TimeWentBack,
    TrackerParams,
    TrackingParams,
    clip_boxes,
    needs_embedding,
)
from models.tracking.tracks import thumbnail
from models.tracking.votes import VoteRule

POLICY = EmbedPolicy(every=10, growth=1.2)


@pytest.mark.parametrize(
    "attempts, frames_since, area, embedded_area, embedded_version, gallery_version, expected",
    [
        (0, 0, 100.0, 0.0, None, 1, True),  # a new track
        (1, 1, 100.0, 100.0, 1, 1, True),  # fewer attempts than min_votes (2): every frame until the vote can settle
        (2, 1, 100.0, 100.0, 1, 1, False),  # settled, same size, one frame later: reuse the answer
        (2, 9, 100.0, 100.0, 1, 1, False),  # nine frames later: still reused
        (2, 10, 100.0, 100.0, 1, 1, True),  # every 10th frame of the track
        (2, 3, 119.0, 100.0, 1, 1, False),  # grown 19 %: not yet
        (2, 3, 120.0, 100.0, 1, 1, True),  # grown 20 %: a better view, embed again
        (2, 3, 50.0, 100.0, 1, 1, False),  # shrunk: a worse view is not worth a crop
        (2, 3, 100.0, 100.0, 1, 2, True),  # the gallery changed: every live track is embedded again
        (0, 0, 100.0, 0.0, None, None, True),  # no gallery yet: the caller embeds nothing, the answer says "would"
    ],
)
def test_needs_embedding(attempts, frames_since, area, embedded_area, embedded_version, gallery_version, expected) -> None:
    assert needs_embedding(attempts=attempts, frames_since=frames_since, area=area, embedded_area=embedded_area,
                           embedded_version=embedded_version, gallery_version=gallery_version, policy=POLICY,
                           min_votes=2) is expected


@pytest.mark.parametrize(
    "box, clipped, has_area",
    [
        ((10, 20, 30, 40), (10, 20, 30, 40), True),  # inside
        ((-5, -5, 30, 40), (0, 0, 30, 40), True),  # over the top-left corner: clipped
        ((90, 50, 130, 70), (90, 50, 100, 70), True),  # over the right edge
        ((120, 10, 150, 20), (100, 10, 100, 20), False),  # wholly right of the frame: nothing left
        ((10, 10, 10, 30), (10, 10, 10, 30), False),  # zero width
        ((10, 30, 20, 10), (10, 30, 20, 10), False),  # upside down
    ],
)
def test_clip_boxes(box, clipped, has_area) -> None:
    boxes, area = clip_boxes(np.array([box], dtype=np.float32), width=100, height=80)
    assert boxes[0].tolist() == list(map(float, clipped)) and bool(area[0]) is has_area


def test_non_finite_boxes_are_never_tracked() -> None:
    _, area = clip_boxes(np.array([[np.nan, 0, 10, 10], [0, 0, np.inf, 10], [0, 0, 10, 10]]), width=100, height=80)
    assert area.tolist() == [False, False, True]


def walk(tracker: StreamTracker, frames: int, *, start: float = 0.0, fps: float = 25.0, x0: float = 10.0) -> list[int]:
    """One box walking right 2 px a frame; the id it gets each frame."""
    ids = []
    for n in range(frames):
        x = x0 + 2 * n
        ids.append(int(tracker.update(np.array([[x, 10, x + 40, 90]]), np.array([0.9]), timestamp=start + n / fps,
                                      width=640, height=480)[0]))
    return ids


def test_ids_start_at_first_id_from_the_second_detection_and_continue_across_trackers() -> None:
    first = StreamTracker(TrackerParams())
    assert walk(first, 5) == [-1, 1, 1, 1, 1]  # ByteTrack confirms a track on its second detection
    assert first.next_id == 2
    second = StreamTracker(TrackerParams(), first_id=first.next_id)  # the stream restarted: ids go on
    assert walk(second, 3) == [-1, 2, 2]


def test_a_track_is_lost_by_time_not_by_frame_count() -> None:
    tracker = StreamTracker(TrackerParams(lost_track_s=1.0))
    walk(tracker, 5)
    assert tracker.kept_ids() == {1}
    empty = np.zeros((0, 4))
    tracker.update(empty, np.zeros(0), timestamp=0.5, width=640, height=480)  # 0.34 s without it: kept
    assert tracker.kept_ids() == {1}
    tracker.update(empty, np.zeros(0), timestamp=2.0, width=640, height=480)  # one frame later, but 1.8 s: gone
    assert tracker.kept_ids() == set()


def test_time_that_goes_back_is_refused_and_a_repeated_time_is_a_frame() -> None:
    tracker = StreamTracker(TrackerParams())
    walk(tracker, 3)
    box = np.array([[16.0, 10, 56, 90]])
    assert tracker.update(box, np.array([0.9]), timestamp=0.08, width=640, height=480).tolist() == [1]  # same time
    with pytest.raises(TimeWentBack, match="before the previous frame"):
        tracker.update(box, np.array([0.9]), timestamp=0.01, width=640, height=480)


def test_boxes_without_area_are_never_tracked_and_do_not_disturb_the_others() -> None:
    tracker = StreamTracker(TrackerParams())
    boxes = np.array([[10, 10, 50, 90], [700, 10, 720, 90], [30, 30, 30, 60]], dtype=np.float32)  # ok, outside, flat
    for t in (0.0, 0.04):
        ids = tracker.update(boxes, np.array([0.9, 0.9, 0.9]), timestamp=t, width=640, height=480)
    assert ids.tolist() == [1, -1, -1]
    assert tracker.kept_ids() == {1}


def test_a_low_score_box_only_extends_a_track() -> None:
    tracker = StreamTracker(TrackerParams(track_activation_threshold=0.5, high_conf_det_threshold=0.5))
    alone = tracker.update(np.array([[10, 10, 50, 90]]), np.array([0.3]), timestamp=0.0, width=640, height=480)
    assert alone.tolist() == [-1]  # too weak to start a track
    walk(tracker, 3, start=0.04)
    weak = tracker.update(np.array([[16, 10, 56, 90]]), np.array([0.3]), timestamp=0.2, width=640, height=480)
    assert weak.tolist() == [1]  # ByteTrack's second association: weak, but where the track is


def params(**tracker) -> TrackingParams:
    return TrackingParams(tracker=TrackerParams(**tracker), embed=EmbedPolicy(every=10, growth=1.2))


def plan(tracks: StreamTracks, boxes: list, t: float, index: int, version: int | None = 1):
    xyxy = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    return tracks.plan(xyxy=xyxy, det_scores=np.full(len(xyxy), 0.9, np.float32),
                       class_ids=np.zeros(len(xyxy), np.int32), width=640, height=480, timestamp=t,
                       capture_time=1000.0 + t, frame_index=index, gallery_version=version)


def test_a_stream_without_boxes_has_no_tracks_and_no_changes() -> None:
    tracks = StreamTracks(params())
    for n in range(5):
        p = plan(tracks, [], n / 25, n)
        assert (p.started, p.ended, p.embed.tolist()) == ([], [], [])
    assert tracks.tracks == {}


def test_an_object_seen_once_never_becomes_a_track() -> None:
    tracks = StreamTracks(params(lost_track_s=0.2))
    once = plan(tracks, [[10, 10, 50, 90]], 0.0, 0)
    assert (once.track_ids.tolist(), once.embed.tolist(), once.started) == ([-1], [False], [])
    for n, t in enumerate((0.1, 0.5, 1.0), start=1):
        p = plan(tracks, [], t, n)
        assert (p.started, p.ended) == ([], [])
    assert tracks.tracks == {}


def test_a_one_frame_track_starts_and_ends_with_no_dwell() -> None:
    tracks = StreamTracks(params(lost_track_s=0.2))
    plan(tracks, [[10, 10, 50, 90]], 0.0, 0)  # unconfirmed
    first = plan(tracks, [[12, 10, 52, 90]], 0.04, 1)  # confirmed: its one frame as a track
    assert [(c.kind, c.track.track_id, c.frame_index) for c in first.started] == [("started", 1, 1)]
    assert first.embed.tolist() == [True]
    assert plan(tracks, [], 0.1, 2).ended == []
    [ended] = plan(tracks, [], 0.5, 3).ended
    assert (ended.kind, ended.reason, ended.track.dwell_s, ended.track.label, ended.frame_index) == ("ended", "lost", 0.0, None, 3)
    assert tracks.tracks == {}


def test_embeddings_of_a_walking_track_and_a_gallery_swap() -> None:
    tracks = StreamTracks(params())
    embedded = []
    for n in range(25):
        version = 1 if n < 17 else 2  # the gallery was saved again before frame 17
        p = plan(tracks, [[10 + 2 * n, 10, 50 + 2 * n, 90]], n / 25, n, version)
        if p.embed[0]:
            tracks.record(1, label="alice", similarity=0.9, box_area=3200.0, frame_area=640 * 480, frame_index=n,
                          capture_time=1000.0 + n / 25)
            embedded.append(n)
    # (frame 0: not yet a track) two attempts to settle the vote, then every 10th frame; the new gallery: two more
    assert embedded == [1, 2, 12, 17, 18]
    track = tracks.tracks[1]
    assert (track.votes.label, track.votes.attempts, track.votes.tallied) == ("alice", 5, 2)


def _two_walkers(unique: bool, similarities: list[tuple[float, float]]) -> tuple[StreamTracks, list]:
    """Two tracks side by side whose every attempt answers "alice", at the given (left, right) similarities
    per frame; returns the tracks and every labelled change as (track id, previous label, label)."""
    tracks = StreamTracks(TrackingParams(embed=EmbedPolicy(every=1, growth=1.2), votes=VoteRule(score_thres=0.5),
                                         unique_labels=unique))
    changes = []
    for n, pair in enumerate([(0.0, 0.0), *similarities]):
        p = plan(tracks, [[10 + n, 10, 50 + n, 90], [300 - n, 10, 340 - n, 90]], n / 25, n)
        for row, similarity in enumerate(pair):
            track_id = int(p.track_ids[row])
            if track_id >= 0 and p.embed[row]:
                for c in tracks.record(track_id, label="alice", similarity=similarity, box_area=3200.0,
                                       frame_area=640 * 480, frame_index=n, capture_time=0.0):
                    changes.append((c.track.track_id, c.previous_label, c.track.label))
    return tracks, changes


@pytest.mark.parametrize(("unique", "similarities", "labels", "changes"), [
    # kinds (the default): both tracks are "alice" once their votes settle
    (False, [(0.9, 0.7), (0.9, 0.7)], {1: "alice", 2: "alice"}, [(1, None, "alice"), (2, None, "alice")]),
    # individuals: the stronger answer holds the label, the weaker track stays unnamed (no change for it)
    (True, [(0.9, 0.7), (0.9, 0.7)], {1: "alice", 2: None}, [(1, None, "alice")]),
    # individuals: the other track's answer grows stronger (its two best views' mean, 1.0 > 0.9): it takes the label
    (True, [(0.9, 0.7), (0.9, 0.7), (0.9, 1.0), (0.9, 1.0)], {1: None, 2: "alice"},
     [(1, None, "alice"), (1, "alice", None), (2, None, "alice")]),
    # individuals, a tie: the holder keeps it
    (True, [(0.8, 0.8), (0.8, 0.8), (0.8, 0.8)], {1: "alice", 2: None}, [(1, None, "alice")]),
])
def test_unique_labels_name_one_track_at_a_time(unique, similarities, labels, changes) -> None:
    tracks, got = _two_walkers(unique, similarities)
    assert {i: t.votes.label for i, t in tracks.tracks.items()} == labels
    assert got == changes


def test_a_unique_label_is_free_again_when_its_track_ends() -> None:
    tracks, _ = _two_walkers(True, [(0.9, 0.7), (0.9, 0.7)])
    assert tracks.tracks[2].votes.label is None
    # the holder leaves the frame for good; the other's next attempt names it
    for n in range(3, 40):
        p = plan(tracks, [[300 - n, 10, 340 - n, 90]], n / 25, n)
        if p.embed[0] and int(p.track_ids[0]) == 2:
            tracks.record(2, label="alice", similarity=0.7, box_area=3200.0, frame_area=640 * 480, frame_index=n,
                          capture_time=0.0)
    assert 1 not in tracks.tracks and tracks.tracks[2].votes.label == "alice"


def test_a_growing_box_is_embedded_again() -> None:
    tracks = StreamTracks(params())
    embedded = []
    for n in range(8):
        side = 40 * (1.1 ** n)  # area grows 21 % a frame
        p = plan(tracks, [[100, 100, 100 + side, 100 + side]], n / 25, n)
        if p.embed[0]:
            tracks.record(1, label=None, similarity=0.3, box_area=side * side, frame_area=640 * 480, frame_index=n,
                          capture_time=0.0)
            embedded.append(n)
    assert embedded == list(range(1, 8))  # every frame from the track's first


def test_end_all_ends_every_track_and_the_next_ids_go_on() -> None:
    tracks = StreamTracks(params())
    plan(tracks, [[10, 10, 50, 90], [200, 10, 250, 90]], 0.0, 0)
    plan(tracks, [[10, 10, 50, 90], [200, 10, 250, 90]], 0.04, 1)
    ended = tracks.end_all("stream restarted", frame_index=-1, capture_time=5.0)
    assert sorted((c.track.track_id, c.reason) for c in ended) == [(1, "stream restarted"), (2, "stream restarted")]
    plan(tracks, [[10, 10, 50, 90]], 0.0, 0)  # the same times again: a new tracker accepts them
    again = plan(tracks, [[10, 10, 50, 90]], 0.04, 1)
    assert [c.track.track_id for c in again.started] == [3]


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((64, 32, 3), (64, 32, 3)),  # small: kept as it is (a copy)
        ((256, 128, 3), (128, 64, 3)),  # tall: the height becomes 128
        ((90, 400, 3), (29, 128, 3)),  # wide: the width becomes 128, the height rounds
    ],
)
def test_thumbnail(shape, expected) -> None:
    crop = np.full(shape, 7, np.uint8)
    small = thumbnail(crop)
    assert small.shape == expected and small is not crop and int(small[0, 0, 0]) == 7


def test_trackers_runs_on_the_headless_opencv_alone() -> None:
    """trackers is installed with --no-deps (requirements-nodeps.txt): it asks for opencv-python, which would share
    the cv2 folder with opencv-python-headless. Only the headless build may be installed, and trackers must import."""
    from importlib import metadata

    import trackers

    assert metadata.version("trackers") == "2.6.1" and trackers.ByteTrackTracker is not None
    assert metadata.version("opencv-python-headless")
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("opencv-python")


def test_a_track_never_changes_class() -> None:
    """A rider's person box and the bike's box overlap almost wholly: tracked per class, each keeps its own id."""
    tracker = StreamTracker(TrackerParams())
    rider, bike = [100, 50, 160, 200], [95, 110, 170, 210]
    for n in range(4):
        shift = 3 * n
        boxes = np.array([[rider[0] + shift, rider[1], rider[2] + shift, rider[3]],
                          [bike[0] + shift, bike[1], bike[2] + shift, bike[3]]], dtype=np.float32)
        # in frame 2 the detector swaps their order: the ids follow the classes, not the rows
        order = [1, 0] if n == 2 else [0, 1]
        ids = tracker.update(boxes[order], np.array([0.9, 0.9]), timestamp=n / 25, width=640, height=480,
                             class_ids=np.array([0, 1])[order])
        if n >= 1:
            by_class = dict(zip(np.array([0, 1])[order].tolist(), ids.tolist()))
            assert by_class == {0: 1, 1: 2}, n
    assert tracker.kept_ids() == {1, 2}


def test_a_box_that_changes_class_starts_another_track_and_the_old_one_ends() -> None:
    tracker = StreamTracker(TrackerParams(lost_track_s=0.2))
    box = np.array([[10, 10, 50, 90]], dtype=np.float32)
    for n in range(3):
        tracker.update(box, np.array([0.9]), timestamp=n / 25, width=640, height=480, class_ids=np.array([0]))
    for n in range(3, 6):
        ids = tracker.update(box, np.array([0.9]), timestamp=n / 25, width=640, height=480, class_ids=np.array([2]))
    assert ids.tolist() == [2] and tracker.kept_ids() == {1, 2}
    for n in range(6, 12):  # the bike goes on; the person's tracker ages without boxes
        tracker.update(box, np.array([0.9]), timestamp=n / 25, width=640, height=480, class_ids=np.array([2]))
    assert tracker.kept_ids() == {2}  # class 0's track, unseen for 0.36 s, ended; its tracker is gone too
    assert list(tracker._trackers) == [2]


def test_repeated_times_are_frames() -> None:
    tracker = StreamTracker(TrackerParams())
    box = np.array([[10, 10, 50, 90]], dtype=np.float32)
    got = [tracker.update(box, np.array([0.9]), timestamp=1.0, width=640, height=480).tolist() for _ in range(4)]
    assert got == [[-1], [1], [1], [1]]  # a still image read four times, or a camera with a stuck clock


def test_a_new_gallery_without_a_tracks_label_unnames_it_at_once() -> None:
    tracks = StreamTracks(params())
    for n in range(3):
        p = plan(tracks, [[10 + 2 * n, 10, 50 + 2 * n, 90]], n / 25, n)
        if p.embed[0]:
            tracks.record(1, label="van", similarity=0.9, box_area=3200.0, frame_area=640 * 480, frame_index=n,
                          capture_time=0.0)
    tracks.whole_frame_answer = ("street", 0.8)
    assert tracks.tracks[1].votes.label == "van"
    assert tracks.forget_labels_not_in(frozenset({"van", "street"}), frame_index=3, capture_time=0.0) == []
    [change] = tracks.forget_labels_not_in(frozenset({"walker"}), frame_index=3, capture_time=1.5)
    assert (change.kind, change.previous_label, change.track.label, change.frame_index) == ("labelled", "van", None, 3)
    assert tracks.tracks[1].votes.label is None and tracks.whole_frame_answer == (None, None)
