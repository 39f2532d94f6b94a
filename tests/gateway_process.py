"""The real `comfy-gateway serve` as a subprocess: started, waited for, stopped, its stderr read."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REFUSAL = "comfy-gateway: refusing to start: "
START_SECONDS = 60


def gateway_env(**extra: str) -> dict[str, str]:
    """This environment without the COMFY_GATEWAY_* of whoever runs the tests, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFY_GATEWAY_", "PROMETHEUS_MULTIPROC_DIR"))}
    return {**env, **extra}


def run_serve(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`comfy-gateway serve ARGS` run to its end (for start-up refusals)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", *args],
        capture_output=True, text=True, env=gateway_env(**env), cwd=cwd, timeout=START_SECONDS,
        stdin=subprocess.DEVNULL,
    )


def refusal_of(result: subprocess.CompletedProcess[str]) -> str:
    """The refusal: status 2, no traceback, written once and after every log line."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    refusals = [line for line in lines if REFUSAL in line]
    assert len(refusals) == 1, result.stderr
    assert lines[-1] == refusals[0] and refusals[0].startswith(REFUSAL), result.stderr
    return refusals[0]


class GatewayProcess:
    """`comfy-gateway serve ARGS` running in the background; its stderr goes to a file."""

    def __init__(self, args: list[str], cwd: Path, name: str = "gateway", **env: str) -> None:
        self.log_path = cwd / f"{name}.stderr.txt"
        with self.log_path.open("w") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", *args],
                stderr=log_file, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=gateway_env(**env), cwd=cwd,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    async def wait_listening(self, url: str) -> None:
        deadline = time.monotonic() + START_SECONDS
        async with aiohttp.ClientSession() as http:
            while True:
                assert self.process.poll() is None, f"the gateway exited {self.process.returncode}:\n{self.log}"
                try:
                    async with http.get(f"{url}/gateway/health") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, f"the gateway did not start within {START_SECONDS} s:\n{self.log}"
                await asyncio.sleep(0.1)

    async def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"the gateway did not stop within {timeout} s:\n{self.log}"
            await asyncio.sleep(0.05)
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
