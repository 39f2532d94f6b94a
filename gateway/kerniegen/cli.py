"""KernieGen's command line: `python -m gateway.kerniegen` and `comfy-gateway kerniegen` parse the
flags here into a KernieGenConfig and serve until SIGINT/SIGTERM. `main(argv)` returns the exit code."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.kerniegen.config import FRONTEND_FROM_PACKAGE, KernieGenConfig
from gateway.kerniegen.inventory import Inventory
from gateway.kerniegen.server import start_kerniegen
from gateway.kerniegen.version import KERNIEGEN_VERSION

log = logging.getLogger("gateway.kerniegen")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m gateway.kerniegen",
        description="KernieGen: a ComfyUI-compatible backend that makes images instantly, without a GPU.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8189, help="port to listen on, 0 for any free one (default 8189)")
    parser.add_argument("--data-dir", type=Path, default=Path("kerniegen-data"),
                        help="holds output/, input/ and temp/ (default ./kerniegen-data)")
    parser.add_argument("--output-dir", type=Path, default=None, help="where outputs go (default DATA_DIR/output)")
    parser.add_argument("--step-delay-ms", type=float, default=20.0,
                        help="pause per executed node in milliseconds, 0 for none (default 20)")
    parser.add_argument("--checkpoint", action="append", metavar="NAME",
                        help="a checkpoint file name to offer; repeat for more "
                             "(default: illustriousXL_v01.safetensors)")
    parser.add_argument("--lora", action="append", metavar="NAME",
                        help="a LoRA file name to offer; repeat for more "
                             "(default: kerniegen_detail_lora_v1.safetensors)")
    ui = parser.add_mutually_exclusive_group()
    ui.add_argument("--frontend-dir", type=Path, default=None, metavar="DIR",
                    help="serve the web UI from this frontend build (default: the installed "
                         "comfyui-frontend-package, if any)")
    ui.add_argument("--no-frontend", action="store_true", help="serve no web UI, only the API")
    parser.add_argument("--user-dir", type=Path, default=None,
                        help="the UI's settings and saved workflows (default DATA_DIR/user)")
    parser.add_argument("--version", action="version", version=f"KernieGen {KERNIEGEN_VERSION}")
    return parser


def config_from_args(args: argparse.Namespace) -> KernieGenConfig:
    defaults = Inventory()
    inventory = Inventory(
        checkpoints=tuple(args.checkpoint) if args.checkpoint else defaults.checkpoints,
        loras=tuple(args.lora) if args.lora else defaults.loras,
    )
    frontend_dir = None if args.no_frontend else (args.frontend_dir or FRONTEND_FROM_PACKAGE)
    return KernieGenConfig(host=args.host, port=args.port, data_dir=args.data_dir, output_dir=args.output_dir,
                           step_delay_ms=args.step_delay_ms, inventory=inventory, frontend_dir=frontend_dir,
                           user_dir=args.user_dir)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
        try:
            config = config_from_args(args)
        except ValueError as error:
            parser.error(str(error))
    except SystemExit as stop:  # --help, --version and usage errors: argparse has printed why
        return stop.code if isinstance(stop.code, int) else 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(config))
    except OSError as error:  # typically: the port is taken
        print(f"kerniegen: cannot listen on {config.host}:{config.port}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(config: KernieGenConfig) -> None:
    server = await start_kerniegen(config, access_log=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or not a POSIX loop
            pass
    log.info("KernieGen %s listening on %s (outputs in %s)", KERNIEGEN_VERSION, server.url, server.state.dirs.output)
    try:
        await stop.wait()
    finally:
        await server.close()
