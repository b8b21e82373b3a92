"""The annotated video sink: real frames in, a real H.264 file out, drawn pixels checked numerically."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from stream.errors import SinkError
from stream.frames import Frame
from stream.messages import FrameResult, ObjectResult
from stream.sinks.video import AnnotatedVideoWriter, color_for, draw_results
from stream.sources import open_source

PERSON = ObjectResult(bbox=(100.0, 50.0, 300.0, 200.0), det_score=0.9, det_class="person", label="alice", score=0.87)
BIKE = ObjectResult(bbox=(350.0, 60.0, 500.0, 250.0), det_score=0.6, det_class="bicycle", label=None, score=None)
WHOLE = ObjectResult(bbox=(0.0, 0.0, 640.0, 272.0), det_score=1.0, det_class=None, label=None, score=None)


def result_for(frame: Frame, *objects: ObjectResult) -> FrameResult:
    return FrameResult(
        stream_id=frame.stream_id, frame_index=frame.index, pts=frame.pts, capture_time=frame.capture_time,
        width=frame.width, height=frame.height, latency_ms={"total": 1.0}, objects=objects,
    )


def first_frames(path: Path, count: int) -> list[Frame]:
    with open_source(path) as source:
        frames = []
        for frame in source:
            frames.append(frame)
            if len(frames) == count:
                return frames
    raise AssertionError(f"{path} has fewer than {count} frames")


def decoded_sizes(path: Path) -> list[tuple[int, int]]:
    with av.open(str(path)) as container:
        return [(f.width, f.height) for f in container.decode(video=0)]


def test_writes_annotated_mp4_that_decodes_back(bikes_mp4: Path, tmp_path: Path) -> None:
    out = tmp_path / "annotated.mp4"
    writer = AnnotatedVideoWriter(out, fps=25.0, width=640, height=272)
    for frame in first_frames(bikes_mp4, 30):
        writer.write_frame(frame.image_bgr, result_for(frame, WHOLE, PERSON, BIKE))
    assert not out.exists(), "the final name must appear only at close()"
    writer.close()
    assert out.is_file()
    assert list(tmp_path.glob("*.partial")) == []
    assert decoded_sizes(out) == [(640, 272)] * 30


def test_odd_size_is_padded_to_even(bikes_mp4: Path, tmp_path: Path) -> None:
    out = tmp_path / "odd.mp4"
    with AnnotatedVideoWriter(out, fps=25.0, width=639, height=271) as writer:
        for frame in first_frames(bikes_mp4, 5):
            writer.write_frame(np.ascontiguousarray(frame.image_bgr[:271, :639]), result_for(frame, PERSON))
    assert decoded_sizes(out) == [(640, 272)] * 5


def test_box_edge_changes_pixels(bikes_mp4: Path) -> None:
    frame = first_frames(bikes_mp4, 1)[0]
    original = frame.image_bgr.copy()
    drawn = draw_results(frame.image_bgr, result_for(frame, PERSON))
    assert np.array_equal(frame.image_bgr, original), "draw_results must not draw in place"
    colour = np.array(color_for("alice"), dtype=int)
    # Middle of the left and bottom edges: the box colour, and different from the footage there.
    for y, x in [(125, 100), (200, 200)]:
        assert np.abs(drawn[y, x].astype(int) - colour).max() <= 10, (y, x, drawn[y, x], colour)
        assert np.abs(original[y, x].astype(int) - colour).max() > 30
    # Inside the box, away from edge and label, the picture is untouched.
    assert np.array_equal(drawn[100:180, 120:280], original[100:180, 120:280])


def test_whole_frame_box_drawn_only_when_recognised(bikes_mp4: Path) -> None:
    frame = first_frames(bikes_mp4, 1)[0]
    assert np.array_equal(draw_results(frame.image_bgr, result_for(frame, WHOLE)), frame.image_bgr)
    named = ObjectResult(bbox=WHOLE.bbox, det_score=1.0, det_class=None, label="shelf-3", score=0.7)
    drawn = draw_results(frame.image_bgr, result_for(frame, named))
    assert not np.array_equal(drawn[136, 0], frame.image_bgr[136, 0])  # left border, mid-height


def test_colours_are_stable_per_label() -> None:
    assert color_for("alice") == color_for("alice")
    assert color_for("alice") != color_for("bob")
    assert all(0 <= c <= 255 for c in color_for("车"))


def test_abort_leaves_nothing(bikes_mp4: Path, tmp_path: Path) -> None:
    out = tmp_path / "aborted.mp4"
    writer = AnnotatedVideoWriter(out, fps=25.0, width=640, height=272)
    for frame in first_frames(bikes_mp4, 3):
        writer.write_frame(frame.image_bgr, result_for(frame, PERSON))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_exception_in_with_block_aborts(bikes_mp4: Path, tmp_path: Path) -> None:
    out = tmp_path / "failed.mp4"
    with pytest.raises(RuntimeError):
        with AnnotatedVideoWriter(out, fps=25.0, width=640, height=272) as writer:
            frame = first_frames(bikes_mp4, 1)[0]
            writer.write_frame(frame.image_bgr, result_for(frame))
            raise RuntimeError("pipeline failed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["missing_dir", "under_a_file"])
def test_unwritable_output_dir(tmp_path: Path, where: str) -> None:
    if where == "missing_dir":
        out = tmp_path / "no" / "such" / "dir" / "out.mp4"
    else:
        (tmp_path / "plain.txt").write_text("a file, not a folder")
        out = tmp_path / "plain.txt" / "out.mp4"
    with pytest.raises(SinkError) as exc:
        AnnotatedVideoWriter(out, fps=25.0, width=640, height=272)
    assert str(out) in str(exc.value)
