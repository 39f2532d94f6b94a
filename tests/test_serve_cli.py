"""`comfy-gateway serve` and `config` from the command line: --host/--port override their settings and are shown
as their source; every start-up failure (a port in use, the gateway's or an embedded KernieGen's; Redis down; a
bad configuration) is a few lines naming the setting, its source and the fix, after the log lines before it,
with status 2 and no traceback; built-in backends can be dropped, and one nobody configured is not watched by
alerts. The real command, as a subprocess, on real sockets."""

from __future__ import annotations

import gc
import io
import json
import socket
import weakref
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.command import run_config_command
from gateway.config.settings import ConfigError, load_settings
from gateway.observe.metrics import GatewayMetrics
from gateway.serve import set_start_up_apart
from tests.gateway_process import REFUSAL, GatewayProcess, refusal_of, run_serve
from tests.ports import free_port

DATA_PATHS = ["fast", "aiohttp"]


def config_text(tmp_path: Path, *, listen_port: int = 0, backends: str | None = None, extra: str = "") -> str:
    backends = backends if backends is not None else f'[backends.remote]\nurl = "http://127.0.0.1:{free_port()}"\n'
    default = "remote" if "[backends.remote]" in backends else "kerniegen"
    return (
        f'listen_port = {listen_port}\ndefault_backend = "{default}"\nstate_dir = "{tmp_path / "state"}"\n{extra}'
        f'[store]\npath = "{tmp_path / "gateway.sqlite3"}"\n{backends}'
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process... here, this one, listens on."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


# --- --host and --port -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data_path", DATA_PATHS)
async def test_serve_listens_where_the_flags_say(tmp_path: Path, data_path: str) -> None:
    port = free_port()
    config = write(tmp_path, config_text(tmp_path, listen_port=free_port()))
    gateway = GatewayProcess(
        ["--config", str(config), "--host", "127.0.0.1", "--port", str(port)], tmp_path,
        COMFY_GATEWAY_DATA_PATH=data_path,
    )
    try:
        await gateway.wait_listening(f"http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/gateway/health") as r:
            assert r.status == 200
        assert await gateway.stop() == 0
    finally:
        gateway.kill()
    assert "  setting listen_port from --port" in gateway.log
    assert "  setting listen_host from --host" in gateway.log


def test_config_shows_the_flags_as_the_source(tmp_path: Path) -> None:
    config = write(tmp_path, config_text(tmp_path, listen_port=9000))
    out, err = io.StringIO(), io.StringIO()

    code = run_config_command(
        ["--config", str(config), "--port", "9100", "--host", "0.0.0.0", "--workers", "3"],
        env={"COMFY_GATEWAY_LISTEN_PORT": "9050"}, out=out, err=err,
    )

    assert (code, err.getvalue()) == (0, "")
    lines = out.getvalue().splitlines()
    assert any(line.startswith("listen_port = 9100") and line.endswith("# --port") for line in lines)
    assert any(line.startswith('listen_host = "0.0.0.0"') and line.endswith("# --host") for line in lines)
    assert any(line.startswith("workers = 3") and line.endswith("# --workers") for line in lines)


def test_a_flag_beats_the_environment_and_the_file(tmp_path: Path) -> None:
    config = write(tmp_path, config_text(tmp_path, listen_port=9000))
    loaded = load_settings(config, {"COMFY_GATEWAY_LISTEN_PORT": "9050"}, {"--port": 9100, "--host": None})
    assert loaded.settings.listen_port == 9100
    assert loaded.sources["listen_port"] == "--port"
    assert loaded.sources["listen_host"] == "default"


def test_a_bad_flag_value_is_a_configuration_error_naming_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"listen_port: .*\(value 70000 from --port\)"):
        load_settings(None, {}, {"--port": 70000})
    result = run_serve(["--port", "70000"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (
        "comfy-gateway: refusing to start: invalid configuration:\n"
        "  - listen_port: Input should be less than or equal to 65535 (value 70000 from --port)\n"
    )


def test_several_workers_need_a_fixed_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"workers = 2 needs a fixed listen_port .*workers from --workers"):
        load_settings(None, {}, {"--workers": 2, "--port": 0})


# --- start-up failures -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data_path", DATA_PATHS)
def test_the_listen_port_in_use_is_named_with_its_source_and_fix(
    tmp_path: Path, taken_port: int, data_path: str
) -> None:
    config = write(tmp_path, config_text(tmp_path, listen_port=taken_port))

    result = run_serve(["--config", str(config)], tmp_path, COMFY_GATEWAY_DATA_PATH=data_path)

    refusal = refusal_of(result)
    assert refusal == (
        f"{REFUSAL}the gateway cannot listen on 127.0.0.1:{taken_port}: the address is already in use (another "
        f"process listens there) (listen_port from {config}); choose another with --port or listen_port (env "
        f"COMFY_GATEWAY_LISTEN_PORT), or stop it (`ss -ltnp 'sport = :{taken_port}'` shows which process holds it)"
    )
    # the lines logged before the failure come first, though they were waiting in a batch
    assert result.stderr.index("comfy-gateway 0.1.0 starting") < result.stderr.index(REFUSAL)
    assert "routing table" in result.stderr


def test_the_listen_port_in_use_given_by_flag_names_the_flag(tmp_path: Path, taken_port: int) -> None:
    config = write(tmp_path, config_text(tmp_path))
    refusal = refusal_of(run_serve(["--config", str(config), "--port", str(taken_port)], tmp_path))
    assert f"cannot listen on 127.0.0.1:{taken_port}: the address is already in use" in refusal
    assert "(listen_port from --port)" in refusal


def test_an_address_of_no_interface_names_the_host_setting(tmp_path: Path) -> None:
    config = write(tmp_path, config_text(tmp_path))
    refusal = refusal_of(run_serve(["--config", str(config), "--host", "192.0.2.1"], tmp_path))
    assert "the gateway cannot listen on 192.0.2.1:0: no network interface of this host has that address" in refusal
    assert "(listen_host from --host); set --host or listen_host (env COMFY_GATEWAY_LISTEN_HOST)" in refusal


def test_the_embedded_kerniegen_port_in_use_is_named_with_its_source_and_fix(tmp_path: Path, taken_port: int) -> None:
    config = write(tmp_path, config_text(tmp_path, backends=""))

    result = run_serve(
        ["--config", str(config)], tmp_path,
        COMFY_GATEWAY_BACKENDS__KERNIEGEN__URL=f"http://127.0.0.1:{taken_port}",
        COMFY_GATEWAY_BACKENDS__KERNIEGEN__EMBEDDED="true",
    )

    refusal = refusal_of(result)
    assert refusal == (
        f"{REFUSAL}embedded KernieGen backend 'kerniegen' cannot listen on 127.0.0.1:{taken_port}: the address is "
        "already in use (another process listens there) (backends.kerniegen.url from env "
        "COMFY_GATEWAY_BACKENDS__KERNIEGEN__URL); set backends.kerniegen.url (env "
        "COMFY_GATEWAY_BACKENDS__KERNIEGEN__URL) to a free port, or stop it "
        f"(`ss -ltnp 'sport = :{taken_port}'` shows which process holds it)"
    )
    assert result.stderr.index("starting; configuration from") < result.stderr.index(REFUSAL)


def test_redis_down_at_start_up_is_one_line_with_the_url_masked_and_the_setting(tmp_path: Path) -> None:
    config = write(tmp_path, config_text(tmp_path))
    url = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"

    result = run_serve(
        ["--config", str(config)], tmp_path, COMFY_GATEWAY_STORE__KIND="redis", COMFY_GATEWAY_STORE__REDIS_URL=url
    )

    refusal = refusal_of(result)
    assert "hunter2-secret" not in result.stderr
    assert "redis state store: ping failed: ConnectionError" in refusal
    assert f"(Redis at redis://***@127.0.0.1:{url.rsplit(':', 1)[1]}" in refusal
    assert refusal.endswith("[store.redis_url from env COMFY_GATEWAY_STORE__REDIS_URL]")
    assert len(result.stderr.splitlines()) < 40


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("listen_port = 'x'\n", {}, "listen_port: Input should be a valid integer"),
        ("", {"COMFY_GATEWAY_NO_SUCH_KEY": "1"}, "unknown key no_such_key (from env COMFY_GATEWAY_NO_SUCH_KEY)"),
        ("listen_port = [\n", {}, "TOML syntax error"),
    ],
)
def test_a_bad_configuration_is_refused_in_a_few_lines(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    config = write(tmp_path, text)
    result = run_serve(["--config", str(config)], tmp_path, **env)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(REFUSAL + "invalid configuration:")
    assert expected in result.stderr
    assert len(result.stderr.splitlines()) <= 3


# --- built-in backends ---------------------------------------------------------------------------------------------


def test_an_empty_variable_drops_a_built_in_backend() -> None:
    loaded = load_settings(None, {"COMFY_GATEWAY_BACKENDS__COMFYUI": ""})
    assert list(loaded.settings.backends) == ["kerniegen"]
    assert dict(loaded.dropped_backends) == {"comfyui": "COMFY_GATEWAY_BACKENDS__COMFYUI"}
    assert not any(key.startswith("backends.comfyui") for key in loaded.sources)


def test_config_says_which_built_in_backend_was_dropped() -> None:
    out = io.StringIO()
    assert run_config_command([], env={"COMFY_GATEWAY_BACKENDS__COMFYUI": ""}, out=out) == 0
    assert "# built-in backend 'comfyui' dropped by env COMFY_GATEWAY_BACKENDS__COMFYUI=" in out.getvalue()
    assert "backends.comfyui" not in out.getvalue().replace("backend 'comfyui' dropped", "")


def test_config_says_which_built_in_backend_is_not_watched_by_alerts() -> None:
    out = io.StringIO()
    assert run_config_command([], env={}, out=out) == 0
    assert "# built-in backend 'comfyui' is as shipped: routed to when named, not watched by alerts" in out.getvalue()
    out = io.StringIO()
    assert run_config_command(["--json"], env={"COMFY_GATEWAY_BACKENDS__COMFYUI__URL": "http://gpu:8188"}, out=out) == 0
    assert json.loads(out.getvalue())["unwatched_backends"] == []


def test_a_file_drops_a_built_in_backend_by_leaving_it_out(tmp_path: Path) -> None:
    config = write(tmp_path, '[backends.kerniegen]\nurl = "http://127.0.0.1:8189"\nembedded = true\n')
    assert list(load_settings(config, {}).settings.backends) == ["kerniegen"]


def test_the_default_backend_cannot_be_dropped() -> None:
    with pytest.raises(ConfigError, match="which is default_backend: the default backend cannot be dropped"):
        load_settings(None, {"COMFY_GATEWAY_BACKENDS__KERNIEGEN": ""})
    moved = {"COMFY_GATEWAY_BACKENDS__KERNIEGEN": "", "COMFY_GATEWAY_DEFAULT_BACKEND": "comfyui"}
    assert list(load_settings(None, moved).settings.backends) == ["comfyui"]


def test_a_backend_cannot_be_dropped_and_set_at_once() -> None:
    env = {"COMFY_GATEWAY_BACKENDS__COMFYUI": "", "COMFY_GATEWAY_BACKENDS__COMFYUI__URL": "http://gpu:8188"}
    with pytest.raises(ConfigError, match="drops backend 'comfyui', which other env vars set keys of"):
        load_settings(None, env)


def test_built_in_backends_nobody_configured_are_known() -> None:
    assert load_settings(None, {}).settings.builtin_backends == {"kerniegen", "comfyui"}
    touched = load_settings(None, {"COMFY_GATEWAY_BACKENDS__COMFYUI__URL": "http://gpu:8188"}).settings
    assert touched.builtin_backends == {"kerniegen"}


def configured_series(metrics: GatewayMetrics) -> dict[str, float]:
    body, _ = metrics.exposition()
    return {
        sample.labels["backend"]: sample.value
        for family in text_string_to_metric_families(body.decode())
        if family.name == "comfy_gateway_backend_configured"
        for sample in family.samples
    }


def test_a_built_in_backend_nobody_configured_is_not_watched_by_alerts() -> None:
    from gateway.app import create_app
    from gateway.datapath.aio.keys import METRICS

    app = create_app(load_settings(None, {}).settings)
    assert configured_series(app[METRICS]) == {"kerniegen": 1.0, "comfyui": 0.0}  # the default is always watched
    app = create_app(load_settings(None, {"COMFY_GATEWAY_BACKENDS__COMFYUI__URL": "http://gpu:8188"}).settings)
    assert configured_series(app[METRICS]) == {"kerniegen": 1.0, "comfyui": 1.0}


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_what_start_up_made_is_set_apart_from_the_collector_s_full_passes() -> None:
    kept = [[index] for index in range(100)]  # alive at start-up, tracked by the collector
    garbage = weakref.ref(_Cycle())  # start-up's garbage: a cycle nothing refers to
    try:
        set_start_up_apart()

        assert garbage() is None  # collected before the rest was set apart
        assert gc.get_freeze_count() >= len(kept)
        assert not any(obj is kept for obj in gc.get_objects())  # no generation the collector walks holds it
    finally:
        gc.unfreeze()
