"""Run the real `vidrec` command line as a user would (a subprocess), for end-to-end tests."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_vidrec(*args: str | Path, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("VIDREC_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *map(str, args)],
        cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """The user-error contract: exit 1, no traceback, one `vidrec: error:` line naming the thing."""
    assert proc.returncode == 1, f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("vidrec: error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def sample_gallery(index_dir: Path) -> list[str]:
    """Build the bundled sample gallery (samples/gallery: taxi, cyclist, parked bicycle) into ``index_dir`` with
    the real CLI; returns the ``-o`` options that point a command at it."""
    gallery_dir = REPO / "samples" / "gallery"
    options = ["-o", f"IndexProcess.image_root={gallery_dir}", "-o", f"IndexProcess.index_dir={index_dir}"]
    built = run_vidrec("gallery", "build", "-o", f"IndexProcess.data_file={gallery_dir / 'data_file.txt'}", *options)
    assert built.returncode == 0, built.stderr
    return options


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found on PATH: install FFmpeg (apt-get install ffmpeg) to build the test clips"
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run([tool("ffmpeg"), "-v", "error", "-y", *args], check=True, timeout=120)
