"""The Grafana dashboard (dashboards/vidrec.json) is valid for Grafana and its queries answer.

1. `scripts/check-dashboard` type-checks it against Grafana's own schema (@grafana/schema with tsc) and rejects a
   copy with an unknown key or a wrong type, naming the key: the check can fail.
2. Every Prometheus query names only metrics, labels and label values documented in docs/metrics.md (static).
3. Live: the real `vidrec serve` (a live RTSP camera and a file, Kafka and Redis sinks, a gallery) scraped every
   second by a real Prometheus; every panel query, run through Prometheus's HTTP API, returns data; the stream
   variable lists the streams; the Infinity panel's URL answers labels from the running service; and
   `promtool check metrics` accepts a scrape of /metrics.

Every wait polls a condition with a deadline; deadlines are bounds for a slow machine, not timing claims.
"""
from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_helpers import sample_gallery
from tests.polling import wait_for
from tests.prometheus_helpers import PrometheusServer, promtool_check_metrics
from tests.serve_helpers import REPO, ServeProcess, free_port

DASHBOARD = REPO / "dashboards" / "vidrec.json"
METRICS_DOC = REPO / "docs" / "metrics.md"
CHECK = REPO / "scripts" / "check-dashboard"
PROMETHEUS_TYPE = "prometheus"
INFINITY_TYPE = "yesoreyeram-infinity-datasource"
MODEL_ENV_HINT = "VIDREC_MODEL_DIR (the models) and a running scripts/services"


# ---- the dashboard's panels and targets -----------------------------------------------------------------------


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    return json.loads(path.read_text())


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def targets_of(dashboard: dict[str, Any], ds_type: str) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) of every target whose data source (its own, else its panel's) is of ``ds_type``."""
    found = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            ds = target.get("datasource") or panel.get("datasource") or {}
            if ds.get("type") == ds_type:
                found.append((panel["title"], target))
    return found


def prometheus_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) of every PromQL query: panel targets and the query variables."""
    exprs = [(f"panel {title!r} target {t['refId']}", t["expr"]) for title, t in targets_of(dashboard, PROMETHEUS_TYPE)]
    for var in dashboard.get("templating", {}).get("list", []):
        if var["type"] == "query" and (var.get("datasource") or {}).get("type") == PROMETHEUS_TYPE:
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            exprs.append((f"variable {var['name']!r}", query))
    return exprs


# ---- 1. the schema check ---------------------------------------------------------------------------------------


def check_dashboard(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CHECK), str(path)], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_the_dashboard_satisfies_grafanas_schema() -> None:
    done = check_dashboard(DASHBOARD)
    assert done.returncode == 0, f"scripts/check-dashboard failed:\n{done.stdout}\n{done.stderr}"
    assert "satisfies @grafana/schema" in done.stdout


def _first_timeseries(d: dict[str, Any]) -> dict[str, Any]:
    return next(p for p in all_panels(d) if p["type"] == "timeseries")


def _set(getter: Callable[[dict[str, Any]], dict[str, Any]], key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: getter(d).__setitem__(key, value)


# (what is wrong, the mutation, a fragment tsc's message must hold: the key or the offending type)
MUTATIONS = [
    ("unknown key in a panel", _set(_first_timeseries, "colour", "red"), "colour"),
    ("unknown key in a panel's legend options",
     _set(lambda d: _first_timeseries(d)["options"]["legend"], "shown", True), "shown"),
    ("unknown key in a field config's custom part",
     _set(lambda d: _first_timeseries(d)["fieldConfig"]["defaults"]["custom"], "lineWidht", 2), "lineWidht"),
    ("unknown key in a target", _set(lambda d: _first_timeseries(d)["targets"][0], "exprr", "up"), "exprr"),
    ("unknown key in a variable", _set(lambda d: d["templating"]["list"][0], "definition", "x"), "definition"),
    ("gridPos.h a string", _set(lambda d: _first_timeseries(d)["gridPos"], "h", "8"),
     "Type 'string' is not assignable to type 'number'"),
    ("a value outside an enum", _set(lambda d: _first_timeseries(d)["options"]["legend"], "displayMode", "lists"),
     "'\"lists\"' is not assignable"),
]


@pytest.mark.parametrize("what,mutate,fragment", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_the_check_rejects_a_broken_dashboard(tmp_path: Path, what: str, mutate: Callable[[dict[str, Any]], None],
                                               fragment: str) -> None:
    broken = copy.deepcopy(load_dashboard())
    mutate(broken)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken, indent=2))
    done = check_dashboard(path)
    assert done.returncode == 1, f"{what}: not rejected (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    assert fragment in done.stderr, f"{what}: {fragment!r} not in tsc's message:\n{done.stderr}"
    assert f"{path}(" in done.stderr, f"the message does not point into {path}:\n{done.stderr}"


def test_the_check_rejects_a_missing_schema_version_and_non_json(tmp_path: Path) -> None:
    broken = load_dashboard()
    del broken["schemaVersion"]
    path = tmp_path / "no-version.json"
    path.write_text(json.dumps(broken))
    done = check_dashboard(path)
    assert done.returncode == 1 and "'schemaVersion' is missing" in done.stderr, done.stderr
    path.write_text(DASHBOARD.read_text()[:-20])
    done = check_dashboard(path)
    assert done.returncode == 1 and "not JSON" in done.stderr, done.stderr


# ---- 2. only documented metrics ------------------------------------------------------------------------------


# docs/metrics.md says once, above its tables, that every series carries this label too.
NODE_LABEL_DOC = "Every series also carries `node`"


def documented_metrics() -> dict[str, dict[str, Any]]:
    """name -> {"type", "labels": set, "values": set of backticked words in the row} from docs/metrics.md's tables
    (with ``node``, which every series carries)."""
    metrics = {}
    text = METRICS_DOC.read_text()
    every = {"node"} if NODE_LABEL_DOC in text else set()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not re.fullmatch(r"`vidrec_\w+`", cells[0]):
            continue
        metrics[cells[0].strip("`")] = {
            "type": cells[1],
            "labels": set(re.findall(r"`(\w+)`", cells[2])) | every,
            "values": set(re.findall(r"`([^`]+)`", cells[3])),
        }
    return metrics


def series_names(metrics: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every series name Prometheus gets -> its documented metric (histograms: _bucket, _sum, _count)."""
    names = {}
    for name, info in metrics.items():
        if info["type"] == "histogram":
            names.update({f"{name}{suffix}": name for suffix in ("_bucket", "_sum", "_count")})
        else:
            names[name] = name
    return names


PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                   "offset", "inf", "nan"}


def promql_parts(expr: str) -> tuple[set[str], set[str], set[tuple[str, str]]]:
    """(series names, label names, (label, value) of equality matchers) that a PromQL expression uses."""
    labels: set[str] = set()
    equalities: set[tuple[str, str]] = set()
    variable = re.fullmatch(r"label_values\((.+),\s*(\w+)\s*\)", expr.strip())  # Grafana's variable query
    if variable:
        expr = variable.group(1)
        labels.add(variable.group(2))
    for body in re.findall(r"\{([^}]*)\}", expr):
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
            labels.add(label)
            if op == "=":
                equalities.add((label, value))
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels.update(x.strip() for x in group.split(",") if x.strip())
    rest = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    rest = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", rest)
    names = {m.group(1) for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", rest)}
    return names - PROMQL_KEYWORDS, labels, equalities


def test_promql_parts_reads_names_labels_and_values() -> None:
    names, labels, equalities = promql_parts(
        'histogram_quantile(0.95, sum by (stream, le) (rate(vidrec_e2e_latency_seconds_bucket{stream=~"$stream",'
        ' state="live"}[$__rate_interval]))) / on (stream) group_left up')
    assert names == {"vidrec_e2e_latency_seconds_bucket", "up"}
    assert labels == {"stream", "le", "state"}
    assert equalities == {("state", "live")}
    assert promql_parts("label_values(vidrec_stream_state, stream)") == ({"vidrec_stream_state"}, {"stream"}, set())


def test_every_query_uses_only_documented_metrics_and_labels() -> None:
    metrics = documented_metrics()
    assert len(metrics) >= 25 and metrics["vidrec_e2e_latency_seconds"]["type"] == "histogram", "docs table not parsed"
    names = series_names(metrics)
    exprs = prometheus_exprs(load_dashboard())
    assert len(exprs) >= 20
    problems = []
    used = set()
    for where, expr in exprs:
        series, labels, equalities = promql_parts(expr)
        if not series:
            problems.append(f"{where}: no metric in {expr!r}")
        unknown = series - set(names)
        if unknown:
            problems.append(f"{where}: undocumented metric(s) {sorted(unknown)}")
        known = [names[s] for s in series if s in names]
        used.update(known)
        allowed = set().union(*(metrics[m]["labels"] for m in known)) if known else set()
        if any(metrics[m]["type"] == "histogram" for m in known):
            allowed.add("le")
        if labels - allowed:
            problems.append(f"{where}: label(s) {sorted(labels - allowed)} not documented for {sorted(known)}")
        for label, value in equalities:
            if not any(value in metrics[m]["values"] for m in known if label in metrics[m]["labels"]):
                problems.append(f"{where}: {label}={value!r} is not a documented value")
    assert not problems, "\n".join(problems)
    # Every selector follows the node variable, so picking a node shows that node alone.
    unfiltered = [(where, expr) for where, expr in exprs if where != "variable 'node'"
                  for sel in re.findall(r"\bvidrec_\w+(\{[^}]*\})?", expr) if 'node=~"$node"' not in sel]
    assert not unfiltered, unfiltered
    # The panels the dashboard promises are there.
    for metric in ("vidrec_stream_state", "vidrec_frames_processed_total", "vidrec_frames_dropped_total",
                   "vidrec_e2e_latency_seconds", "vidrec_batch_size", "vidrec_batch_wait_seconds",
                   "vidrec_inference_seconds", "vidrec_sink_errors_total", "vidrec_decode_errors_total",
                   "vidrec_stream_reconnects_total", "vidrec_gallery_version", "vidrec_gallery_entries",
                   "vidrec_process_cpu_seconds_total", "vidrec_process_resident_memory_bytes"):
        assert metric in used, f"no panel queries {metric}"
    per_node = [t["expr"] for title, t in targets_of(load_dashboard(), PROMETHEUS_TYPE) if title == "Streams per node"]
    assert per_node and all(re.search(r"\bby \(node\)", e) for e in per_node), per_node


def test_a_query_with_an_undocumented_metric_is_caught() -> None:
    names = series_names(documented_metrics())
    series, _, _ = promql_parts('sum(rate(vidrec_frames_procesed_total{stream=~"$stream"}[5m]))')
    assert series - set(names) == {"vidrec_frames_procesed_total"}


def test_the_recognitions_panel_reads_the_service_through_infinity() -> None:
    dashboard = load_dashboard()
    (title, target), = targets_of(dashboard, INFINITY_TYPE)
    assert (target["type"], target["source"], target["url"], target["root_selector"]) == (
        "json", "url", "/recognitions", "labels"), title
    assert [(c["selector"], c["type"]) for c in target["columns"]] == [("label", "string"), ("count", "number")]
    assert target["datasource"]["uid"] == "vidrec-api"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["stream"]["multi"] and variables["stream"]["includeAll"]
    assert variables["node"]["multi"] and variables["node"]["includeAll"]
    assert variables["node"]["query"]["query"] == "label_values(vidrec_info, node)"


def datasource_refs(node: Any) -> Iterator[dict[str, Any]]:
    """Every {"type", "uid"} data source reference anywhere in the dashboard."""
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and "uid" in ds:
            yield ds
        for value in node.values():
            yield from datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from datasource_refs(value)


def test_the_provisioning_matches_the_dashboard_and_the_compose_mounts() -> None:
    provisioning = REPO / "dashboards" / "grafana" / "provisioning"
    sources = yaml.safe_load((provisioning / "datasources" / "datasources.yml").read_text())["datasources"]
    by_uid = {s["uid"]: s for s in sources}
    refs = {(r["type"], r["uid"]) for r in datasource_refs(load_dashboard()) if r["type"] != "grafana"}
    assert refs == {(PROMETHEUS_TYPE, "prometheus"), (INFINITY_TYPE, "vidrec-api")}
    for ds_type, uid in refs:
        assert uid in by_uid and by_uid[uid]["type"] == ds_type, (uid, ds_type)
    assert by_uid["prometheus"]["isDefault"] and by_uid["prometheus"]["url"] == "http://prometheus:9090"
    api = by_uid["vidrec-api"]
    assert api["url"] == "http://vidrec:8080" and api["url"] in api["jsonData"]["allowedHosts"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert provider["type"] == "file"
    # docker-compose.yml mounts the provisioning folders and puts vidrec.json in the provider's folder.
    grafana = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["grafana"]
    mounts = {src: dst.removesuffix(":ro") for src, dst in (v.split(":", 1) for v in grafana["volumes"])}
    assert mounts["./dashboards/vidrec.json"] == f"{provider['options']['path']}/vidrec.json", mounts
    assert mounts["./dashboards/grafana/provisioning/datasources"] == "/etc/grafana/provisioning/datasources"
    assert mounts["./dashboards/grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"


# ---- 3. live: vidrec serve + Prometheus ----------------------------------------------------------------------

RATE_INTERVAL = "10s"
# Metrics whose healthy value is 0: a panel query on these alone passes with zeros; any other must show a positive value.
ZERO_IS_HEALTHY = {"vidrec_sink_errors_total", "vidrec_decode_errors_total", "vidrec_frames_dropped_total",
                   "vidrec_stream_reconnects_total", "vidrec_worker_restarts_total", "vidrec_sink_dropped_total",
                   "vidrec_sink_spool_results"}


def substitute(expr: str) -> str:
    """Grafana's variables as the dashboard would send them with "All" streams and a 1 s scrape interval."""
    for name, value in (("$__rate_interval", RATE_INTERVAL), ("$__interval", "2s"), ("$__range", "1m"),
                        ('"$stream"', '".*"'), ("${stream:regex}", ".*"), ("$stream", ".*"), ("$node", ".*")):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    return [v for v in (float(r["value"][1]) for r in result) if math.isfinite(v)]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


@pytest.mark.timeout(480)
def test_every_panel_query_returns_data_from_a_live_service(
    tmp_path: Path, rtsp_base: str, bikes_mp4: Path, kafka_bootstrap: str, redis_url: str, model_dir: Path
) -> None:
    # A gallery, so that objects get names (GET /recognitions) and the "search" model runs.
    gallery = sample_gallery(tmp_path / 'index')
    port = free_port()
    serve = ServeProcess(
        ["--stream", f"bikes={rtsp_base}/bikes", "--stream", f"file={bikes_mp4}",
         "--kafka", kafka_bootstrap, "--topic", f"vidrec-dash-{uuid.uuid4().hex[:8]}", "--redis", redis_url,
         "-o", f"Redis.key_prefix=vd{uuid.uuid4().hex[:6]}", "-o", "Cluster.node=dash-node", *gallery],
        log_path=tmp_path / "serve.log", http_port=port,
    )
    prometheus = PrometheusServer(tmp_path, [f"127.0.0.1:{port}"], scrape_interval_s=1)
    try:
        wait_for(serve.healthy, 120, f"healthy service (needs {MODEL_ENV_HINT})", every_s=0.2)
        prometheus.wait_ready(60)
        prometheus.wait_target_up(60)

        # promtool accepts what the service exposes.
        scrape = get_text(serve.base + "/metrics")
        linted = promtool_check_metrics(scrape)
        assert linted.returncode == 0, f"promtool check metrics:\n{linted.stdout}{linted.stderr}"

        # The stream variable lists both streams; the node variable the service's node.
        wait_for(lambda: {"bikes", "file"} <= set(prometheus.label_values("stream", "vidrec_stream_state")), 60,
                 "both streams in label_values(vidrec_stream_state, stream)", every_s=0.5)
        assert prometheus.label_values("node", "vidrec_info") == ["dash-node"]

        # Every panel query answers once a few scrapes are in: a finite value, a positive one unless zero is the
        # healthy value of what it counts (errors, drops...), and every stream where it is grouped by stream.
        dashboard = load_dashboard()
        names = series_names(documented_metrics())
        pending = {}
        for where, expr in prometheus_exprs(dashboard):
            if expr.startswith("label_values("):
                continue
            series, _, _ = promql_parts(expr)
            pending[substitute(expr)] = {
                "where": where, "need_positive": not {names[s] for s in series} <= ZERO_IS_HEALTHY,
                "streams": {"bikes", "file"} if re.search(r"\bby \([^)]*\bstream\b", expr) else set(),
            }
        last: dict[str, list[dict[str, Any]]] = {}

        def all_answered() -> bool:
            for expr, want in list(pending.items()):
                result = last[expr] = prometheus.query(expr)
                values = finite_values(result)
                want["streams"] -= {r["metric"].get("stream") for r in result}
                if values and (not want["need_positive"] or max(values) > 0):
                    want["need_positive"] = False
                    if not want["streams"]:
                        del pending[expr]
            return not pending

        try:
            wait_for(all_answered, 150, "data for every panel query", every_s=1.0)
        except pytest.fail.Exception:
            def missing(expr: str, want: dict[str, Any]) -> str:
                values = finite_values(last.get(expr) or [])
                parts = ["a finite value" if not values else "a positive value" if want["need_positive"] else ""]
                parts += [f"stream {s}" for s in sorted(want["streams"])]
                return ", ".join(p for p in parts if p)

            lines = [f"{want['where']}: {expr}\n    missing: {missing(expr, want)}\n"
                     f"    last answer: {json.dumps(last.get(expr))[:400]}" for expr, want in pending.items()]
            pytest.fail("panel queries without the data they should show after 150s:\n" + "\n".join(lines))

        # The Infinity panel: its URL on the service's base URL, its root selector and columns.
        (_, target), = targets_of(dashboard, INFINITY_TYPE)
        root = target["root_selector"]
        columns = {c["selector"]: c["type"] for c in target["columns"]}

        def recognized() -> list[dict[str, Any]]:
            return get_json(serve.base + target["url"]).get(root) or []

        rows = wait_for(recognized, 120, f"labels from {target['url']}", every_s=1.0)
        for row in rows:
            for selector, kind in columns.items():
                assert selector in row, row
                assert isinstance(row[selector], {"string": str, "number": (int, float)}[kind]), row
        assert all(row["count"] > 0 for row in rows), rows
        gallery_labels = {"taxi", "cyclist", "parked bicycle", "(other)"}
        assert {row["label"] for row in rows} <= gallery_labels, rows

        assert serve.terminate() == 0, serve.log_text()[-4000:]
    finally:
        serve.kill()
        prometheus.stop()
