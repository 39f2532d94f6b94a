"""deploy/: the Prometheus scrape config, the alert rules and the Grafana dashboard parse, have the shape their
tools expect, and use only metrics and labels that a live gateway's GET /metrics actually exports."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.settings import Settings, load_settings
from gateway.observe.metrics import METRICS_PATH
from tests.ports import free_port

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


def read_pyproject() -> dict[str, Any]:
    return tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text(encoding="utf-8"))


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


def test_backend_down_fires_only_for_backends_the_operator_configured() -> None:
    """The built-in comfyui (127.0.0.1:8188) is always defined and, in a container, always down: a backend whose
    comfy_gateway_backend_configured is 0 must not fire (tests/test_serve_cli.py shows which backends get 0)."""
    (rule,) = [rule for rule in alert_rules() if rule["alert"] == "ComfyGatewayBackendDown"]
    down, _, only = rule["expr"].partition(" and on (backend) ")
    assert down == "max by (backend) (comfy_gateway_backend_up) == 0"
    assert only == "max by (backend) (comfy_gateway_backend_configured) == 1"


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


# --- the deploy kit: Dockerfile, Compose, Kubernetes, systemd ----------------------------------------------------
#
# Each file is parsed and checked against what the gateway really reads: every COMFY_GATEWAY_* variable names a
# setting, every file of settings loads, every port, path and command matches the settings model and the CLI. A
# renamed setting, route or flag breaks one of these.

ROOT = DEPLOY.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
NGINX = DEPLOY / "nginx" / "nginx.conf"
COMPOSE_SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus-compose.yml"
K8S = DEPLOY / "k8s"
SYSTEMD_UNIT = DEPLOY / "systemd" / "comfy-gateway.service"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "fixtures" / "compose-spec" / "compose-spec.json"
TOKEN = "x" * 40  # a token of allowed characters and length, for files whose own token is a placeholder
HEALTH_ROUTES = {"/gateway/health", "/gateway/ready"}


def known_env(env: dict[str, str]) -> list[tuple[str, str]]:
    """The COMFY_GATEWAY_* variables of `env` that name no setting (empty: all are known)."""
    from gateway.config.sources import gateway_env_vars, unknown_env_vars

    return unknown_env_vars(Settings, gateway_env_vars(env))


def app_routes() -> set[str]:
    from gateway.app import create_app

    app = create_app(Settings())
    return {resource.canonical for resource in app.router.resources()}


def serve_args_parse(args: list[str]) -> Any:
    from gateway.cli import build_parser

    return build_parser().parse_args(args)


def kerniegen_args_parse(args: list[str]) -> Any:
    from gateway.kerniegen.cli import build_parser

    return build_parser().parse_args(args)


def url_port(url: str) -> int:
    from yarl import URL

    port = URL(url).port
    assert port is not None
    return port


# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def test_the_image_is_built_in_two_stages_from_the_wheel_with_the_web_ui_and_redis() -> None:
    instructions = dockerfile_instructions()
    bases = [args for instruction, args in instructions if instruction == "FROM"]
    assert len(bases) == 2 and bases[0].endswith(" AS build") and all("-slim" in base for base in bases)
    runs = [args for instruction, args in instructions if instruction == "RUN"]
    assert any("pip wheel" in run and "'.[frontend]'" in run for run in runs)
    # the request path compiled (setup.py), with a compiler in the build stage only
    assert any(run.startswith("COMFY_GATEWAY_COMPILE=1 pip wheel") for run in runs)
    assert any("gcc" in run for run in runs[: runs.index(next(r for r in runs if "pip wheel" in r))])
    assert any("setup.py" in args.split() for instruction, args in instructions if instruction == "COPY")
    assert any("--no-index --find-links /wheels 'comfy-gateway[frontend]'" in run for run in runs)
    assert any(line.startswith("--from=build /wheels") for i, line in instructions if i == "COPY")
    # redis is a dependency of every install, so the wheel brings it: no extra needed
    assert any(dependency.startswith("redis") for dependency in read_pyproject()["project"]["dependencies"])
    for instruction, args in instructions:
        if instruction == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            assert all((ROOT / source).exists() for source in sources), args


def test_the_image_runs_as_a_user_other_than_root_and_starts_serve() -> None:
    instructions = dict(reversed(dockerfile_instructions()))  # the first of each
    users = [args for instruction, args in dockerfile_instructions() if instruction == "USER"]
    assert users and users[-1] not in {"root", "0"}
    assert json.loads(instructions["ENTRYPOINT"]) == ["comfy-gateway"]
    command = json.loads(instructions["CMD"])
    assert serve_args_parse(command).command == "serve"


def test_the_image_environment_names_settings_and_exposes_the_listen_port() -> None:
    env = dockerfile_env()
    assert known_env(env) == []
    settings = load_settings(None, env).settings
    exposed = [int(args) for instruction, args in dockerfile_instructions() if instruction == "EXPOSE"]
    assert exposed == [settings.listen_port] and settings.listen_host == "0.0.0.0"


def healthcheck_command() -> list[str]:
    (args,) = [args for instruction, args in dockerfile_instructions() if instruction == "HEALTHCHECK"]
    return json.loads(args[args.index("CMD") + 3 :].strip())


async def test_the_health_check_asks_the_gateway_at_the_port_the_env_var_sets(start_backend, start_gateway) -> None:
    from gateway.config.sources import env_var_of

    command = healthcheck_command()
    assert command[:2] == ["python", "-c"] and "/gateway/health" in command[2]
    assert f"os.environ.get('{env_var_of(('listen_port',))}'" in command[2]
    backend = await start_backend("alpha")
    gateway = await start_gateway({"alpha": backend.url})
    port = gateway.url.rsplit(":", 1)[1]

    async def check(env_port: str) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", command[2], env={**os.environ, env_var_of(("listen_port",)): env_port},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        return await process.wait()

    assert await check(port) == 0
    assert await check(str(free_port())) != 0


def test_the_docker_context_leaves_out_what_the_image_does_not_need() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()}
    assert {".git", ".venv", "tests", "bench"} <= ignored
    assert not {"gateway", "config", "pyproject.toml", "setup.py", "README.md"} & ignored
    assert "**/*.so" in ignored


# Compose


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def interpolated(value: str) -> str:
    """A Compose value with its ${VAR:?message} and ${VAR:-default} filled as an operator would."""
    samples = {"COMFYUI_URL": "http://gpu-box:8188", "ADMIN_TOKEN": TOKEN}
    return re.sub(
        r"\$\{(\w+)(?::[?-][^}]*)?\}", lambda m: samples[m.group(1)], value
    )


def gateway_services() -> dict[str, dict[str, Any]]:
    return {
        name: service for name, service in compose()["services"].items() if service.get("command") is None
        and service.get("image", "").startswith("comfy-gateway")
    }


def test_the_compose_file_is_valid_against_the_compose_spec() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose()), key=str)
    assert [error.message for error in errors] == []


def test_compose_runs_two_gateway_replicas_whose_settings_load(tmp_path: Path) -> None:
    services = gateway_services()
    assert len(services) == 2
    for name, service in services.items():
        env = {key: interpolated(str(value)) for key, value in service["environment"].items()}
        assert known_env(env) == [], name
        (mount,) = [v for v in service["volumes"] if v.endswith(env["COMFY_GATEWAY_CONFIG"] + ":ro")]
        source = (DEPLOY / mount.split(":")[0]).resolve()
        assert source.is_file()
        settings = load_settings(None, {**env, "COMFY_GATEWAY_CONFIG": str(source)}).settings
        assert settings.store.kind == "redis" and settings.listen_host == "0.0.0.0"
        assert not any(backend.embedded for backend in settings.backends.values())  # KernieGen is its own service
        assert float(service["stop_grace_period"].rstrip("s")) > settings.limits.drain_seconds
        assert set(service["depends_on"]) <= set(compose()["services"])


def compose_settings() -> Settings:
    service = next(iter(gateway_services().values()))
    env = {key: interpolated(str(value)) for key, value in service["environment"].items()}
    return load_settings(None, {**env, "COMFY_GATEWAY_CONFIG": str(ROOT / "config" / "gateway.toml")}).settings


def test_compose_wires_redis_kerniegen_and_the_load_balancer_to_the_gateways_settings() -> None:
    services = compose()["services"]
    settings = compose_settings()
    redis_host = settings.store.redis_url.split("//", 1)[1].split(":", 1)[0]
    assert redis_host in services and "healthcheck" in services[redis_host]
    kerniegen_url = settings.backends["kerniegen"].url
    kerniegen = services[kerniegen_url.split("//", 1)[1].split(":", 1)[0]]
    args = kerniegen_args_parse(kerniegen["command"][1:])
    assert kerniegen["command"][0] == "kerniegen" and (args.host, args.port) == ("0.0.0.0", url_port(kerniegen_url))
    nginx = NGINX.read_text(encoding="utf-8")
    upstreams = re.findall(r"^\s*server\s+([\w.-]+):(\d+);", nginx, re.MULTILINE)
    assert sorted(upstreams) == sorted((name, str(settings.listen_port)) for name in gateway_services())
    assert f"listen {settings.listen_port};" in nginx
    assert "proxy_set_header Upgrade $http_upgrade;" in nginx  # WebSocket /ws
    lb = services["lb"]
    assert any(volume.startswith("./nginx/nginx.conf:") for volume in lb["volumes"])
    assert f"{settings.listen_port}:{settings.listen_port}" in lb["ports"]


def test_compose_mounts_files_that_exist_and_prometheus_scrapes_every_replica() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
    config = read_json_yaml(COMPOSE_SCRAPE_CONFIG)
    (job,) = config["scrape_configs"]
    settings = compose_settings()
    assert job["metrics_path"] == METRICS_PATH
    assert sorted(job["static_configs"][0]["targets"]) == sorted(
        f"{name}:{settings.listen_port}" for name in gateway_services()
    )
    for rule_file in config["rule_files"]:
        assert (COMPOSE_SCRAPE_CONFIG.parent / rule_file).is_file()
    for path in (DEPLOY / "grafana" / "provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["apiVersion"] == 1


# Kubernetes


def manifests() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted(K8S.glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if document
    ]


def manifest(kind: str, name: str = "comfy-gateway") -> dict[str, Any]:
    (found,) = [m for m in manifests() if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def test_the_kubernetes_manifests_are_valid_against_the_api_schemas() -> None:
    kinds = {m["kind"] for m in manifests()}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ServiceMonitor"} <= kinds
    for document in manifests():
        if document["kind"] == "ServiceMonitor":
            continue  # a custom resource of the Prometheus Operator: its shape is checked below
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def gateway_container() -> dict[str, Any]:
    (container,) = manifest("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def k8s_settings(tmp_path: Path) -> Settings:
    """The settings a gateway pod runs with: the ConfigMap's file, the container's env, the Secret's values."""
    container = gateway_container()
    secret = manifest("Secret")["stringData"]
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    for key, text in manifest("ConfigMap")["data"].items():
        (config_dir / key).write_text(text, encoding="utf-8")
    token_file = tmp_path / "admin_token"
    token_file.write_text(TOKEN)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == manifest("Secret")["metadata"]["name"] and ref["key"] in secret
            env[item["name"]] = secret[ref["key"]]
    assert known_env(env) == []
    assert env["COMFY_GATEWAY_CONFIG"].startswith(mounts["config"] + "/")
    assert env["COMFY_GATEWAY_SECURITY__ADMIN_TOKEN_FILE"].startswith(mounts["secrets"] + "/")
    env["COMFY_GATEWAY_CONFIG"] = str(config_dir / Path(env["COMFY_GATEWAY_CONFIG"]).name)
    env["COMFY_GATEWAY_SECURITY__ADMIN_TOKEN_FILE"] = str(token_file)
    return load_settings(None, env).settings


