"""Bad input through the real CLI: one clear line naming the thing, exit 1, nothing half-written left."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tests.cli_helpers import assert_one_line_error, run_vidrec


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _outputs_absent(out_dir: Path) -> None:
    left = sorted(p.name for p in out_dir.iterdir())
    assert left == [], f"files left behind: {left}"


@pytest.fixture()
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


def test_missing_file(out_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    proc = run_vidrec("video", missing, "--json", out_dir / "r.jsonl", "--out", out_dir / "a.mp4")
    assert_one_line_error(proc, "nope.mp4")
    _outputs_absent(out_dir)


def test_not_a_video(out_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    proc = run_vidrec("video", text, "--json", out_dir / "r.jsonl")
    assert_one_line_error(proc, "notes.mp4")
    _outputs_absent(out_dir)


def test_truncated_video(out_dir: Path, tmp_path: Path, bikes_mp4: Path) -> None:
    truncated = tmp_path / "half.mp4"
    data = bikes_mp4.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    proc = run_vidrec("video", truncated, "--json", out_dir / "r.jsonl", "--out", out_dir / "a.mp4")
    assert_one_line_error(proc, "half.mp4")
    _outputs_absent(out_dir)


def test_unreachable_kafka_fails_fast_naming_the_address(out_dir: Path, bikes_mp4: Path) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    proc = run_vidrec("video", bikes_mp4, "--kafka", address, "--topic", "t", "--json", out_dir / "r.jsonl", timeout=60)
    assert_one_line_error(proc, address)
    _outputs_absent(out_dir)


def test_unreachable_redis_fails_fast_naming_the_address(out_dir: Path, bikes_mp4: Path) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    proc = run_vidrec("video", bikes_mp4, "--redis", f"redis://{address}/0", "--json", out_dir / "r.jsonl", timeout=60)
    assert_one_line_error(proc, address)
    _outputs_absent(out_dir)


def test_bad_config_key_names_option(out_dir: Path, bikes_mp4: Path) -> None:
    proc = run_vidrec("video", bikes_mp4, "-o", "Global.treshold=0.3", "--json", out_dir / "r.jsonl")
    assert_one_line_error(proc, "-o Global.treshold=0.3", "unknown key", "threshold")
    _outputs_absent(out_dir)


def test_missing_model_names_it(out_dir: Path, bikes_mp4: Path, tmp_path: Path) -> None:
    proc = run_vidrec("video", bikes_mp4, "-o", f"Global.det_inference_model_dir={tmp_path / 'no_such_model'}")
    assert_one_line_error(proc, "no_such_model")


def test_wrong_model_file_is_refused(out_dir: Path, bikes_mp4: Path, tmp_path: Path, model_dir: Path) -> None:
    """A model folder whose file fails its sha256 (a truncated copy) is an error naming the file."""
    bad = tmp_path / "picodet_s_coco"
    shutil.copytree(model_dir / "picodet_s_coco", bad)
    onnx = bad / "picodet_s_320_coco.onnx"  # the default detector file
    onnx.write_bytes(onnx.read_bytes()[:100_000])
    proc = run_vidrec("video", bikes_mp4, "-o", f"Global.det_inference_model_dir={bad}")
    assert_one_line_error(proc, "picodet_s_320_coco.onnx", "sha256")


def _gallery_args(data_file: Path, root: Path, index_dir: Path) -> list[str]:
    return [
        "gallery", "build",
        "-o", f"IndexProcess.data_file={data_file}",
        "-o", f"IndexProcess.image_root={root}",
        "-o", f"IndexProcess.index_dir={index_dir}",
    ]


def test_gallery_line_with_spaces_names_file_and_line(tmp_path: Path, photos_dir: Path) -> None:
    data_file = tmp_path / "data_file.txt"
    data_file.write_text("bus.jpg\tbus\ndog.jpg dog\n")
    proc = run_vidrec(*_gallery_args(data_file, photos_dir, tmp_path / "index"))
    assert_one_line_error(proc, "data_file.txt:2")
    assert not (tmp_path / "index").exists()


def test_gallery_missing_image_names_it(tmp_path: Path, photos_dir: Path) -> None:
    data_file = tmp_path / "data_file.txt"
    data_file.write_text("bus.jpg\tbus\nno_such.jpg\tghost\n")
    proc = run_vidrec(*_gallery_args(data_file, photos_dir, tmp_path / "index"))
    assert_one_line_error(proc, "no_such.jpg")
    assert not (tmp_path / "index").exists()


def test_gallery_unreadable_image_names_it(tmp_path: Path) -> None:
    (tmp_path / "fake.jpg").write_text("not an image")
    data_file = tmp_path / "data_file.txt"
    data_file.write_text("fake.jpg\tfake\n")
    proc = run_vidrec(*_gallery_args(data_file, tmp_path, tmp_path / "index"))
    assert_one_line_error(proc, "fake.jpg", "data_file.txt:1")
    assert not (tmp_path / "index").exists()
