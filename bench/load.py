"""Load generators, each its own process: wrk for HTTP, curl for single large downloads, ws_load.py for
WebSocket bursts. Each returns a small result that says whether every answer was an error-free success.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import workload
from processes import pinned

BENCH_DIR = Path(__file__).resolve().parent
RESULT_MARK = "BENCH_RESULT "
HELD_MARK = "HELD"  # ws_hold.py's line once every socket is open

# Configured through the environment so one script serves every endpoint; prints one JSON line at the end.
WRK_SCRIPT = """\
local backend = os.getenv("BENCH_BACKEND") or ""
local body_file = os.getenv("BENCH_BODY_FILE") or ""
wrk.method = os.getenv("BENCH_METHOD") or "GET"
if backend ~= "" then wrk.headers["X-Comfy-Backend"] = backend end
CLIENT_HEADERS
if body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.headers["Content-Type"] = "application/json"
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT_MARK{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, '
    .. '"read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
""".replace("RESULT_MARK", RESULT_MARK).replace("CLIENT_HEADERS", "\n".join(
    f'wrk.headers["{name}"] = "{value}"' for name, value in workload.client_headers().items()))


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    bytes: int
    p50_ms: float
    p99_ms: float
    problem: str | None  # why these numbers must not be reported, or None

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def mib_per_second(self) -> float:
        return self.bytes / self.seconds / (1024 * 1024)


@dataclass(frozen=True)
class CurlResult:
    mib_per_second: float
    problem: str | None


@dataclass(frozen=True)
class WsResult:
    messages: int
    messages_per_second: float
    problem: str | None


def write_wrk_script(directory: Path) -> Path:
    path = directory / "bench.lua"
    path.write_text(WRK_SCRIPT)
    return path


async def run_wrk(url: str, *, script: Path, seconds: int, connections: int, backend: str | None,
                  min_body_bytes: int, method: str = "GET", body_file: Path | None = None,
                  cpu: int | None = None) -> WrkResult:
    """Runs wrk and checks each answer was a 2xx/3xx of at least min_body_bytes (bytes read / requests)."""
    env = {"BENCH_BACKEND": backend or "", "BENCH_METHOD": method, "BENCH_BODY_FILE": str(body_file or "")}
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url]
    code, out, err = await _run(pinned(command, cpu), env=env, timeout_seconds=seconds + 30)
    line = next((ln for ln in out.splitlines() if ln.startswith(RESULT_MARK)), None)
    if code != 0 or line is None:
        return WrkResult(0, 1.0, 0, 0.0, 0.0, f"wrk failed (exit {code}): {(err or out).strip()[-300:]}")
    raw = json.loads(line[len(RESULT_MARK):])
    result = WrkResult(requests=raw["requests"], seconds=raw["duration_us"] / 1e6, bytes=raw["bytes"],
                       p50_ms=raw["p50_us"] / 1000, p99_ms=raw["p99_us"] / 1000, problem=None)
    errors = {kind: raw[kind] for kind in ("connect", "read", "write", "status", "timeout") if raw[kind]}
    problem = None
    if errors:
        problem = "errors during load: " + ", ".join(f"{count} {kind}" for kind, count in errors.items())
    elif result.requests == 0:
        problem = "no request completed"
    elif result.bytes / result.requests < min_body_bytes:
        problem = f"answers too short: {result.bytes / result.requests:.0f} bytes each, body is {min_body_bytes}"
    return WrkResult(result.requests, result.seconds, result.bytes, result.p50_ms, result.p99_ms, problem)


async def run_curl(url: str, *, backend: str | None, expected_bytes: int, limit_rate: int | None = None,
                   cpu: int | None = None) -> CurlResult:
    """Downloads url once, discarding the body; limit_rate in bytes per second plays a slow client."""
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{speed_download}"]
    if backend:
        command += ["-H", f"X-Comfy-Backend: {backend}"]
    for name, value in workload.client_headers().items():
        command += ["-H", f"{name}: {value}"]
    if limit_rate:
        command += ["--limit-rate", str(limit_rate)]
    code, out, err = await _run(pinned([*command, url], cpu), timeout_seconds=300)
    fields = out.split()
    if code != 0 or len(fields) != 3:
        return CurlResult(0.0, f"curl failed (exit {code}): {err.strip()[-300:]}")
    status, size, speed = int(fields[0]), int(fields[1]), float(fields[2])
    if status != 200 or size != expected_bytes:
        return CurlResult(0.0, f"answered {status} with {size} bytes, expected 200 with {expected_bytes}")
    return CurlResult(speed / (1024 * 1024), None)


async def run_ws(url: str, *, backend: str | None, connections: int, burst: int,
                 cpu: int | None = None) -> WsResult:
    command = [sys.executable, str(BENCH_DIR / "ws_load.py"), "--url", url, "--connections", str(connections),
               "--burst", str(burst)]
    if backend:
        command += ["--backend", backend]
    code, out, err = await _run(pinned(command, cpu), timeout_seconds=120)
    try:
        raw = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return WsResult(0, 0.0, f"ws_load failed (exit {code}): {err.strip()[-300:]}")
    if raw.get("problem"):
        return WsResult(0, 0.0, raw["problem"])
    return WsResult(raw["messages"], raw["messages"] / raw["seconds"], None)


class HeldSockets:
    """`ws_hold.py` holding `count` idle WebSockets through a target, as an async context: entered once every
    socket is open and greeted, left by releasing them. `problem` says why the holding failed, if it did."""

    def __init__(self, url: str, *, backend: str | None, count: int, cpu: int | None, open_seconds: float) -> None:
        self.command = pinned([sys.executable, str(BENCH_DIR / "ws_hold.py"), "--url", url, "--count", str(count),
                               *(["--backend", backend] if backend else [])], cpu)
        self.open_seconds = open_seconds
        self.process: asyncio.subprocess.Process | None = None
        self.problem: str | None = None
        self.open = False  # every socket open and greeted
        self._early = b""

    async def __aenter__(self) -> Self:
        self.process = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), self.open_seconds)
        except TimeoutError:
            line = b""
            self.problem = f"the sockets were not all open within {self.open_seconds:.0f} s"
        self.open = line.decode().strip() == HELD_MARK
        self._early = b"" if self.open else line  # ws_hold's result, when it gave up before every socket was open
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.process is not None
        try:
            out, err = await asyncio.wait_for(self.process.communicate(b""), 120)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            self.problem = self.problem or "ws_hold did not close its sockets within 120 s"
            return
        try:
            raw = json.loads((self._early + out).decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.problem = self.problem or f"ws_hold failed: {err.decode(errors='replace').strip()[-300:]}"
            return
        self.problem = self.problem or raw.get("problem")
        if not self.open and self.problem is None:
            self.problem = "ws_hold stopped before every socket was open"


async def _run(command: list[str], *, env: dict[str, str] | None = None,
               timeout_seconds: float) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, env={**os.environ, **(env or {})})
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout_seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        return -1, "", f"timed out after {timeout_seconds:.0f} s"
    return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")
