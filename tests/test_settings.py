"""Settings: defaults, file and env layering, per-value sources, and every refusal naming keys and sources."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config.rules import normalize_backend_url
from gateway.config.settings import BackendSettings, ConfigError, Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED_CONFIG = REPO_ROOT / "config" / "gateway.toml"

TWO_BACKENDS = """
default_backend = "kerniegen"
[backends.kerniegen]
url = "http://127.0.0.1:8189"
embedded = true
[backends.comfyui]
url = "http://gpu-box:8188"
[backends.comfyui.timeouts]
connect_seconds = 2.0
read_seconds = 60.0
"""


@pytest.fixture
def write_config(tmp_path: Path):
    def write(text: str, name: str = "gateway.toml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


def problems_of(excinfo: pytest.ExceptionInfo[ConfigError]) -> tuple[str, ...]:
    return excinfo.value.problems


def test_built_in_defaults_with_no_file_and_no_env() -> None:
    loaded = load_settings(env={})

    settings = loaded.settings
    assert (settings.listen_host, settings.listen_port) == ("127.0.0.1", 8190)
    assert settings.default_backend == "kerniegen"
    assert dict(settings.backends) == {
        "kerniegen": BackendSettings(url="http://127.0.0.1:8189", embedded=True, kind="kerniegen"),
        "comfyui": BackendSettings(url="http://127.0.0.1:8188", kind="comfyui"),
    }
    assert settings.store.kind == "sqlite"
    assert settings.max_body_bytes == 100 * 1024 * 1024
    assert loaded.config_path is None
    assert set(loaded.sources.values()) == {"default"}
    assert "backends.comfyui.timeouts.read_seconds" in loaded.sources


def test_documented_config_loads_as_is_and_equals_the_defaults() -> None:
    loaded = load_settings(DOCUMENTED_CONFIG, env={})

    assert loaded.settings == Settings()
    assert loaded.sources["backends.comfyui.url"] == str(DOCUMENTED_CONFIG)


def _key_patterns(keys: list[str]) -> set[str]:
    """backends.<name>.x -> backends.*.x, so one documented backend documents the shape for all."""
    return {re.sub(r"^backends\.[^.]+\.", "backends.*.", key) for key in keys}


def _documented_keys(text: str) -> list[str]:
    """Keys assigned in the file, active or commented out (`# key = value`), with their table prefix."""
    keys, table = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if header := re.fullmatch(r"\[([a-z0-9_.-]+)\]", line):
            table = header.group(1) + "."
        elif assignment := re.fullmatch(r"#?\s*([a-z_][a-z0-9_]*)\s*=.*", line):
            keys.append(table + assignment.group(1))
    return keys


def test_documented_config_mentions_every_setting() -> None:
    loaded = load_settings(env={})
    documented = _key_patterns(_documented_keys(DOCUMENTED_CONFIG.read_text(encoding="utf-8")))

    missing = _key_patterns(list(loaded.sources)) - documented
    # Embedded options are documented once, under the embedded backend; they apply to no other.
    missing = {key for key in missing if not key.startswith("backends.*.kerniegen.")} | (
        _key_patterns([k for k in loaded.sources if k.startswith("backends.kerniegen.kerniegen.")]) - documented
    )
    assert missing == set()


def test_config_path_from_env_var(write_config) -> None:
    path = write_config("listen_port = 9001\n")

    loaded = load_settings(env={"COMFY_GATEWAY_CONFIG": str(path)})

    assert loaded.settings.listen_port == 9001
    assert loaded.sources["listen_port"] == str(path)
    assert loaded.sources["listen_host"] == "default"
    assert (loaded.config_path, loaded.config_path_source) == (path, "env COMFY_GATEWAY_CONFIG")


def test_explicit_path_wins_over_config_env_var(write_config) -> None:
    chosen = write_config("listen_port = 9001\n", "chosen.toml")
    other = write_config("listen_port = 9002\n", "other.toml")

    loaded = load_settings(chosen, env={"COMFY_GATEWAY_CONFIG": str(other)})

    assert loaded.settings.listen_port == 9001
    assert loaded.config_path_source == "--config"


def test_env_overrides_one_key_of_a_file_backend_and_keeps_the_rest(write_config) -> None:
    path = write_config(TWO_BACKENDS)

    loaded = load_settings(path, env={"COMFY_GATEWAY_BACKENDS__COMFYUI__URL": "http://other-gpu:8188"})

    comfyui = loaded.settings.backends["comfyui"]
    assert comfyui.url == "http://other-gpu:8188"
    assert comfyui.timeouts.connect_seconds == 2.0
    assert loaded.sources["backends.comfyui.url"] == "env COMFY_GATEWAY_BACKENDS__COMFYUI__URL"
    assert loaded.sources["backends.comfyui.timeouts.connect_seconds"] == str(path)
    assert loaded.sources["backends.comfyui.timeouts.total_seconds"] == "default"


def test_env_var_adds_a_backend_next_to_the_built_in_ones() -> None:
    loaded = load_settings(env={"COMFY_GATEWAY_BACKENDS__EXTRA__URL": "http://10.0.0.5:8188"})

    assert sorted(loaded.settings.backends) == ["comfyui", "extra", "kerniegen"]
    assert loaded.sources["backends.extra.url"] == "env COMFY_GATEWAY_BACKENDS__EXTRA__URL"
    assert loaded.sources["backends.extra.embedded"] == "default"


def test_file_backends_table_replaces_the_built_in_table(write_config) -> None:
    path = write_config('default_backend = "gpu"\n[backends.gpu]\nurl = "http://gpu-box:8188"\n')

    loaded = load_settings(path, env={})

    assert list(loaded.settings.backends) == ["gpu"]


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("COMFY_GATEWAY_LISTEN_PORT", "9100", "listen_port", 9100),
        ("COMFY_GATEWAY_USER_HEADERS", '["comfy-user", "x-user"]', "user_headers", ("comfy-user", "x-user")),
        ("COMFY_GATEWAY_LOG_LEVEL", "debug", "log_level", "DEBUG"),
        ("COMFY_GATEWAY_OUTPUT_ROOT", "/srv/out", "output_root", Path("/srv/out")),
        ("comfy_gateway_listen_port", "9101", "listen_port", 9101),
        ("COMFY_GATEWAY_HEALTH_CHECK_INTERVAL_SECONDS", "2.5", "health_check_interval_seconds", 2.5),
        ("COMFY_GATEWAY_HEALTH_CHECK_TIMEOUT_SECONDS", "1", "health_check_timeout_seconds", 1.0),
        ("COMFY_GATEWAY_QUEUE_POLL_INTERVAL_SECONDS", "30", "queue_poll_interval_seconds", 30.0),
    ],
    ids=["int", "json-list", "log-level-normalised", "path", "lower-case-name", "health-interval", "health-timeout",
         "queue-poll-interval"],
)
def test_env_values_are_parsed_into_typed_settings(name: str, value: str, attribute: str, expected: object) -> None:
    loaded = load_settings(env={name: value})

    assert getattr(loaded.settings, attribute) == expected
    assert loaded.sources[attribute] == f"env {name}"


def test_empty_env_var_counts_as_unset() -> None:
    loaded = load_settings(env={"COMFY_GATEWAY_OUTPUT_ROOT": ""})

    assert loaded.settings.output_root is None
    assert loaded.sources["output_root"] == "default"


def test_store_settings_from_env() -> None:
    loaded = load_settings(env={"COMFY_GATEWAY_STORE__KIND": "redis", "COMFY_GATEWAY_STORE__MAX_PROMPTS": "10"})

    assert (loaded.settings.store.kind, loaded.settings.store.max_prompts) == ("redis", 10)
    assert loaded.sources["store.kind"] == "env COMFY_GATEWAY_STORE__KIND"


# The refusals. Each message names the key(s) and where each value came from.


def test_two_backends_resolving_to_one_url_names_both_keys_and_sources() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={"COMFY_GATEWAY_BACKENDS__COMFYUI__URL": "http://127.0.0.1:8189"})

    assert problems_of(excinfo) == (
        "backends.comfyui.url and backends.kerniegen.url both reach the same server, 127.0.0.1:8189 "
        "(backends.comfyui.url from env COMFY_GATEWAY_BACKENDS__COMFYUI__URL, backends.kerniegen.url from default)",
    )


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("http://127.0.0.1:8189", "http://localhost:8189"),
        ("http://127.0.0.1:8189", "http://[::1]:8189/"),
        ("http://GPU-Box:8188", "HTTP://gpu-box:8188/"),
        ("http://gpu-box", "http://gpu-box:80"),
        ("https://gpu-box/", "https://gpu-box:443"),
    ],
    ids=["localhost", "ipv6-loopback", "case-and-slash", "http-default-port", "https-default-port"],
)
def test_equivalent_urls_count_as_the_same_backend(write_config, first: str, second: str) -> None:
    path = write_config(f'default_backend = "a"\n[backends.a]\nurl = "{first}"\n[backends.b]\nurl = "{second}"\n')

    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={})

    (problem,) = problems_of(excinfo)
    assert problem.startswith("backends.a.url and backends.b.url both reach the same server, ")
    assert f"(backends.a.url from {path}, backends.b.url from {path})" in problem


def test_same_host_on_other_ports_or_schemes_is_not_a_duplicate() -> None:
    assert normalize_backend_url("http://gpu:8188") != normalize_backend_url("http://gpu:8189")
    assert normalize_backend_url("http://gpu") != normalize_backend_url("https://gpu")


def test_unknown_key_in_file_is_named_with_the_file(write_config) -> None:
    path = write_config('listen_prot = 1\n[backends.comfyui]\nurl = "http://x:1"\nurll = "http://y:2"\n[stor]\n')

    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={})

    assert problems_of(excinfo) == (
        f"unknown key listen_prot (from {path})",
        f"unknown key backends.comfyui.urll (from {path})",
        f"unknown key stor (from {path})",
    )


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("COMFY_GATEWAY_LISTEN_PROT", "listen_prot"),
        ("COMFY_GATEWAY_STORE__BOGUS", "store.bogus"),
        ("COMFY_GATEWAY_BACKENDS__COMFYUI__URLL", "backends.comfyui.urll"),
        ("COMFY_GATEWAY_LISTEN_PORT__X", "listen_port.x"),
        ("COMFY_GATEWAY_", '""'),
    ],
    ids=["top-level", "store", "backend-field", "below-a-leaf", "bare-prefix"],
)
def test_unknown_env_var_is_named(name: str, key: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={name: "1"})

    assert problems_of(excinfo) == (f"unknown key {key} (from env {name})",)


def test_the_build_variable_left_set_is_not_taken_for_a_setting() -> None:
    # A Dockerfile or CI job that built with COMFY_GATEWAY_COMPILE=1 (setup.py) may still have it set at start-up.
    loaded = load_settings(env={"COMFY_GATEWAY_COMPILE": "1", "COMFY_GATEWAY_LISTEN_PORT": "8291"})

    assert loaded.settings.listen_port == 8291


def test_toml_syntax_error_names_file_and_line(write_config) -> None:
    path = write_config('listen_host = "127.0.0.1"\nlisten_port = \n')

    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={})

    (problem,) = problems_of(excinfo)
    assert problem.startswith(f"config file {path}: TOML syntax error")
    assert "line 2" in problem


@pytest.mark.parametrize("make_path", [lambda tmp: tmp / "absent.toml", lambda tmp: tmp], ids=["missing", "directory"])
def test_config_path_that_is_not_a_file_is_refused(tmp_path: Path, make_path) -> None:
    path = make_path(tmp_path)

    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={"COMFY_GATEWAY_CONFIG": str(path)})

    assert problems_of(excinfo) == (
        f"config file {path} (from env COMFY_GATEWAY_CONFIG) does not exist or is not a file",
    )


def test_undefined_default_backend_names_where_the_table_came_from(write_config) -> None:
    # The file replaces the built-in table but forgets the default backend.
    path = write_config('[backends.comfyui]\nurl = "http://gpu-box:8188"\n')

    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={})

    assert problems_of(excinfo) == (
        "default_backend 'kerniegen' is not a defined backend (defined: comfyui) "
        f"(default_backend from default, backends from {path})",
    )


@pytest.mark.parametrize("name", ["GPU", "gpu_1", "gpu.box", "g" * 65, "café"], ids=str)
def test_backend_name_must_be_lowercase_letters_digits_and_dashes(write_config, name: str) -> None:
    path = write_config(f'[backends."{name}"]\nurl = "http://gpu-box:8188"\n[backends.kerniegen]\nurl = "http://k:1"\n')

    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={})

    (problem,) = problems_of(excinfo)
    assert problem.startswith(f"backend name {name!r} must match [a-z0-9-]+")
    assert problem.endswith(f"from {path})")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://gpu-box:8188", "is not an absolute http:// or https:// URL"),
        ("gpu-box:8188", "is not an absolute http:// or https:// URL"),
        ("/relative/path", "is not an absolute http:// or https:// URL"),
        ("http://gpu-box:8188/?x=1", "must not have a query or fragment"),
        ("http://gpu-box:8188/#top", "must not have a query or fragment"),
        ("http://:8188", "has no host"),
        ("http://gpu-box:99999", "Port out of range 0-65535"),
        ("http://gpu box:8188", "contains whitespace"),
    ],
    ids=["ftp", "no-scheme", "relative", "query", "fragment", "no-host", "bad-port", "space"],
)
def test_backend_url_must_be_absolute_http(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={"COMFY_GATEWAY_BACKENDS__COMFYUI__URL": url})

    assert problems_of(excinfo) == (
        f"backends.comfyui.url {url!r} {reason} "
        "(backends.comfyui.url from env COMFY_GATEWAY_BACKENDS__COMFYUI__URL)",
    )


def test_backend_at_the_gateways_own_address_is_refused() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={"COMFY_GATEWAY_LISTEN_HOST": "0.0.0.0", "COMFY_GATEWAY_LISTEN_PORT": "8188"})

    assert problems_of(excinfo) == (
        "backends.comfyui.url 'http://127.0.0.1:8188' reaches the gateway itself (127.0.0.1:8188; it listens on "
        "0.0.0.0:8188): every request would loop back to it (backends.comfyui.url from default, "
        "listen_host from env COMFY_GATEWAY_LISTEN_HOST, listen_port from env COMFY_GATEWAY_LISTEN_PORT)",
    )


def test_redis_store_needs_a_redis_url() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={"COMFY_GATEWAY_STORE__KIND": "redis", "COMFY_GATEWAY_STORE__REDIS_URL": "http://r:6379"})

    assert problems_of(excinfo) == (
        "store.redis_url 'http://r:6379' is not a redis://, rediss:// or unix:// URL "
        "(store.redis_url from env COMFY_GATEWAY_STORE__REDIS_URL)",
    )


def test_bad_values_name_key_value_and_source(write_config) -> None:
    path = write_config('log_level = "LOUD"\n[store]\nmax_prompts = 0\n')

    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={"COMFY_GATEWAY_LISTEN_PORT": "http"})

    assert problems_of(excinfo) == (
        "listen_port: Input should be a valid integer, unable to parse string as an integer "
        "(value 'http' from env COMFY_GATEWAY_LISTEN_PORT)",
        "log_level: not a logging level; use one of DEBUG, INFO, WARNING, ERROR, CRITICAL "
        f"(value 'LOUD' from {path})",
        f"store.max_prompts: Input should be greater than 0 (value 0 from {path})",
    )


def test_check_and_poll_intervals_must_be_positive(write_config) -> None:
    path = write_config("health_check_interval_seconds = 0\nqueue_poll_interval_seconds = -1\n")

    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={"COMFY_GATEWAY_HEALTH_CHECK_TIMEOUT_SECONDS": "0"})

    assert problems_of(excinfo) == (
        f"health_check_interval_seconds: Input should be greater than 0 (value 0 from {path})",
        "health_check_timeout_seconds: Input should be greater than 0 "
        "(value '0' from env COMFY_GATEWAY_HEALTH_CHECK_TIMEOUT_SECONDS)",
        f"queue_poll_interval_seconds: Input should be greater than 0 (value -1 from {path})",
    )


def test_backend_added_by_env_without_url_names_the_var_that_added_it() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={"COMFY_GATEWAY_BACKENDS__EXTRA__EMBEDDED": "true"})

    assert problems_of(excinfo) == (
        "backends.extra: url is required (one server), or urls or members (a pool) (value {'embedded': 'true'} from "
        "env COMFY_GATEWAY_BACKENDS__EXTRA__EMBEDDED)",
    )


def test_list_in_env_that_is_not_json_is_explained() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(env={"COMFY_GATEWAY_USER_HEADERS": "comfy-user,x-user"})

    (problem,) = problems_of(excinfo)
    assert problem.startswith("user_headers from env COMFY_GATEWAY_USER_HEADERS='comfy-user,x-user': ")
    assert "must be JSON" in problem


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(
            env={
                "COMFY_GATEWAY_DEFAULT_BACKEND": "gpu",
                "COMFY_GATEWAY_BACKENDS__COMFYUI__URL": "http://localhost:8189",
                "COMFY_GATEWAY_BACKENDS__BAD_NAME__URL": "http://bad:1",
            }
        )

    assert len(problems_of(excinfo)) == 3
    text = str(excinfo.value)
    assert text.startswith("invalid configuration:\n  - ")
    assert "from env COMFY_GATEWAY_DEFAULT_BACKEND" in text


# Loaded once, then frozen.


def test_loaded_settings_cannot_be_changed() -> None:
    loaded = load_settings(env={})
    settings = loaded.settings

    with pytest.raises(ValidationError):
        settings.listen_port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.backends["comfyui"].url = "http://elsewhere:1"  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.backends["extra"] = BackendSettings(url="http://x:1")  # type: ignore[index]
    with pytest.raises(TypeError):
        loaded.sources["listen_port"] = "mine"  # type: ignore[index]
    with pytest.raises(AttributeError):
        settings.user_headers.append("x")  # type: ignore[attr-defined]


def test_settings_built_directly_still_enforce_the_rules() -> None:
    with pytest.raises(ValidationError, match="both reach the same server, 127.0.0.1:8188"):
        Settings(backends={"kerniegen": {"url": "http://127.0.0.1:8188"}, "comfyui": {"url": "http://localhost:8188"}})


def test_settings_constructor_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFY_GATEWAY_LISTEN_PORT", "9999")

    assert Settings().listen_port == 8190
    assert load_settings().settings.listen_port == 9999


def test_documented_config_is_valid_toml_for_tomllib() -> None:
    data = tomllib.loads(DOCUMENTED_CONFIG.read_text(encoding="utf-8"))

    assert set(data["backends"]) == {"kerniegen", "comfyui"}


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('[backends.a]\nurl = "http://h:1"\nfallback = "a"\n', "backends.a.fallback names the backend itself"),
        ('[backends.a]\nurl = "http://h:1"\nfallback = "nope"\n',
         "backends.a.fallback 'nope' is not a defined backend (defined: b)"),
        ('[backends.a]\nurl = "http://h:1"\nfallback = "b"\n[backends.b]\nurl = "http://h:2"\nfallback = "c"\n'
         '[backends.c]\nurl = "http://h:3"\nfallback = "a"\n', "fallbacks form a cycle: a -> b -> c -> a"),
    ],
    ids=["itself", "undefined", "cycle"],
)
def test_a_fallback_must_name_another_backend_without_a_cycle(write_config, table, problem) -> None:
    other = "" if "[backends.b]" in table else '[backends.b]\nurl = "http://h:2"\n'
    path = write_config(f'default_backend = "a"\n{table}{other}')
    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={})
    assert [p for p in problems_of(excinfo) if p.startswith(problem)], problems_of(excinfo)


def test_a_fallback_chain_without_a_cycle_loads(write_config) -> None:
    path = write_config(
        'default_backend = "a"\n[backends.a]\nurl = "http://h:1"\nfallback = "b"\n'
        '[backends.b]\nurl = "http://h:2"\nfallback = "c"\n[backends.c]\nurl = "http://h:3"\n'
    )
    assert load_settings(path, env={}).settings.backends["a"].fallback == "b"


# --- backend pools ------------------------------------------------------------------------------------------


def test_a_pool_by_env_replaces_the_built_in_backends_one_url() -> None:
    loaded = load_settings(env={"COMFY_GATEWAY_BACKENDS__COMFYUI__URLS": '["http://gpu1:8188", "http://gpu2:8188"]'})

    comfyui = loaded.settings.backends["comfyui"]
    assert comfyui.url is None and comfyui.is_pool
    assert [(name, m.url) for name, m in comfyui.named_servers("comfyui")] == [
        ("comfyui.1", "http://gpu1:8188"),
        ("comfyui.2", "http://gpu2:8188"),
    ]
    assert loaded.sources["backends.comfyui.urls"] == "env COMFY_GATEWAY_BACKENDS__COMFYUI__URLS"


def test_members_with_their_own_output_dirs(write_config) -> None:
    path = write_config(
        '[backends.gpu]\nkind = "comfyui"\n'
        '[[backends.gpu.members]]\nurl = "http://10.0.0.1:8188"\noutput_dir = "/mnt/a"\n'
        '[[backends.gpu.members]]\nurl = "http://10.0.0.2:8188"\noutput_dir = "/mnt/b"\n'
        '[backends.kerniegen]\nurl = "http://127.0.0.1:8189"\nembedded = true\n'
    )

    settings = load_settings(path, env={}).settings

    assert [(n, str(m.output_dir)) for n, m in settings.backends["gpu"].named_servers("gpu")] == [
        ("gpu.1", "/mnt/a"),
        ("gpu.2", "/mnt/b"),
    ]


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        pytest.param({"url": "http://a:1", "urls": ["http://b:1"]}, "not url and urls", id="url-and-urls"),
        pytest.param({"urls": ["http://b:1"], "members": [{"url": "http://c:1"}]}, "not urls and members",
                     id="urls-and-members"),
        pytest.param({"urls": ["http://b:1"], "embedded": True}, "an embedded backend is one server", id="embedded"),
        pytest.param({"urls": [f"http://h{i}:1" for i in range(65)]}, "at most 64 members", id="too-many"),
    ],
)
def test_a_pool_is_given_one_way(write_config, backend, message) -> None:
    table = {"kerniegen": {"url": "http://127.0.0.1:8189", "embedded": True}, "gpu": backend}
    path = write_config(tomli_w_backends(table))

    with pytest.raises(ConfigError) as excinfo:
        load_settings(path, env={})

    assert any(message in problem for problem in problems_of(excinfo)), problems_of(excinfo)


def test_two_members_reaching_one_server_are_named_by_their_place_in_the_pool() -> None:
    env = {"COMFY_GATEWAY_BACKENDS__COMFYUI__URLS": '["http://localhost:8188", "http://127.0.0.1:8188/"]'}

    with pytest.raises(ConfigError) as excinfo:
        load_settings(env=env)

    (problem,) = problems_of(excinfo)
    assert problem.startswith(
        "backends.comfyui.urls[1] and backends.comfyui.urls[2] both reach the same server, 127.0.0.1:8188"
    )
    assert "from env COMFY_GATEWAY_BACKENDS__COMFYUI__URLS" in problem


def tomli_w_backends(table: dict) -> str:
    """A [backends] TOML text of plain values (strings, bools, lists of strings or of one-level tables)."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    return "".join(
        f"[backends.{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items()) for name, keys in table.items()
    )
