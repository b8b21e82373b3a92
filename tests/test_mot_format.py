"""MOTChallenge text format (stream/mot_format.py): detections read with file:line errors, results written."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from stream.errors import SourceError
from stream.mot_format import (
    MotDetection,
    MotLineError,
    format_result_line,
    format_results,
    parse_detection_line,
    parse_detections,
    read_detections,
)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # MOT15/16/17 det.txt: 10 fields, the last three ignored
        ("1,-1,281.931,187.466,79.93,209.537,0.997784,-1,-1,-1", MotDetection(1, 281.931, 187.466, 79.93, 209.537, 0.997784)),
        # the shortest form: 7 fields, trailing newline and spaces tolerated
        (" 12, -1, 0, 0, 10, 20, 1 \n", MotDetection(12, 0.0, 0.0, 10.0, 20.0, 1.0)),
        # a box partly left of / above the image is a real detection (MOT files have them)
        ("3,-1,-4.5,-2,10,20,0", MotDetection(3, -4.5, -2.0, 10.0, 20.0, 0.0)),
        # a zero-area box is read (the tracker drops it, as it does a detector's)
        ("2,-1,5,5,0,0,0.5", MotDetection(2, 5.0, 5.0, 0.0, 0.0, 0.5)),
        # frame written as a float with no fraction
        ("7.0,-1,1,2,3,4,0.5", MotDetection(7, 1.0, 2.0, 3.0, 4.0, 0.5)),
        # too few fields
        ("1,-1,1,2,3,4", "expected 7 to 10 comma-separated fields"),
        # too many fields
        ("1,-1,1,2,3,4,0.5,-1,-1,-1,9", "got 11"),
        # a word where a number belongs names the field
        ("1,-1,abc,2,3,4,0.5", "x is not a number: 'abc'"),
        # an empty field
        ("1,-1,1,,3,4,0.5", "y is not a number: ''"),
        # nan is not a coordinate
        ("1,-1,1,2,nan,4,0.5", "w is not a finite number"),
        # an ignored trailing field must still be a number
        ("1,-1,1,2,3,4,0.5,-1,x,-1", "field 9 is not a number"),
        # negative width
        ("1,-1,1,2,-3,4,0.5", "w is negative: -3"),
        # negative height
        ("1,-1,1,2,3,-4,0.5", "h is negative: -4"),
        # a raw detector score (ACF's are > 1)
        ("1,-1,1,2,3,4,31.5", "score 31.5 is outside 0..1"),
        # a negative score
        ("1,-1,1,2,3,4,-0.1", "score -0.1 is outside 0..1"),
        # frames are 1-based
        ("0,-1,1,2,3,4,0.5", "frame must be a whole number >= 1"),
        # a frame between frames
        ("1.5,-1,1,2,3,4,0.5", "frame must be a whole number >= 1"),
        # tab-separated is not this format
        ("1\t-1\t1\t2\t3\t4\t0.5", "got 1"),
    ],
)
def test_parse_detection_line(line: str, expected: MotDetection | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(MotLineError, match=re.escape(expected)):
            parse_detection_line(line)
    else:
        assert parse_detection_line(line) == expected


def test_parse_detections_groups_and_sorts_frames() -> None:
    lines = [
        "3,-1,10,20,30,40,0.9,-1,-1,-1\n",
        "\n",  # blank lines (a trailing one, a gap) are skipped
        "1,-1,0,0,10,10,0.5,-1,-1,-1\n",
        "3,-1,1,2,3,4,0.25,-1,-1,-1\n",
    ]
    frames = parse_detections(lines, name="det.txt")
    assert [f.frame for f in frames] == [1, 3]
    np.testing.assert_allclose(frames[0].xyxy, [[0, 0, 10, 10]])
    # x2 = x + w, y2 = y + h; the file's order inside a frame is kept
    np.testing.assert_allclose(frames[1].xyxy, [[10, 20, 40, 60], [1, 2, 4, 6]])
    np.testing.assert_allclose(frames[1].scores, [0.9, 0.25])


def test_parse_detections_names_file_and_line() -> None:
    lines = ["1,-1,0,0,10,10,0.5\n", "\n", "2,-1,0,0,10,10,7\n"]
    with pytest.raises(SourceError, match=r"^det\.txt:3: score 7 is outside 0\.\.1"):
        parse_detections(lines, name="det.txt")


def test_read_detections_names_a_line_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "det.txt"
    path.write_bytes(b"1,-1,1,2,3,4,0.5\n1,-1,\xff,2,3,4,0.5\n")
    with pytest.raises(SourceError, match=re.escape(f"{path}:2: x is not a number")):
        read_detections(path)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # corners back to top-left + width/height, six significant digits
        ({"frame": 1, "track_id": 3, "xyxy": (281.931, 187.466, 361.861, 397.003), "score": 0.997784},
         "1,3,281.931,187.466,79.93,209.537,0.997784,-1,-1,-1"),
        # whole numbers are written without a fraction
        ({"frame": 71, "track_id": 1, "xyxy": (0.0, 0.0, 10.0, 20.0), "score": 1.0}, "71,1,0,0,10,20,1,-1,-1,-1"),
        # a box left of the image keeps its negative x
        ({"frame": 2, "track_id": 9, "xyxy": (-4.5, 3.0, 5.5, 13.0), "score": 0.5}, "2,9,-4.5,3,10,10,0.5,-1,-1,-1"),
    ],
)
def test_format_result_line(kwargs: dict, expected: str) -> None:
    assert format_result_line(**kwargs) == expected


@pytest.mark.parametrize(
    ("frame", "track_id"),
    [
        (0, 1),  # frames are 1-based
        (1, 0),  # MOTChallenge ids start at 1
        (1, -1),  # an untracked box has no results line
    ],
)
def test_format_result_line_refuses(frame: int, track_id: int) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        format_result_line(frame=frame, track_id=track_id, xyxy=(0, 0, 1, 1), score=0.5)


def test_format_results_leaves_out_untracked_boxes() -> None:
    xyxy = np.array([[0, 0, 10, 10], [20, 20, 30, 40], [5, 5, 6, 6]], dtype=np.float64)
    scores = np.array([0.9, 0.8, 0.1])
    ids = np.array([2, -1, 5])
    assert list(format_results([(4, xyxy, scores, ids)])) == [
        "4,2,0,0,10,10,0.9,-1,-1,-1",
        "4,5,5,5,1,1,0.1,-1,-1,-1",
    ]
