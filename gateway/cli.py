"""The `comfy-gateway` command: serve, config, check, kerniegen."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.check import add_check_arguments
from gateway.config.command import add_config_arguments, add_setting_arguments, cli_settings, run_config_command

if TYPE_CHECKING:
    from gateway.config.settings import LoadedSettings
    from gateway.core.startup import CannotListen

log = logging.getLogger("comfy_gateway")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfy-gateway", description="ComfyUI-compatible routing gateway")
    parser.add_argument("--version", action="version", version=f"comfy-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway (embedded KernieGen by default)")
    add_setting_arguments(serve)
    # A worker of `--workers N`, started by that process (its pid): see gateway/workers.py.
    serve.add_argument("--worker-of", type=int, default=None, help=argparse.SUPPRESS)
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
    return serve(args, argv)


def serve(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """`comfy-gateway serve`: 0 after a clean stop; 2, after the lines logged before it, with a message naming
    the setting, its source and the fix, when the gateway cannot start."""
    from gateway.config.settings import ConfigError, load_settings
    from gateway.core.redact import redact_secrets
    from gateway.observe.logs import configure_logging, flush_logs

    try:
        loaded = load_settings(args.config, cli=cli_settings(args))
    except ConfigError as exc:
        print(redact_secrets(f"comfy-gateway: refusing to start: {exc}"), file=sys.stderr)
        return 2
    settings = loaded.settings
    configure_logging(settings.log_level, settings.log_format, batch_seconds=settings.log_batch_seconds)
    skip_unused_log_record_fields()
    try:
        return start(loaded, args.worker_of, argv)
    except Exception as exc:
        refusal = startup_refusal(exc, loaded)
        if refusal is None:
            raise
        flush_logs()
        print(redact_secrets(f"comfy-gateway: refusing to start: {refusal}"), file=sys.stderr)
        return 2
    finally:
        flush_logs()


def start(loaded: LoadedSettings, parent: int | None, argv: Sequence[str]) -> int:
    from gateway.app import create_app
    from gateway.serve import run_gateway

    settings = loaded.settings
    worker = parent is not None
    if parent is not None:
        from gateway.workers import stop_with_parent

        stop_with_parent(parent)
        log.info("worker (pid %d) starting", os.getpid())
    else:
        log.info(
            "comfy-gateway %s starting; configuration from %s", __version__, loaded.config_path or "built-in defaults"
        )
        for key, source in sorted(loaded.sources.items()):
            if source != "default":
                log.info("  setting %s from %s", key, source)
        for name, var in loaded.dropped_backends.items():
            log.info("  built-in backend %s dropped by env %s=", name, var)
    if settings.workers > 1 and not worker:
        from gateway.workers import run_workers

        return run_workers(settings, argv)
    # A worker leaves the embedded backends to its parent, and shares the port with its siblings.
    run_gateway(create_app(settings, run_embedded=not worker), settings, reuse_port=worker)
    return 0


def startup_refusal(exc: Exception, loaded: LoadedSettings) -> str | None:
    """What to tell the operator when `exc` stopped the start-up, or None for a failure that is a bug."""
    from gateway.core.errors import StartupRefused
    from gateway.core.startup import CannotListen
    from gateway.outputs.root import OutputRootError
    from gateway.state.store import StoreRefused
    from gateway.workers import WorkersRefused

    if isinstance(exc, CannotListen):
        return describe_cannot_listen(exc, loaded)
    if isinstance(exc, StartupRefused):  # its message is whole: the backends it names and what to fix
        return str(exc)
    if isinstance(exc, StoreRefused):
        store = loaded.settings.store
        key = "store.redis_url" if store.kind == "redis" else "store.path"
        return f"{exc} [{key} from {loaded.sources[key]}]"
    if isinstance(exc, OutputRootError):
        return f"{exc} [output_root from {loaded.sources['output_root']}]"
    if isinstance(exc, WorkersRefused):
        return f"{exc} [workers from {loaded.sources['workers']}]"
    if isinstance(exc, OSError) and exc.filename is not None:
        return (
            f"cannot use {exc.filename}: {exc.strerror}; check state_dir (from {loaded.sources['state_dir']}) and "
            "the other paths of the configuration (output_root, backends.*.output_dir, backends.*.kerniegen.data_dir)"
        )
    return None


def describe_cannot_listen(exc: CannotListen, loaded: LoadedSettings) -> str:
    from gateway.config.sources import dotted, env_var_of

    key = dotted(exc.key)
    said = f"{exc} ({key} from {loaded.sources[key]})"
    who = f"`ss -ltnp 'sport = :{exc.port}'` shows which process holds it"
    if exc.key == ("listen_port",):
        return f"{said}; choose another with --port or listen_port (env {env_var_of(exc.key)}), or stop it ({who})"
    if exc.key == ("listen_host",):
        return f"{said}; set --host or listen_host (env {env_var_of(exc.key)}) to an address of this host, e.g. 0.0.0.0"
    fix = "a free port" if exc.address_in_use else "an address of this host"
    stop = f", or stop it ({who})" if exc.address_in_use else ""
    return f"{said}; set {key} (env {env_var_of(exc.key)}) to {fix}{stop}"


def skip_unused_log_record_fields() -> None:
    """Every access line builds a LogRecord; these fields of it appear in neither log format, and finding the
    caller's frame, thread and process for each is a noticeable share of a line's cost (the logging HOWTO's
    "Optimization" switches)."""
    logging._srcfile = None  # no frame walk for %(filename)s / %(lineno)d
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False

