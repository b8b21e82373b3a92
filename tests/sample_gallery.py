"""The bundled sample gallery (samples/gallery: a taxi, the cyclist from bikes.mp4's frame 120, a parked bicycle)
as a config, for tests that build it in a folder of their own."""
from __future__ import annotations

from pathlib import Path

from config import VidrecConfig, load_config

REPO = Path(__file__).resolve().parent.parent


def sample_gallery_config(index_dir: Path, *overrides: str) -> VidrecConfig:
    return load_config(None, [
        f"IndexProcess.data_file={REPO / 'samples' / 'gallery' / 'data_file.txt'}",
        f"IndexProcess.image_root={REPO / 'samples' / 'gallery'}",
        f"IndexProcess.index_dir={index_dir}",
        *overrides,
    ])
