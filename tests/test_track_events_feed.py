"""The supervisor's recent track events and thumbnails (workers/track_feed.py): which events a page holds, the
bounds on what is kept, and the thumbnail paths the HTTP API serves."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from stream.track_events import TrackEvent
from workers.track_feed import TrackEvents, TrackEventStore, encode_thumbnail, page_bounds, thumbnail_path


def _event(n: int, *, kind: str = "started", stream_id: str = "cam", run_id: str | None = "r1") -> TrackEvent:
    return TrackEvent(event=kind, stream_id=stream_id, track_id=n, frame_index=n, time=1000.0 + n, label=None,
                      score=None, det_class="person", box=(0.0, 0.0, 10.0, 20.0), first_seen=1000.0,
                      last_seen=1000.0 + n, dwell_s=float(n), attempts=0, best_box=None, best_frame_index=None,
                      run_id=run_id)


# (after, limit, oldest, newest, expected first..last)
PAGES = [
    (None, 50, 1, 0, (1, 0)),  # nothing yet: an empty range
    (None, 50, 1, 10, (1, 10)),  # the newest 50 of 10: all
    (None, 3, 1, 10, (8, 10)),  # the newest 3
    (4, 3, 1, 10, (5, 7)),  # right after 4
    (9, 50, 1, 10, (10, 10)),  # the rest
    (10, 50, 1, 10, (11, 10)),  # caught up: empty
    (2, 5, 600, 1000, (600, 604)),  # events after 2 are gone: from the oldest kept, not stuck
    (2000, 5, 600, 1000, (996, 1000)),  # an after from an earlier service run: the newest 5
]


@pytest.mark.parametrize(("after", "limit", "oldest", "newest", "expected"), PAGES)
def test_page_bounds(after: int | None, limit: int, oldest: int, newest: int, expected: tuple[int, int]) -> None:
    assert page_bounds(after, limit, oldest, newest) == expected


def test_a_client_following_next_sees_every_event_once_in_order() -> None:
    store = TrackEventStore(keep_events=20)
    seen: list[int] = []
    after = None
    for batch in range(6):
        store.add(TrackEvents(tuple(_event(batch * 3 + k) for k in range(3))))
        page = store.page(after, limit=2)
        while page["events"]:
            seen += [row["event"]["track_id"] for row in page["events"]]
            after = page["next"]
            page = store.page(after, limit=2)
        assert page["next"] == after  # caught up: asked again from the same place
    # The first page without after= is the newest 2 of the first 3 events; all later ones are seen once, in order.
    assert seen == list(range(1, 18))


def test_the_store_keeps_the_newest_events_and_thumbnails_only() -> None:
    store = TrackEventStore(keep_events=5, keep_thumbnails=3)
    for n in range(1, 11):
        store.add(TrackEvents((_event(n, kind="ended"),), {("cam", "r1", n): b"jpeg%d" % n}))
    page = store.page(None, limit=500)
    assert [row["n"] for row in page["events"]] == [6, 7, 8, 9, 10] and page["next"] == 10
    assert [row["thumbnail"] for row in page["events"]] == [None, None] + [f"/thumbnails/cam/r1/{n}" for n in (8, 9, 10)]
    assert store.thumbnail("cam", "r1", 7) is None and store.thumbnail("cam", "r1", 10) == b"jpeg10"
    assert store.thumbnail("cam", "r2", 10) is None  # another run's track 10 is another track


def test_a_thumbnail_path_escapes_each_part() -> None:
    assert thumbnail_path("lobby/east cam", "a1b2.3", 17) == "/thumbnails/lobby%2Feast%20cam/a1b2.3/17"


def test_a_thumbnail_decodes_to_the_crop() -> None:
    rgb = np.zeros((64, 32, 3), np.uint8)
    rgb[..., 0] = 200  # red in RGB
    image = cv2.imdecode(np.frombuffer(encode_thumbnail(rgb), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (64, 32, 3)
    b, g, r = (float(image[..., c].mean()) for c in range(3))
    assert r > 180 and b < 20 and g < 20, (b, g, r)
