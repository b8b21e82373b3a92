"""docker-compose.yml and the files it mounts, checked without a Docker engine (none runs here).

`scripts/compose-check` runs the real Docker Compose CLI (built from its Go module, cached in .cache/bin/)
on the file: `config` for the default services and the gpu profile, then every bind-mounted host path
must exist. It must pass on the real file and fail, for the right reason, on broken copies. The mounted
configurations are checked with their own tools (promtool, vidrec's config loader), and vidrec's start
script runs for real against the test Kafka, Redis and RTSP server.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from config import load_config
from tests.polling import wait_for
from tests.serve_helpers import ServeProcess, free_port

REPO = Path(__file__).resolve().parent.parent
CHECK = REPO / "scripts" / "compose-check"
COMPOSE_FILE = REPO / "docker-compose.yml"
# Variables the file interpolates: the check must see the defaults, not a developer's settings.
COMPOSE_VARS = ("VIDREC_MODELS", "VIDREC_API_TOKEN", "GRAFANA_ADMIN_PASSWORD", "COMPOSE_PROFILES",
                "COMPOSE_FILE", "COMPOSE_PROJECT_NAME")
# A cold build of the Compose CLI takes 2-3.5 min on 2 cores (scripts/setup --test normally did it already);
# whichever test first needs the compose_bin fixture may pay for it.
BUILD_TIMEOUT_S = 900
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT_S)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in COMPOSE_VARS}


def run_check(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CHECK), *map(str, args)], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S)


@pytest.fixture(scope="module")
def compose_bin() -> Path:
    result = run_check("--build")
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.is_file() and os.access(path, os.X_OK), path
    return path


def resolved(compose_bin: Path, *profiles: str) -> dict[str, Any]:
    args = [str(compose_bin), "--project-directory", str(REPO), "-f", str(COMPOSE_FILE)]
    for profile in profiles:
        args += ["--profile", profile]
    result = subprocess.run([*args, "config", "--format", "json"], cwd=REPO, env=_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_check_passes_on_the_real_file(compose_bin: Path) -> None:
    result = run_check()
    assert result.returncode == 0, result.stderr
    assert "(default profile): OK" in result.stderr and "(gpu profile): OK" in result.stderr, result.stderr


# --- the check can fail -------------------------------------------------------------------------------------


@pytest.fixture
def copy_dir(tmp_path: Path) -> Path:
    """A project folder outside the repo whose relative bind sources resolve to the repo's files."""
    for name in ("docker", "samples", "dashboards"):
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    return tmp_path


