"""What every benchmark command shares at its edges: writing the report files, and a main that stops its
servers on SIGTERM as on Ctrl-C."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any


def write_report(out: Path, prefix: str, result: dict[str, Any], markdown: str) -> None:
    """`<prefix>-<timestamp>` and `<latest>` copies of the JSON and Markdown report in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    latest = "latest" if prefix == "bench" else f"{prefix}-latest"
    for name in (f"{prefix}-{stamp}", latest):
        (out / f"{name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        (out / f"{name}.md").write_text(markdown)


def run_main(run: Callable[[], Coroutine[Any, Any, int]], label: str) -> int:
    # By default SIGTERM ends Python without running `finally`, which would leave the servers running and
    # the scratch dir behind; as KeyboardInterrupt it cancels the run and the cleanup happens.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        print(f"{label}: interrupted; servers stopped", file=sys.stderr)
        return 130


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
