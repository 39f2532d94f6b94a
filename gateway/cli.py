"""The `comfy-gateway` command: serve, config, check, kerniegen."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from gateway import __version__
from gateway.check import add_check_arguments
from gateway.config.command import add_config_arguments, run_config_command

log = logging.getLogger("comfy_gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfy-gateway", description="ComfyUI-compatible routing gateway")
    parser.add_argument("--version", action="version", version=f"comfy-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway (embedded KernieGen by default)")
    serve.add_argument("--config", type=Path, help="TOML file (default: $COMFY_GATEWAY_CONFIG, else built-in defaults)")
    config = commands.add_parser("config", help="print the effective configuration and where each value came from")
    add_config_arguments(config)
    check = commands.add_parser(
        "check", help="ask every configured backend what it is and what it has; exit 0 when all is well"
    )
    add_check_arguments(check)
    commands.add_parser("kerniegen", help="run KernieGen, the ComfyUI-compatible mock, on its own", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "kerniegen":
        from gateway.kerniegen.cli import main as kerniegen_main

        return kerniegen_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "config":
        return run_config_command(args)
    if args.command == "check":
        from gateway.check.probe import run_check_command

        return run_check_command(args)
    return serve(args.config)


def serve(config_path: Path | None) -> int:
    from gateway.app import create_app
    from gateway.config.settings import ConfigError, load_settings
    from gateway.core.errors import StartupRefused
    from gateway.core.redact import redact_secrets
    from gateway.observe.logs import configure_logging, flush_logs
    from gateway.state.store import StoreRefused

    try:
        loaded = load_settings(config_path)
    except ConfigError as exc:
        print(redact_secrets(f"comfy-gateway: refusing to start: {exc}"), file=sys.stderr)
        return 2
    settings = loaded.settings
    configure_logging(settings.log_level, settings.log_format, batch_seconds=settings.log_batch_seconds)
    skip_unused_log_record_fields()
    log.info("comfy-gateway %s starting; configuration from %s", __version__, loaded.config_path or "built-in defaults")
    for key, source in sorted(loaded.sources.items()):
        if source != "default":
            log.info("  setting %s from %s", key, source)
    app = create_app(settings)
    try:
        if settings.data_path == "fast":
            from gateway.serve import run_fast_gateway

            run_fast_gateway(app, settings)
            return 0
        web.run_app(
            app,
            host=settings.listen_host,
            port=settings.listen_port,
            access_log=None,  # our own access line (logs.py) says which backend served what, and why
            print=lambda _msg: log.info("listening on http://%s:%d", settings.listen_host, settings.listen_port),
        )
    except (StoreRefused, StartupRefused) as exc:
        # Raised by the app's start-up (its cleanup_ctx opens the store), and passed out unchanged by either
        # server's loop. Its message is whole: said once, with no traceback, after the lines logged before it.
        flush_logs()
        print(redact_secrets(f"comfy-gateway: refusing to start: {exc}"), file=sys.stderr)
        return 2
    return 0


def skip_unused_log_record_fields() -> None:
    """Every access line builds a LogRecord; these fields of it appear in neither log format, and finding the
    caller's frame, thread and process for each is a noticeable share of a line's cost (the logging HOWTO's
    "Optimization" switches)."""
    logging._srcfile = None  # no frame walk for %(filename)s / %(lineno)d
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False

