"""WebSocket load for the benchmark, in its own process: N sockets each ask for a burst of progress frames
and count them until the executed frame; prints one JSON line {messages, seconds, problem}.

Every frame is checked for its type, so a proxy that drops, merges or mangles frames is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp

import workload


class StartLine:
    """Holds every socket until all have connected, so only frames are timed, not handshakes."""

    def __init__(self, sockets: int) -> None:
        self.waiting = sockets
        self.all_ready = asyncio.Event()
        self.go = asyncio.Event()

    def arrive(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.all_ready.set()


async def burst_once(session: aiohttp.ClientSession, url: str, headers: dict[str, str], burst: int,
                     line: StartLine, backend: str | None = None) -> tuple[int, str | None]:
    """Returns (messages received after the request, problem or None)."""
    state = {"arrived": False}
    try:
        return await _burst(session, url, headers, burst, line, state, backend)
    finally:
        if not state["arrived"]:
            line.arrive()  # a socket that failed early must not hold the others at the start line


async def _burst(session: aiohttp.ClientSession, url: str, headers: dict[str, str], burst: int,
                 line: StartLine, state: dict[str, bool], backend: str | None) -> tuple[int, str | None]:
    async with session.ws_connect(url, headers=headers, compress=0, max_msg_size=1024 * 1024,
                                  autoping=True) as socket:
        greeting = await socket.receive(timeout=10)
        if greeting.type != aiohttp.WSMsgType.TEXT or json.loads(greeting.data).get("type") != "status":
            return 0, f"first frame was not a status message: {greeting.type} {str(greeting.data)[:80]}"
        state["arrived"] = True
        line.arrive()
        await line.go.wait()
        await socket.send_str(f"burst {burst} {backend}" if backend else f"burst {burst}")
        received = 0
        while True:
            message = await socket.receive(timeout=30)
            if message.type != aiohttp.WSMsgType.TEXT:
                return received, f"socket ended after {received} frames: {message.type}"
            received += 1
            kind = frame_type(message.data)
            if kind == "progress":
                continue
            if kind == "executed":
                break
            return received, f"unexpected frame: {message.data[:80]}"
        if received != burst + 1:
            return received, f"expected {burst + 1} frames, got {received}"
        return received, None


def frame_type(text: str) -> str | None:
    # The type leads the frame as ComfyUI writes it; looking there first keeps the client from being the
    # limit, and parsing is the fallback for a proxy that re-serialised the frame in another key order.
    head = text[:24]
    for kind in ("progress", "executed"):
        if f'"{kind}"' in head:
            return kind
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed.get("type") if isinstance(parsed, dict) else None


async def measure(url: str, backend: str | None, connections: int, burst: int) -> dict[str, object]:
    headers = {**workload.client_headers(), **({workload.BACKEND_HEADER: backend} if backend else {})}
    line = StartLine(connections)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [
            asyncio.create_task(burst_once(session, url, headers, burst, line, backend)) for _ in range(connections)
        ]
        await asyncio.wait_for(line.all_ready.wait(), 30)
        began = time.perf_counter()
        line.go.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        seconds = time.perf_counter() - began
    problems = [str(r) if isinstance(r, BaseException) else r[1] for r in results]
    problems = [p for p in problems if p]
    messages = sum(r[0] for r in results if not isinstance(r, BaseException))
    return {"messages": messages, "seconds": seconds, "problem": problems[0] if problems else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--backend")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--burst", type=int, default=20_000)
    args = parser.parse_args()
    try:
        result = asyncio.run(measure(args.url, args.backend, args.connections, args.burst))
    except Exception as error:  # any failure is a refusal the harness reports, never a traceback
        result = {"messages": 0, "seconds": 0.0, "problem": f"{type(error).__name__}: {error}"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
