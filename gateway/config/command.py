"""`comfy-gateway config`: print the effective configuration and where every value came from.

The text form is valid TOML (unset values are commented out), so it can be saved as a config file;
`--json` gives the same facts for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from gateway.config.settings import CLI_SETTINGS, ConfigError, LoadedSettings, load_settings
from gateway.config.sources import DEFAULT_SOURCE, dotted, flatten
from gateway.core.redact import redact_secrets


def add_config_file_argument(parser: argparse.ArgumentParser) -> None:
    """--config, as every command that loads the settings takes it."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="TOML configuration file (default: $COMFY_GATEWAY_CONFIG, else built-in defaults)",
    )


def add_setting_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags `serve` and `config` share: the file, and the settings a flag may override (CLI_SETTINGS)."""
    add_config_file_argument(parser)
    parser.add_argument("--host", default=None, help="listen on this address (overrides listen_host)")
    parser.add_argument("--port", type=int, default=None, help="listen on this port (overrides listen_port)")
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N", help="gateway processes sharing the port (overrides workers)"
    )


def cli_settings(args: argparse.Namespace) -> dict[str, object]:
    """The setting flags given on the command line, for load_settings(cli=...)."""
    return {flag: getattr(args, flag.removeprefix("--"), None) for flag in CLI_SETTINGS}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `comfy-gateway config`, for the lead's sub-command parser."""
    add_setting_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON: {key: {value, source}}")


def run_config_command(
    args: argparse.Namespace | list[str],
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the effective configuration with each value's source; 0 on success, 2 if it is invalid."""
    out = out or sys.stdout
    err = err or sys.stderr
    if isinstance(args, list):
        parser = argparse.ArgumentParser(prog="comfy-gateway config", description=__doc__)
        add_config_arguments(parser)
        try:
            args = parser.parse_args(args)
        except SystemExit as exc:  # --help or a usage error, already printed by argparse
            return exc.code if isinstance(exc.code, int) else 2
    try:
        loaded = load_settings(getattr(args, "config", None), env, cli_settings(args))
    except ConfigError as exc:
        print(redact_secrets(f"comfy-gateway: {exc}"), file=err)
        return 2
    rendered = render_effective_config_json(loaded) if getattr(args, "json", False) else render_effective_config(loaded)
    # A redis_url or backend URL may carry a password; this output is pasted into tickets.
    print(redact_secrets(rendered), file=out)
    return 0


def render_effective_config(loaded: LoadedSettings) -> str:
    """One `key = value  # source` line per setting, in the order the settings are declared."""
    settings = loaded.settings
    rows = []
    for path, value in flatten(settings.model_dump(mode="json")).items():
        key = dotted(path)
        assignment = f"# {key} is unset" if value is None else f"{key} = {_toml_literal(value)}"
        rows.append((assignment, _describe_source(loaded.sources[key])))
    width = max(len(assignment) for assignment, _ in rows)
    header = [
        "# comfy-gateway effective configuration",
        f"# config file: {_describe_config_file(loaded)}",
        f"# routing: default backend {settings.default_backend!r}; select with header "
        f"{settings.backend_header} or query ?{settings.backend_query_param}=<name>",
        *(f"# built-in backend {name!r} dropped by env {var}=" for name, var in loaded.dropped_backends.items()),
        *(
            f"# built-in backend {name!r} is as shipped: routed to when named, not watched by alerts"
            for name in sorted(settings.builtin_backends - {settings.default_backend})
        ),
        "",
    ]
    return "\n".join(header + [f"{assignment:<{width}}  # {source}" for assignment, source in rows])


def render_effective_config_json(loaded: LoadedSettings) -> str:
    values = flatten(loaded.settings.model_dump(mode="json"))
    document = {
        "config_file": str(loaded.config_path) if loaded.config_path else None,
        "config_file_source": loaded.config_path_source,
        "dropped_backends": {name: f"env {var}" for name, var in loaded.dropped_backends.items()},
        "unwatched_backends": sorted(loaded.settings.builtin_backends - {loaded.settings.default_backend}),
        "values": {
            dotted(path): {"value": value, "source": loaded.sources[dotted(path)]} for path, value in values.items()
        },
    }
    return json.dumps(document, indent=2)


def _describe_config_file(loaded: LoadedSettings) -> str:
    if loaded.config_path is None:
        return "none (built-in defaults and environment only)"
    return f"{loaded.config_path} (from {loaded.config_path_source})"


def _describe_source(source: str) -> str:
    if source == DEFAULT_SOURCE or source.startswith(("env ", "--")) or " and " in source:
        return source
    return f"file {source}"


def _toml_literal(value: Any) -> str:
    # JSON strings, numbers, booleans and arrays are also valid TOML values.
    return json.dumps(value, ensure_ascii=False)
