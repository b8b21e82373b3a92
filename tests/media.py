"""Real test media that ``scripts/fetch-media`` puts in .cache/media/ (Debian's opencv-doc examples)."""
from __future__ import annotations

from pathlib import Path

MEDIA_DIR = Path(__file__).resolve().parent.parent / ".cache" / "media"


def fetched_media(name: str) -> Path:
    """The file ``name`` of .cache/media/; fails naming it and the script that fetches it when it is missing."""
    path = MEDIA_DIR / name
    assert path.is_file(), f"{path} missing: run scripts/fetch-media"
    return path


def video_head(source: Path, frames: int, out: Path) -> Path:
    """The first ``frames`` frames of ``source`` stream-copied into ``out`` (no re-encoding: the same pixels, the same
    decoder path), for a test that needs a real clip of that footage but not all of its length. Fails unless ``out``
    holds exactly ``frames`` frames (ffprobe counts them by decoding). vtest.avi cuts cleanly: it starts on a key frame
    and has no B-frames (tests/test_gallery_live.py checks the pixels of such a cut frame by frame)."""
    import json
    import shutil
    import subprocess

    ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
    assert ffmpeg and ffprobe, "ffmpeg/ffprobe not found on PATH: install FFmpeg (apt-get install ffmpeg)"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(source), "-map", "0:v", "-c", "copy", "-frames:v", str(frames),
                    str(out)], check=True, timeout=120)
    probed = subprocess.run([ffprobe, "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                             "stream=nb_read_frames", "-of", "json", str(out)], check=True, capture_output=True, text=True,
                            timeout=120)
    counted = int(json.loads(probed.stdout)["streams"][0]["nb_read_frames"])
    assert counted == frames, f"{out}: {counted} frames, not the first {frames} of {source}"
    return out
