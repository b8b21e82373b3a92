"""Offline sources on real footage and photos, and every kind of bad input a user can hand in."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.cli_helpers import ffmpeg, tool
from stream.errors import SourceError
from stream.sources import open_source




def ffprobe_frame_count(path: Path) -> int:
    out = subprocess.run(
        [tool("ffprobe"), "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "stream=nb_read_frames", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout
    return int(json.loads(out)["streams"][0]["nb_read_frames"])


def truncate_copy(src: Path, dst: Path, share: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * share)])
    return dst


def decode_all(path: Path, **kwargs: object) -> list:
    with open_source(path, **kwargs) as source:
        return list(source)


def count_frames(path: Path) -> int:
    """Decode to the end without keeping the pictures."""
    with open_source(path) as source:
        return sum(1 for _ in source)


def assert_names(exc: pytest.ExceptionInfo[SourceError], path: Path) -> None:
    message = str(exc.value)
    assert str(path) in message, message
    assert "\n" not in message, message


# ------------------------------------------------------------------------------------------- good input

def test_bikes_mp4_yields_every_frame_with_increasing_pts(bikes_mp4: Path) -> None:
    with open_source(bikes_mp4) as source:
        assert source.stream_id == "bikes"
        assert source.frame_count == 250
        assert source.fps == pytest.approx(25.0)
        frames = list(source)
    assert len(frames) == 250
    assert [f.index for f in frames] == list(range(250))
    assert {(f.width, f.height) for f in frames} == {(640, 272)}
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert pts[0] == pytest.approx(0.0) and pts[-1] == pytest.approx(249 / 25)
    assert all(f.decode_ms >= 0 for f in frames)
    captures = [f.capture_time for f in frames]
    assert captures == sorted(captures)
    # Real pictures, not blank buffers.
    assert float(frames[100].image_bgr.std()) > 10


def test_every_nth_keeps_source_indices(bikes_mp4: Path) -> None:
    with open_source(bikes_mp4, every_nth=5, stream_id="cam7") as source:
        assert source.frame_count == 50
        frames = list(source)
    assert [f.index for f in frames] == list(range(0, 250, 5))
    assert {f.stream_id for f in frames} == {"cam7"}
    assert frames[1].pts == pytest.approx(5 / 25)


def test_bgr_conversion_matches_ffmpeg_swscale(bikes_mp4: Path, tmp_path: Path) -> None:
    # The fast yuv420p + cv2 path must give the same picture (in BGR order) as FFmpeg's own.
    reference = tmp_path / "first.png"
    ffmpeg("-i", str(bikes_mp4), "-frames:v", "1", str(reference))
    with open_source(bikes_mp4) as source:
        first = next(iter(source)).image_bgr
    expected = cv2.imread(str(reference))
    assert first.shape == expected.shape
    assert float(np.abs(first.astype(int) - expected.astype(int)).mean()) < 3.0


def test_vtest_avi_frame_count_matches_ffprobe(vtest_avi: Path) -> None:
    # Streamed, not collected: 795 frames of 768x576 would hold ~1 GB.
    sizes, last_index, count = set(), -1, 0
    with open_source(vtest_avi) as source:
        for frame in source:
            sizes.add((frame.width, frame.height))
            assert frame.index == last_index + 1
            last_index, count = frame.index, count + 1
    assert count == ffprobe_frame_count(vtest_avi)
    assert sizes == {(768, 576)}


def test_still_image_is_one_frame(photos_dir: Path) -> None:
    with open_source(photos_dir / "bus.jpg") as source:
        assert source.frame_count == 1 and source.fps is None and source.stream_id == "bus"
        frames = list(source)
    assert len(frames) == 1
    assert (frames[0].width, frames[0].height) == (810, 1080)
    assert frames[0].pts is None and frames[0].index == 0


def test_still_image_found_by_content(photos_dir: Path, tmp_path: Path) -> None:
    disguised = tmp_path / "snapshot.dat"
    shutil.copy(photos_dir / "bus.jpg", disguised)
    frames = decode_all(disguised)
    assert len(frames) == 1
    assert (frames[0].width, frames[0].height) == (810, 1080)
    assert frames[0].pts is None


def test_image_folder_is_a_sequence_in_name_order(photos_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    shutil.copy(photos_dir / "dog.jpg", folder / "002.jpg")
    shutil.copy(photos_dir / "bus.jpg", folder / "001.JPG")
    cv2.imwrite(str(folder / "003.png"), cv2.imread(str(photos_dir / "person.jpg")))
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    shutil.copy(photos_dir / "zidane.jpg", folder / "sub" / "000.jpg")

    with open_source(folder) as source:
        assert source.stream_id == "shots" and source.frame_count == 3
        frames = list(source)
    assert [f.index for f in frames] == [0, 1, 2]
    assert [(f.width, f.height) for f in frames] == [(810, 1080), (768, 576), (640, 424)]
    assert all(f.pts is None for f in frames)

    every_other = decode_all(folder, every_nth=2)
    assert [(f.index, f.width) for f in every_other] == [(0, 810), (2, 640)]


def test_close_stops_iteration_midway(bikes_mp4: Path) -> None:
    source = open_source(bikes_mp4)
    frames = iter(source)
    assert [next(frames).index for _ in range(3)] == [0, 1, 2]
    source.close()
    assert list(frames) == []
    source.close()  # idempotent


# -------------------------------------------------------------------------------------------- bad input

def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.mp4"
    with pytest.raises(SourceError) as exc:
        open_source(path)
    assert_names(exc, path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp4"
    path.touch()
    with pytest.raises(SourceError) as exc:
        open_source(path)
    assert_names(exc, path)


def test_text_named_mp4(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(SourceError) as exc:
        open_source(path)
    assert_names(exc, path)


def test_corrupt_image_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a complete jpeg")
    with pytest.raises(SourceError) as exc:
        open_source(path)
    assert_names(exc, path)


def test_audio_only_file(tmp_path: Path) -> None:
    path = tmp_path / "tone.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", "aac", str(path))
    with pytest.raises(SourceError, match="no video stream") as exc:
        open_source(path)
    assert_names(exc, path)


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no pictures here")
    with pytest.raises(SourceError) as exc:
        open_source(tmp_path)
    assert_names(exc, tmp_path)


@pytest.mark.parametrize("layout", ["moov_at_end", "faststart"])
def test_mp4_truncated_at_half(bikes_mp4: Path, tmp_path: Path, layout: str) -> None:
    full = tmp_path / f"full_{layout}.mp4"
    flags = "+faststart" if layout == "faststart" else "-faststart"
    ffmpeg("-i", str(bikes_mp4), "-c", "copy", "-movflags", flags, str(full))
    path = truncate_copy(full, tmp_path / f"half_{layout}.mp4", 0.5)
    # moov at the end: the index is gone and FFmpeg refuses at open. moov in front: the index
    # survives, demuxing just stops at the cut, and only the declared length gives it away.
    with pytest.raises(SourceError, match="truncated") as exc:
        count_frames(path)
    assert_names(exc, path)


def test_avi_truncated_at_half(vtest_avi: Path, tmp_path: Path) -> None:
    # AVI: FFmpeg re-derives the duration from what is there; the header's frame count still says 795.
    path = truncate_copy(vtest_avi, tmp_path / "half.avi", 0.5)
    with pytest.raises(SourceError, match=r"ended after \d+ of ~795 frames") as exc:
        count_frames(path)
    assert_names(exc, path)


def test_stream_cut_without_reencode_is_not_called_truncated(bikes_mp4: Path, tmp_path: Path) -> None:
    # A `-c copy` cut off a keyframe keeps pre-roll samples that an edit list hides: the sample count
    # overstates the frames, the moov duration does not.
    path = tmp_path / "cut.mp4"
    ffmpeg("-ss", "1.5", "-i", str(bikes_mp4), "-c", "copy", str(path))
    assert count_frames(path) == ffprobe_frame_count(path)


def test_corrupt_packets_midstream_name_the_frame(bikes_mp4: Path, tmp_path: Path) -> None:
    full = tmp_path / "full.mp4"
    ffmpeg("-i", str(bikes_mp4), "-c", "copy", "-movflags", "+faststart", str(full))
    data = bytearray(full.read_bytes())
    data[200_000:300_000] = np.random.default_rng(1).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"frame \d+") as exc:
        count_frames(path)
    assert_names(exc, path)
