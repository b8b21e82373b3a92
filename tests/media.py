"""Real test media that ``scripts/fetch-media`` puts in .cache/media/ (Debian's opencv-doc examples)."""
from __future__ import annotations

from pathlib import Path

MEDIA_DIR = Path(__file__).resolve().parent.parent / ".cache" / "media"


def fetched_media(name: str) -> Path:
    """The file ``name`` of .cache/media/; fails naming it and the script that fetches it when it is missing."""
    path = MEDIA_DIR / name
    assert path.is_file(), f"{path} missing: run scripts/fetch-media"
    return path
