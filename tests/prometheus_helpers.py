"""A real Prometheus server (Debian's `prometheus`, 2.42) for a test: a temporary config that scrapes given targets,
its TSDB in the test's tmp dir, an HTTP API on a free loopback port; and `promtool check metrics`.

    with PrometheusServer(tmp_path, ["127.0.0.1:8080"]) as prom:
        prom.wait_ready(60)
        prom.wait_target_up(60)
        prom.query('rate(vidrec_frames_processed_total[10s])')   # the API's `data.result` list
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.polling import wait_for
from tests.serve_helpers import free_port


# (metric name, sorted (label, value) pairs) -> value: one scrape, for looking samples up by name and labels.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples(text: str, node: str | None = None) -> Samples:
    """Every sample of a /metrics text (histograms give their _bucket, _sum and _count samples), keyed without
    the ``node`` label, which every series of one vidrec node carries with one value (checked here; ``node``:
    which)."""
    samples: Samples = {}
    nodes: set[str | None] = set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = dict(s.labels)
            nodes.add(labels.pop("node", None))
            samples[(s.name, tuple(sorted(labels.items())))] = s.value
    assert len(nodes) == 1 and None not in nodes, f"every series carries the same node label, got {nodes}"
    assert node is None or nodes == {node}, f"node label {nodes}, expected {node!r}"
    return samples


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"`{name}` not found on PATH: install Debian's prometheus package (scripts/setup does)"
    return path


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    """`promtool check metrics` on a scrape's text (it lints names, types, units and help strings)."""
    return subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                          timeout=60)


class PrometheusServer:
    """`prometheus` scraping ``targets`` (host:port, path /metrics) every ``scrape_interval_s``."""

    def __init__(self, workdir: Path, targets: list[str], *, scrape_interval_s: int = 1, job: str = "vidrec") -> None:
        self.workdir = workdir / "prometheus"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.job = job
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = self.workdir / "prometheus.yml"
        interval = f"{scrape_interval_s}s"
        config.write_text(json.dumps({  # JSON is YAML
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
            "scrape_configs": [{"job_name": job, "metrics_path": "/metrics",
                                "static_configs": [{"targets": targets}]}],
        }, indent=2))
        self.log_path = self.workdir / "prometheus.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )

    def __enter__(self) -> "PrometheusServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text()

    def _get(self, path: str, params: dict[str, str] | None = None) -> tuple[int, bytes]:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def api(self, path: str, params: dict[str, str] | None = None) -> Any:
        """``data`` of a successful API answer; fails the test on an error answer (a bad query, say)."""
        status, body = self._get(path, params)
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            pytest.fail(f"Prometheus {path} {params}: HTTP {status}: {answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
        try:
            return self._get("/-/ready")[0] == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        wait_for(self.ready, timeout_s, "ready Prometheus", every_s=0.2)

    def targets(self) -> list[dict[str, Any]]:
        return self.api("/api/v1/targets")["activeTargets"]

    def wait_target_up(self, timeout_s: float) -> None:
        def up() -> bool:
            targets = [t for t in self.targets() if t["labels"].get("job") == self.job]
            return bool(targets) and all(t["health"] == "up" for t in targets)

        try:
            wait_for(up, timeout_s, "scrape target up", every_s=0.5)
        except pytest.fail.Exception:
            pytest.fail(f"scrape target not up within {timeout_s:g}s: {json.dumps(self.targets(), indent=1)}")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result: a list of {"metric": labels, "value": [t, "v"]} (vectors) or a scalar's."""
        data = self.api("/api/v1/query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def label_values(self, label: str, match: str) -> list[str]:
        return self.api(f"/api/v1/label/{label}/values", {"match[]": match})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
