"""Holds many WebSockets open through a target, idle, as ComfyUI web pages left open do: the load behind the
held-sockets measure (measures.held_websockets). One process, one aiohttp session.

    python bench/ws_hold.py --url ws://127.0.0.1:8190/ws --count 2000 [--backend alpha]

Opens `--count` sockets (at most OPENING at a time), each with its own clientId, waits for each one's status
greeting, then prints READY_MARK and holds them, answering pings (the gateway's heartbeats), until its stdin
closes. Then it closes them and prints one JSON line: how many were held, and the first problem (a socket that
failed to open, or that the target closed while it was held), or null.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import aiohttp

import workload

READY_MARK = "HELD"  # load.HELD_MARK
OPENING = 100  # upgrades in flight at once: a burst of thousands would measure the accept queue, not holding
GREETING_SECONDS = 30.0


async def hold_one(session: aiohttp.ClientSession, url: str, headers: dict[str, str], index: int,
                   opening: asyncio.Semaphore, opened: asyncio.Event, release: asyncio.Event) -> str | None:
    """Opens one socket and holds it until `release`; the problem, if any. `opened` is set once it greeted."""
    async with opening:
        socket = await session.ws_connect(f"{url}?clientId=bench-held-{index}", headers=headers, compress=0,
                                          heartbeat=None, autoping=True)
        greeting = await socket.receive(timeout=GREETING_SECONDS)
    opened.set()
    if greeting.type is not aiohttp.WSMsgType.TEXT:
        await socket.close()
        return f"socket {index}: no greeting ({greeting.type.name})"
    # Reading is what answers the target's pings; a held socket gets nothing else.
    reader = asyncio.create_task(socket.receive())
    released = asyncio.create_task(release.wait())
    done, _ = await asyncio.wait({reader, released}, return_when=asyncio.FIRST_COMPLETED)
    problem = None
    if reader in done:
        message = reader.result()
        problem = f"socket {index}: the target sent {message.type.name} while it was held"
    released.cancel()
    reader.cancel()
    await socket.close()
    return problem


async def hold(url: str, backend: str | None, count: int) -> dict[str, object]:
    headers = {**workload.client_headers(), **({workload.BACKEND_HEADER: backend} if backend else {})}
    opening = asyncio.Semaphore(OPENING)
    release = asyncio.Event()
    events = [asyncio.Event() for _ in range(count)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(hold_one(session, url, headers, i, opening, events[i], release))
                 for i in range(count)]
        all_open = asyncio.gather(*(event.wait() for event in events))
        await asyncio.wait({all_open, *tasks}, return_when=asyncio.FIRST_COMPLETED)  # a task ends early only on failure
        failed = [task for task in tasks if task.done() and (task.exception() or task.result())]
        if not failed:
            print(READY_MARK, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        all_open.cancel()
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    problems = [f"{type(r).__name__}: {r}" if isinstance(r, BaseException) else r for r in results]
    problems = [p for p in problems if p]
    return {"held": count - len(problems), "problem": problems[0] if problems else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--backend")
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    try:
        result = asyncio.run(hold(args.url, args.backend, args.count))
    except Exception as error:  # any failure is a refusal the harness reports, never a traceback
        result = {"held": 0, "problem": f"{type(error).__name__}: {error}"}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
