"""deploy/: the Prometheus scrape config, the alert rules and the Grafana dashboard parse, have the shape their
tools expect, and use only metrics and labels that a live gateway's GET /metrics actually exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.settings import Settings
from gateway.observe.metrics import METRICS_PATH

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "comfy-gateway.json"

METRIC_NAME = re.compile(r"\bcomfy_gateway_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(comfy_gateway_[a-z0-9_]+)\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
# Labels Prometheus itself attaches to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"job", "instance", "le"}


def read_json_yaml(path: Path) -> Any:
    """The deploy files are YAML written in its JSON form, with comments only in a header: exact to parse."""
    lines = path.read_text(encoding="utf-8").splitlines()
    body = [line for line in lines if not line.startswith("#")]
    assert lines[: len(lines) - len(body)] == [line for line in lines if line.startswith("#")], (
        f"{path}: comments belong in the header"
    )
    return json.loads("\n".join(body))


def alert_rules() -> list[dict]:
    return [rule for group in read_json_yaml(ALERTS)["groups"] for rule in group["rules"]]


def dashboard_panels() -> list[dict]:
    return [p for p in json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"] if p["type"] != "row"]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p["targets"]]


# --- what a live gateway exports -----------------------------------------------------------------------------


@pytest.fixture
async def exported(start_backend, start_gateway) -> dict[str, set[str]]:
    """Series name → label names, from a real scrape after a little of every kind of traffic."""
    a, b = await start_backend("kerniegen"), await start_backend("comfyui")
    gateway = await start_gateway({"kerniegen": a.url, "comfyui": b.url})
    async with aiohttp.ClientSession() as http:
        async with http.post(gateway.url + "/prompt", json={"prompt": {}}) as r:
            assert r.status == 200
        async with http.get(gateway.url + "/queue") as r:
            assert r.status == 200
        async with http.ws_connect(gateway.url + "/ws") as ws:
            await ws.receive()
        async with http.get(gateway.url + METRICS_PATH) as r:
            text = await r.text()
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
        labels = set().union(*(s.labels for s in family.samples)) if family.samples else set()
        for suffix in suffixes.get(family.type, ("",)):
            series[family.name + suffix] = labels - {"le"}
    return series


def metric_problems(expr: str, exported: dict[str, set[str]]) -> list[str]:
    problems = [f"{name} is not exported" for name in METRIC_NAME.findall(expr) if name not in exported]
    used = {name for name in METRIC_NAME.findall(expr) if name in exported}
    for name, matchers in SELECTOR.findall(expr):
        for label in MATCHER_LABEL.findall(matchers):
            if name in exported and label not in exported[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r}")
    available = set().union(*(exported[name] for name in used)) | TARGET_LABELS if used else TARGET_LABELS
    for grouping in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in grouping.split(","))):
            if label not in available:
                problems.append(f"grouping by {label!r}, which no metric here has")
    if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
        problems.append("unbalanced brackets")
    return problems


def test_the_live_scrape_is_prefixed_and_names_base_units(exported) -> None:
    ours = [name for name in exported if not name.startswith("comfy_gateway_process_")]
    assert ours and all(name.startswith("comfy_gateway_") for name in ours)
    assert not [name for name in ours if re.search(r"_(ms|milliseconds|kb|mb|percent)(_|$)", name)]


async def test_alert_rules_use_only_exported_metrics_and_labels(exported) -> None:
    problems = {rule["alert"]: metric_problems(rule["expr"], exported) for rule in alert_rules()}
    assert {alert: p for alert, p in problems.items() if p} == {}


async def test_dashboard_uses_only_exported_metrics_and_labels(exported) -> None:
    problems = {expr: metric_problems(expr, exported) for expr in dashboard_exprs()}
    assert {expr: p for expr, p in problems.items() if p} == {}
    variable = json.loads(DASHBOARD.read_text())["templating"]["list"][1]
    assert metric_problems(variable["definition"].removeprefix("label_values(").rstrip(")").split(",")[0],
                           exported) == []


# --- alert rules -----------------------------------------------------------------------------------------------


def test_alert_rules_have_the_shape_prometheus_reads() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"ComfyGateway[A-Za-z]+", rule["alert"])
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


@pytest.mark.parametrize(
    ("topic", "needle"),
    [
        ("backend down", "comfy_gateway_backend_up"),
        ("error ratio", 'comfy_gateway_requests_total{code=~"5.."}'),
        ("upstream latency", "comfy_gateway_request_duration_seconds_bucket"),
        ("upstream errors", "comfy_gateway_upstream_errors_total"),
        ("websocket drops", "comfy_gateway_websocket_messages_dropped_total"),
    ],
)
def test_the_alerts_the_issue_asks_for_exist(topic: str, needle: str) -> None:
    assert any(needle in rule["expr"] for rule in alert_rules()), topic


# --- scrape config ---------------------------------------------------------------------------------------------


def test_scrape_config_scrapes_the_gateway_where_it_listens_and_loads_the_rules() -> None:
    config = read_json_yaml(SCRAPE_CONFIG)
    (job,) = config["scrape_configs"]
    defaults = Settings()
    assert job["job_name"] == "comfy-gateway"
    assert job["metrics_path"] == METRICS_PATH
    assert job["static_configs"][0]["targets"] == [f"{defaults.listen_host}:{defaults.listen_port}"]
    for rule_file in config["rule_files"]:
        assert (SCRAPE_CONFIG.parent / rule_file).is_file()
    assert any('job="comfy-gateway"' in rule["expr"] for rule in alert_rules())


# --- dashboard -------------------------------------------------------------------------------------------------


def test_dashboard_panels_are_laid_out_and_query_the_chosen_data_source() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "comfy-gateway" and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["backend"]["includeAll"] and variables["backend"]["multi"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"panel {panel['title']!r} overlaps another"
        cells |= mine
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["title"] and panel["description"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


@pytest.mark.parametrize(
    ("topic", "needle"),
    [
        ("requests by backend", "sum by (backend) (rate(comfy_gateway_requests_total"),
        ("errors by backend", 'code=~"5.."'),
        ("latency percentiles", "histogram_quantile(0.95, sum by (backend, le) (rate(comfy_gateway_request_duration"),
        ("selections by source", "sum by (source) (rate(comfy_gateway_selections_total"),
        ("queue depth", "comfy_gateway_queue_depth"),
        ("prompts per backend", "comfy_gateway_prompts_completed_total"),
        ("websocket connections", "comfy_gateway_websocket_connections"),
        ("backend filter", 'backend=~"$backend"'),
    ],
)
def test_the_dashboard_shows_what_the_issue_asks_for(topic: str, needle: str) -> None:
    assert any(needle in expr for expr in dashboard_exprs()), topic