def _mutate(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"mutation anchor {old!r} not found exactly once in docker-compose.yml"
    return text.replace(old, new)


MUTATIONS = {
    # name: (old text, new text, what the failure must say)
    "unknown service key": ("  shm_size: 1gb\n", "  shm_sise: 1gb\n", "additional properties 'shm_sise' not allowed"),
    "depends_on a missing service": ("    redis:\n      condition: service_healthy\n",
                                     "    redis-cache:\n      condition: service_healthy\n",
                                     'depends on undefined service "redis-cache"'),
    "bind mount of a missing host path": ("./docker/mediamtx.yml:/mediamtx.yml:ro", "./docker/mediamtx.yaml:/mediamtx.yml:ro",
                                          "bind-mounted host path does not exist: rtsp:"),
    "wrong type in a healthcheck": ("      retries: 12\n      start_period: 30s\n",
                                    "      retries: twelve\n      start_period: 30s\n", "services.kafka.healthcheck.retries"),
    # Only the gpu profile has vidrec-gpu: the default profile does not see this one.
    "gpu service depends on a missing service": ("    image: vidrec:local-gpu\n",
                                                 "    image: vidrec:local-gpu\n    depends_on: [cuda-init]\n",
                                                 'depends on undefined service "cuda-init"'),
}


def test_an_unchanged_copy_passes(copy_dir: Path, compose_bin: Path) -> None:
    """The harness the mutations run in is sound: the same file, copied, passes."""
    shutil.copy(COMPOSE_FILE, copy_dir / "docker-compose.yml")
    result = run_check(copy_dir / "docker-compose.yml")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", MUTATIONS)
def test_a_broken_copy_fails(name: str, copy_dir: Path, compose_bin: Path) -> None:
    old, new, message = MUTATIONS[name]
    path = copy_dir / "docker-compose.yml"
    path.write_text(_mutate(COMPOSE_FILE.read_text(), old, new))
    result = run_check(path)
    assert result.returncode != 0, f"{name}: the check passed a broken file\n{result.stderr}"
    assert message in result.stderr, result.stderr
    if name.startswith("gpu "):
        assert "(default profile): OK" in result.stderr and "(gpu profile): docker compose config failed" in result.stderr


# --- what the file says ---------------------------------------------------------------------------------------


def test_every_image_is_pinned_by_exact_tag(compose_bin: Path) -> None:
    services = resolved(compose_bin, "gpu")["services"]
    for name, service in services.items():
        if "build" in service:
            continue  # vidrec itself, built from the Dockerfile
        image = service["image"]
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert re.fullmatch(r"v?\d+\.\d+\.\d+(-[a-z0-9.]+)?", tag), f"{name}: image {image} is not pinned to an exact version"
    dockerfile = (REPO / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M)
    assert bases and all(re.search(r":\d+\.\d+\.\d+", base) for base in bases), bases
    grafana = services["grafana"]["environment"]["GF_PLUGINS_PREINSTALL_SYNC"]
    assert re.fullmatch(r"yesoreyeram-infinity-datasource@\d+\.\d+\.\d+", grafana), grafana


def test_bind_mounts_are_repo_files(compose_bin: Path) -> None:
    """With no variables set, every bind source is a file or folder of the repo (no machine-specific path)."""
    for profiles in ((), ("gpu",)):
        for name, service in resolved(compose_bin, *profiles)["services"].items():
            for volume in service.get("volumes", []):
                if volume["type"] != "bind":
                    continue
                source = Path(volume["source"])
                assert source.exists(), f"{name}: {source} does not exist"
                assert source.resolve().is_relative_to(REPO), f"{name}: {source} is outside the repo"


def test_vidrec_waits_for_kafka_and_redis_and_gpu_is_opt_in(compose_bin: Path) -> None:
    default = resolved(compose_bin)["services"]
    assert "vidrec-gpu" not in default
    gpu = resolved(compose_bin, "gpu")["services"]["vidrec-gpu"]
    for service in (default["vidrec"], gpu):
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "/healthz" in " ".join(service["healthcheck"]["test"])
    assert "deploy" not in default["vidrec"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["command"] == ["-o", "Global.use_gpu=True"]
    assert gpu["build"]["args"]["VIDREC_ONNXRUNTIME"] == "gpu"
    assert "vidrec" in gpu["networks"]["default"]["aliases"]  # Prometheus and Grafana reach it as vidrec
    missing = [name for name, service in resolved(compose_bin, "gpu")["services"].items() if "healthcheck" not in service]
    assert not missing, f"services without a healthcheck: {missing}"


def test_shm_size_holds_the_frame_rings(compose_bin: Path) -> None:
    cfg = load_config(REPO / "docker" / "vidrec.yaml", [])
    need = cfg.Service.max_streams * cfg.Service.slots_per_stream * cfg.Service.max_frame_bytes
    for service in ("vidrec", "vidrec-gpu"):
        shm = int(resolved(compose_bin, "gpu")["services"][service]["shm_size"])
        assert shm >= 2 * need, f"{service}: shm_size {shm} < 2 x {need} (rings, with room for slots to grow)"


def test_vidrec_config_matches_the_compose_services(compose_bin: Path) -> None:
    cfg = load_config(REPO / "docker" / "vidrec.yaml", [])
    services = resolved(compose_bin)["services"]
    assert cfg.Kafka.bootstrap == "kafka:9092"
    # The nodes join one cluster by default, and spool where a restarted one finds what a killed one left.
    for service in ("vidrec", "vidrec-gpu"):
        assert resolved(compose_bin, "gpu")["services"][service]["environment"]["VIDREC_CLUSTER"] == "vidrec"
    cache = next(v["target"] for v in services["vidrec"]["volumes"] if v["type"] == "volume")
    assert cfg.Kafka.spool_dir and Path(cfg.Kafka.spool_dir).is_relative_to(cache), cfg.Kafka.spool_dir
    assert cfg.Redis.url == "redis://redis:6379/0"
    assert (cfg.Service.http_host, cfg.Service.http_port) == ("0.0.0.0", 8080)
    # Scalable: loopback only, and no fixed host port (replicas would collide on it).
    (port,) = services["vidrec"]["ports"]
    assert (port["target"], port["host_ip"], port.get("published") or "") == (8080, "127.0.0.1", ""), port
    # The streams are the sample cameras' paths, on the rtsp service: one per node of --scale vidrec=3.
    assert len(cfg.streams) == 3
    mediamtx = yaml.safe_load((REPO / "docker" / "mediamtx.yml").read_text())
    for stream in cfg.streams:
        url = urlsplit(stream.url)
        assert (url.scheme, url.hostname, url.port) == ("rtsp", "rtsp", 8554)
        path = mediamtx["paths"][url.path.lstrip("/")]
        assert "/samples/bikes.mp4" in path["runOnInit"] and "-c copy" in path["runOnInit"]
    assert any(v["source"] == str(REPO / "samples" / "bikes.mp4") and v["target"] == "/samples/bikes.mp4"
               for v in services["rtsp"]["volumes"])


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())  # line continuations
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if line and not line.startswith("#")]