def test_the_gateway_pods_settings_load_and_match_the_ports_probes_and_grace_period(tmp_path: Path) -> None:
    settings = k8s_settings(tmp_path)
    assert settings.store.kind == "redis" and settings.listen_host == "0.0.0.0"
    assert not any(backend.embedded for backend in settings.backends.values())
    container = gateway_container()
    pod = manifest("Deployment")["spec"]["template"]["spec"]
    assert serve_args_parse(container["args"]).command == "serve"
    (port,) = container["ports"]
    assert port["containerPort"] == settings.listen_port
    routes = app_routes()
    for probe, path in (("readinessProbe", "/gateway/ready"), ("livenessProbe", "/gateway/health")):
        assert container[probe]["httpGet"] == {"path": path, "port": port["name"]} and path in routes
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    pause = float(re.search(r"sleep\((\d+(?:\.\d+)?)\)", pre_stop[-1]).group(1))
    assert pod["terminationGracePeriodSeconds"] > pause + settings.limits.drain_seconds
    assert pod["enableServiceLinks"] is False  # else COMFY_GATEWAY_SERVICE_HOST & co. are unknown settings
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    rolling = manifest("Deployment")["spec"]["strategy"]
    assert rolling["type"] == "RollingUpdate" and rolling["rollingUpdate"]["maxUnavailable"] == 0


