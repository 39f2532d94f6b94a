"""Instructions the gateway executes per request, counted by valgrind's callgrind: a figure that does not move
with the machine's load, the hypervisor or another test suite running beside it, so two commits can be
compared on a busy machine where run.py's timings cannot.

    python bench/instructions.py                       # the gateway of this checkout
    python bench/instructions.py --python OTHER/.venv/bin/python   # another checkout's, for a before/after

The gateway runs under callgrind with instrumentation off (start-up, imports and the warm-up are not counted),
in front of one fake upstream (upstream.py, the same as run.py's `alpha`), with its real configuration
(targets.gateway_config). After a warm-up (pools, the affinity lookup of the /history id, lazy imports)
instrumentation is switched on for exactly `--requests` requests over four keep-alive connections, then off;
the count is the gateway's whole process over those requests, divided by their number. The client is a plain
asyncio loop in this process: its speed does not matter, only that the count of requests is exact.

Needs valgrind (`apt-get install valgrind`). About a minute per route.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import targets
import workload
from processes import ServerProcess, free_port

ROUTES = {
    "history": lambda: f"/history/{workload.history_prompt_id(targets.LOAD_BACKEND)}",
    "queue": lambda: "/queue",
    "prompt": lambda: "/prompt",  # POST of the ~20 KB API prompt: guardrails, the affinity record
}
BODIES = {"prompt": workload.prompt_request_body}
CONNECTIONS = 4
WARM_UP_REQUESTS = 200
INVENTORY_WAIT_TRIES = 60


async def send(port: int, path: str, count: int, body: bytes | None = None) -> int:
    """`count` GETs of `path` (POSTs of `body`), spread over CONNECTIONS keep-alive connections, each answer
    read whole. Returns how many answers say the guardrails skipped the prompt (no inventory read yet)."""
    skipped = 0
    headers = {workload.BACKEND_HEADER: targets.LOAD_BACKEND, **workload.client_headers()}
    if body is not None:
        headers |= {"Content-Type": "application/json", "Content-Length": str(len(body))}
    request = (f"{'GET' if body is None else 'POST'} {path} HTTP/1.1\r\nHost: {targets.HOST}:{port}\r\n"
               + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n").encode()
    request += body or b""

    async def one_connection(requests: int) -> None:
        reader, writer = await asyncio.open_connection(targets.HOST, port)
        try:
            for _ in range(requests):
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    status_line = head.partition(b"\r\n")[0].decode(errors="replace")
                    raise RuntimeError(f"{path}: answered {status_line}")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                if b"X-Comfy-Guardrails: skipped" in head:
                    nonlocal skipped
                    skipped += 1
        finally:
            writer.close()

    shares = [count // CONNECTIONS + (1 if i < count % CONNECTIONS else 0) for i in range(CONNECTIONS)]
    await asyncio.gather(*(one_connection(share) for share in shares))
    return skipped


def callgrind_control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def counted_instructions(out_prefix: Path) -> int:
    """The instructions in every dump callgrind wrote (one per `-d`, and one at exit)."""
    total = 0
    for dump in out_prefix.parent.glob(out_prefix.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total


def measure(python: str, route: str, requests: int, scratch: Path) -> int:
    """Instructions per request of `route` through the gateway `python` runs."""
    case = scratch / route
    case.mkdir()
    upstream_port = free_port()
    upstream = ServerProcess("upstream", [sys.executable, str(targets.BENCH_DIR / "upstream.py"), "--name",
                                          targets.LOAD_BACKEND, "--host", targets.HOST, "--port",
                                          str(upstream_port), "--data-dir", str(case / "upstream")],
                             case / "upstream.log")
    gateway: ServerProcess | None = None
    try:
        problem = upstream.wait_listening(targets.HOST, upstream_port, 30)
        if problem:
            raise RuntimeError(f"upstream {problem}")
        port = free_port()
        (case / "state").mkdir()
        config = case / "gateway.toml"
        config.write_text(targets.gateway_config(port, case / "state", {
            targets.LOAD_BACKEND: f"http://{targets.HOST}:{upstream_port}"}))
        out = case / "callgrind.out"
        gateway = ServerProcess("gateway", ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                            f"--callgrind-out-file={out}", python, "-m", "gateway", "serve",
                                            "--config", str(config)], case / "gateway.log", cwd=case)
        problem = gateway.wait_listening(targets.HOST, port, 300)
        if problem:
            raise RuntimeError(f"gateway {problem}; its log ends:\n{gateway.log_tail()}")
        path = ROUTES[route]()
        body = BODIES[route]() if route in BODIES else None
        asyncio.run(send(port, path, WARM_UP_REQUESTS, body))
        for _ in range(INVENTORY_WAIT_TRIES):  # the guardrails check each prompt once the inventory is read
            if not asyncio.run(send(port, path, 1, body)):
                break
            time.sleep(1.0)
        callgrind_control("-i", "on", str(gateway.pid))
        if asyncio.run(send(port, path, requests, body)):
            raise RuntimeError(f"{path}: the guardrails skipped prompts (no inventory read)")
        callgrind_control("-i", "off", str(gateway.pid))
        callgrind_control("-d", str(gateway.pid))
        time.sleep(0.5)
        gateway.stop()
        gateway = None
        return counted_instructions(out) // requests
    finally:
        if gateway is not None:
            gateway.stop()
        upstream.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="the Python whose `gateway` package is measured")
    parser.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated subset of {', '.join(ROUTES)}")
    parser.add_argument("--requests", type=int, default=2000, help="requests counted per route")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    routes = [name.strip() for name in args.routes.split(",") if name.strip()]
    unknown = [name for name in routes if name not in ROUTES]
    if unknown:
        parser.error(f"unknown routes: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="comfy-gateway-instructions-") as scratch:
        for route in routes:
            per_request = measure(args.python, route, args.requests, Path(scratch))
            print(f"{route}: {per_request:,} instructions per request ({args.requests} requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