def test_dockerfile_steps_are_sound() -> None:
    """No engine builds the image here: its instructions, COPY sources and RUN shell syntax are checked instead."""
    known = {"FROM", "WORKDIR", "COPY", "ARG", "RUN", "USER", "ENV", "EXPOSE", "ENTRYPOINT", "CMD", "LABEL", "HEALTHCHECK"}
    steps = _dockerfile_instructions()
    assert {name for name, _ in steps} <= known, steps
    for name, args in steps:
        if name == "COPY":
            *sources, _dest = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repo"
                assert not any(fnmatch_dockerignore(source)), f"COPY {source}: excluded by .dockerignore"
        if name == "RUN":
            result = subprocess.run(["sh", "-n", "-c", args], capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, f"RUN {args[:80]}...: {result.stderr}"
    assert ("ARG", "VIDREC_ONNXRUNTIME=cpu") in steps
    assert steps[-1] == ("ENTRYPOINT", '["vidrec"]')


def fnmatch_dockerignore(path: str) -> list[str]:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return [p for p in patterns if fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/"))]


@pytest.mark.services  # promtool: Debian's prometheus package, installed by scripts/setup --test
def test_prometheus_config_is_valid_and_scrapes_vidrec() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: scripts/setup --test installs Debian's prometheus"
    path = REPO / "dashboards" / "prometheus" / "prometheus.yml"
    result = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(path.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "vidrec"]
    # Every replica of the service, by DNS (one A record per container), not one fixed target.
    assert "static_configs" not in job
    assert job["dns_sd_configs"] == [{"names": ["vidrec"], "type": "A", "port": 8080, "refresh_interval": "10s"}]
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "5s"


# --- vidrec's start script, run for real ------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_start_script_builds_the_gallery_and_serves(tmp_path: Path, model_dir: Path, kafka_bootstrap: str,
                                                    redis_url: str, rtsp_base: str) -> None:
    """docker/vidrec-start.sh with docker/vidrec.yaml, its hosts pointed at the test services, as one node of a
    cluster of its own (VIDREC_CLUSTER, as docker-compose.yml sets it): it runs every camera itself."""
    config = yaml.safe_load((REPO / "docker" / "vidrec.yaml").read_text())
    port = free_port()
    config["Kafka"]["bootstrap"] = kafka_bootstrap
    config["Kafka"]["topic"] = f"vidrec.compose.{uuid.uuid4().hex[:8]}"
    config["Redis"]["url"] = redis_url
    config["Redis"]["key_prefix"] = f"compose-{uuid.uuid4().hex[:8]}"
    # The container's /app is the repo: its gallery root /app/samples/gallery is the repo's samples/gallery.
    assert config["Service"]["gallery_image_root"] == "/app/samples/gallery"
    config["Service"].update(http_host="127.0.0.1", http_port=port, gallery_image_root=str(REPO / "samples" / "gallery"))
    config["streams"] = [{"id": "bikes", "url": f"{rtsp_base}/bikes"}]  # one camera is enough here
    index_dir = tmp_path / "sample_index"
    config["IndexProcess"]["index_dir"] = str(index_dir)
    config_path = tmp_path / "vidrec.yaml"
    config_path.write_text(yaml.safe_dump(config))

    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "VIDREC_DEBUG"}
    env.update(VIDREC_API_TOKEN=token, VIDREC_CLUSTER=f"compose-{uuid.uuid4().hex[:8]}", PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", VIDREC_CONFIG=str(config_path),
               VIDREC_SAMPLE_INDEX=str(index_dir), VIDREC_MODEL_DIR=str(model_dir))
    log_path = tmp_path / "start.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(["sh", str(REPO / "docker" / "vidrec-start.sh")], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    # ServeProcess only for its HTTP helpers; the process is the script's (exec'd into vidrec serve).
    api = ServeProcess.__new__(ServeProcess)
    api.base, api.log_path, api.proc = f"http://127.0.0.1:{port}", log_path, proc
    try:
        wait_for(api.healthy, 240, "healthy vidrec behind the start script", every_s=0.5)
        gallery = api.api("GET", "/gallery")
        assert gallery.status == 200 and gallery.body["entries"] == 3, gallery
        stream = wait_for(lambda: (s := api.stream("bikes")) and s["counters"]["published"].get("kafka", 0) > 0 and s,
                          60, "results of the bikes stream in Kafka", every_s=0.5)
        assert stream["state"] == "live", stream
        assert api.api("GET", "/cluster").status == 200, "started as a node of its cluster"
        # The gallery API reads images under gallery_image_root, by a path relative to it.
        added = api.api("POST", "/gallery/items", {"items": [{"path": "taxi_f36.jpg", "label": "taxi (api)"}]}, token=token)
        assert added.status == 201 and added.body["entries"] == 4, added
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log = log_path.read_text()
    assert "built 3 entries" in log and "vidrec: final: " in log, log[-3000:]