def test_the_service_autoscaler_budget_and_monitor_point_at_the_gateway(tmp_path: Path) -> None:
    settings = k8s_settings(tmp_path)
    labels = manifest("Deployment")["spec"]["template"]["metadata"]["labels"]
    port_name = gateway_container()["ports"][0]["name"]
    service = manifest("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    (service_port,) = service["spec"]["ports"]
    assert (service_port["port"], service_port["targetPort"]) == (settings.listen_port, port_name)
    hpa = manifest("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["kind"] == "Deployment" and hpa["scaleTargetRef"]["name"] == "comfy-gateway"
    assert hpa["minReplicas"] >= 2
    assert manifest("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    monitor = manifest("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (service_port["name"], METRICS_PATH)


def test_kerniegen_runs_once_where_the_gateways_look_for_it(tmp_path: Path) -> None:
    settings = k8s_settings(tmp_path)
    url = settings.backends["kerniegen"].url
    service = manifest("Service", "kerniegen")
    assert url.split("//", 1)[1].split(":", 1)[0] == service["metadata"]["name"]
    assert service["spec"]["ports"][0]["port"] == url_port(url)
    (container,) = manifest("Deployment", "kerniegen")["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "kerniegen"
    args = kerniegen_args_parse(container["args"][1:])
    assert args.host == "0.0.0.0" and args.port == container["ports"][0]["containerPort"] == url_port(url)


# systemd


def unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) in order; a key may repeat (Environment=)."""
    entries, section = [], ""
    for line in SYSTEMD_UNIT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, value = line.split("=", 1)
        entries.append((section, key, value))
    return entries


def test_the_systemd_unit_starts_serve_with_known_settings_and_waits_out_the_drain() -> None:
    entries = unit_entries()
    assert {section for section, _, _ in entries} == {"Unit", "Service", "Install"}
    service = {key: value for section, key, value in entries if section == "Service"}
    exec_start = service["ExecStart"].split()
    assert exec_start[0].endswith("/comfy-gateway")
    args = serve_args_parse(exec_start[1:])
    env = dict(value.split("=", 1) for section, key, value in entries if key == "Environment")
    assert known_env(env) == []
    assert set(env) >= {"COMFY_GATEWAY_CONFIG"}
    defaults = Settings()
    assert int(service["TimeoutStopSec"]) > defaults.limits.drain_seconds
    assert service["KillSignal"] == "SIGTERM" and service["RestartPreventExitStatus"] == "2"
    assert args.command == "serve" and (args.workers or 1) >= 1
