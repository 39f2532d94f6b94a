"""`comfy-gateway config`: every effective value printed with its source; invalid config exits 2."""

from __future__ import annotations

import argparse
import io
import json
import re
import tomllib
from pathlib import Path

import pytest

from gateway.config.command import add_config_arguments, run_config_command
from gateway.config.settings import load_settings

FILE_TEXT = """
listen_port = 9000
[backends.kerniegen]
url = "http://127.0.0.1:8189"
embedded = true
[backends.comfyui]
url = "http://gpu-box:8188"
"""


def run(args: argparse.Namespace | list[str], env: dict[str, str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_config_command(args, env=env, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(FILE_TEXT, encoding="utf-8")
    return path


def value_lines(text: str) -> dict[str, str]:
    """key -> the whole printed line, for value lines and unset (commented) ones."""
    lines = {}
    for line in text.splitlines():
        if match := re.match(r"^(?:# )?(\S+)(?: = | is unset)", line):
            lines[match.group(1)] = line
    return lines


def test_prints_every_value_with_its_source(config_file: Path) -> None:
    env = {"COMFY_GATEWAY_BACKENDS__COMFYUI__URL": "http://other-gpu:8188"}

    code, out, err = run(["--config", str(config_file)], env)

    assert (code, err) == (0, "")
    lines = value_lines(out)
    assert set(lines) == set(load_settings(config_file, env).sources)
    assert lines["listen_port"].endswith(f"# file {config_file}")
    assert lines["listen_host"].endswith("# default")
    assert lines["backends.comfyui.url"].startswith('backends.comfyui.url = "http://other-gpu:8188"')
    assert lines["backends.comfyui.url"].endswith("# env COMFY_GATEWAY_BACKENDS__COMFYUI__URL")
    assert lines["output_root"].startswith("# output_root is unset")
    assert f"# config file: {config_file} (from --config)" in out


def test_printed_configuration_is_toml_that_loads_to_the_same_settings(config_file: Path, tmp_path: Path) -> None:
    env = {"COMFY_GATEWAY_USER_HEADERS": '["comfy-user", "x-user"]', "COMFY_GATEWAY_OUTPUT_ROOT": "/srv/out"}
    code, out, _ = run(["--config", str(config_file)], env)
    assert code == 0
    saved = tmp_path / "saved.toml"
    saved.write_text(out, encoding="utf-8")

    assert load_settings(saved, env={}).settings == load_settings(config_file, env).settings
    assert tomllib.loads(out)["user_headers"] == ["comfy-user", "x-user"]


def test_json_output_for_scripts(config_file: Path) -> None:
    code, out, _ = run(["--config", str(config_file), "--json"], {})

    document = json.loads(out)
    assert code == 0
    assert document["config_file"] == str(config_file)
    assert document["values"]["listen_port"] == {"value": 9000, "source": str(config_file)}
    assert document["values"]["store.kind"] == {"value": "sqlite", "source": "default"}


def test_config_file_from_env_var_is_reported(config_file: Path) -> None:
    code, out, _ = run([], {"COMFY_GATEWAY_CONFIG": str(config_file)})

    assert code == 0
    assert f"# config file: {config_file} (from env COMFY_GATEWAY_CONFIG)" in out


def test_no_file_says_so() -> None:
    code, out, _ = run([], {})

    assert code == 0
    assert "# config file: none (built-in defaults and environment only)" in out


def test_invalid_configuration_exits_2_naming_keys_and_sources() -> None:
    code, out, err = run([], {"COMFY_GATEWAY_BACKENDS__COMFYUI__URL": "http://localhost:8189"})

    assert (code, out) == (2, "")
    assert err.startswith("comfy-gateway: invalid configuration:\n")
    assert (
        "backends.comfyui.url and backends.kerniegen.url both reach the same server, 127.0.0.1:8189 "
        "(backends.comfyui.url from env COMFY_GATEWAY_BACKENDS__COMFYUI__URL, backends.kerniegen.url from default)"
    ) in err


def test_accepts_a_namespace_from_the_main_parser(config_file: Path) -> None:
    parser = argparse.ArgumentParser(prog="comfy-gateway")
    add_config_arguments(parser.add_subparsers(dest="command").add_parser("config"))
    args = parser.parse_args(["config", "--config", str(config_file)])

    code, out, _ = run(args, {})

    assert code == 0
    assert value_lines(out)["listen_port"].startswith("listen_port = 9000")


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--no-such-option"], {})

    assert (code, out) == (2, "")
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_passwords_in_urls_are_masked_in_the_printed_configuration(tmp_path):
    import io

    from gateway.config.command import run_config_command

    out = io.StringIO()
    env = {
        "COMFY_GATEWAY_STORE__REDIS_URL": "redis://:hunter2@127.0.0.1:6379/0",
        "COMFY_GATEWAY_BACKENDS__COMFYUI__URL": "http://ops:s3cret@gpu-box:8188",
    }
    assert run_config_command([], env=env, out=out) == 0
    text = out.getvalue()
    assert "hunter2" not in text and "s3cret" not in text
    assert "gpu-box:8188" in text


def test_tokens_are_never_printed_in_the_configuration_or_its_errors(tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("file-admin-token-0123456789\n")
    tokens_file = tmp_path / "tokens.toml"
    tokens_file.write_text('bo = ["bo-first-token-0123456789", "bo-second-token-0123456789"]\n')
    env = {
        "COMFY_GATEWAY_SECURITY__ADMIN_TOKEN_FILE": str(token_file),
        "COMFY_GATEWAY_SECURITY__API_TOKENS": '{"ana": "ana-inline-token-0123456789"}',
        "COMFY_GATEWAY_SECURITY__API_TOKENS_FILE": str(tokens_file),
    }
    for args in ([], ["--json"]):
        out, err = io.StringIO(), io.StringIO()
        assert run_config_command(args, env=env, out=out, err=err) == 0
        assert "0123456789" not in out.getvalue() + err.getvalue()
    loaded = load_settings(env=env)
    users = loaded.settings.security.credentials.users_by_token
    assert sorted(users.values()) == ["ana", "bo", "bo"]
    assert loaded.settings.security.credentials.admin_token == "file-admin-token-0123456789"
    assert "0123456789" not in repr(loaded.settings) + repr(loaded.settings.security.credentials)
    bad = [
        {"COMFY_GATEWAY_SECURITY__ADMIN_TOKEN": "short-secret"},
        {"COMFY_GATEWAY_SECURITY__ADMIN_TOKEN": "has spaces in it 0123456789"},
        {"COMFY_GATEWAY_SECURITY__API_TOKENS": '{"ana": "same-token-0123456789", "bo": "same-token-0123456789"}'},
        {"COMFY_GATEWAY_SECURITY__ADMIN_TOKEN": "same-token-0123456789",
         "COMFY_GATEWAY_SECURITY__API_TOKENS": '{"ana": "same-token-0123456789"}'},
        {"COMFY_GATEWAY_SECURITY__ADMIN_TOKEN": "x-token-0123456789", "COMFY_GATEWAY_SECURITY__ADMIN_TOKEN_FILE": "/x"},
        {"COMFY_GATEWAY_SECURITY__ADMIN_TOKEN_FILE": str(tmp_path / "missing")},
    ]
    for case in bad:
        out, err = io.StringIO(), io.StringIO()
        assert run_config_command([], env=case, out=out, err=err) == 2, case
        message = err.getvalue()
        assert "security" in message
        assert "short-secret" not in message and "0123456789" not in message, message
