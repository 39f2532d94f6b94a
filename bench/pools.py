"""Backend pools in one command: `python bench/pools.py [--smoke] [--prompts 90] [--out bench/results]`.

The same stream of prompts (one every `--gap-ms`, each two nodes of `--step-ms` on KernieGen) through a
gateway whose default backend is: one KernieGen; a pool of three; a pool of three whose third member runs
each node 5 times slower. Reports, per case, the time until every prompt had finished, prompts per second,
the median and p95 time from submission to completion, and how many prompts each member took. Every prompt
must complete; a case where one did not is reported as failed (exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from entry import run_main, write_report
from processes import ServerProcess, free_port, gateway_process

BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"
SLOWER = 5  # the slowed member's factor


def prompt_graph(tag: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": tag % 4096}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "pools"}},
    }


class Case:
    def __init__(self, name: str, step_ms: list[float], scratch: Path) -> None:
        self.name, self.step_ms, self.scratch = name, step_ms, scratch / name.replace(" ", "-")
        self.scratch.mkdir(parents=True)
        self.processes: list[ServerProcess] = []
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"

    def start(self) -> str | None:
        urls = []
        for number, step in enumerate(self.step_ms, 1):
            port = free_port()
            process = ServerProcess(f"kerniegen{number}", [
                sys.executable, "-m", "gateway.kerniegen", "--port", str(port), "--no-frontend",
                "--data-dir", str(self.scratch / f"m{number}"), "--step-delay-ms", str(step),
            ], self.scratch / f"m{number}.log")
            self.processes.append(process)
            problem = process.wait_listening(HOST, port, 30)
            if problem:
                return f"member {number} {problem}"
            urls.append(f"http://{HOST}:{port}")
        servers = f'url = "{urls[0]}"' if len(urls) == 1 else "urls = [" + ", ".join(f'"{u}"' for u in urls) + "]"
        gateway = gateway_process(self.scratch, (
            f'listen_port = {self.port}\ndefault_backend = "gpu"\nlog_level = "WARNING"\n'
            f"queue_poll_interval_seconds = 0.5\n"
            f'[store]\npath = "{self.scratch / "gateway.sqlite3"}"\n'
            f'[backends.gpu]\nkind = "kerniegen"\n{servers}\n'
        ))
        self.processes.append(gateway)
        problem = gateway.wait_listening(HOST, self.port, 30)
        return f"gateway {problem}: {gateway.log_tail()}" if problem else None

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    async def run(self, prompts: int, gap_seconds: float, deadline_seconds: float) -> dict[str, Any]:
        placed: dict[str, int] = {}
        submitted: dict[str, float] = {}
        took: list[float] = []
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            started = time.monotonic()

            async def follow(prompt_id: str) -> None:
                while time.monotonic() - started < deadline_seconds:
                    async with http.get(f"{self.url}/history/{prompt_id}") as r:
                        body = await r.json() if r.status == 200 else {}
                    entry = body.get(prompt_id)
                    if entry and entry["status"].get("completed"):
                        took.append(time.monotonic() - submitted[prompt_id])
                        return
                    await asyncio.sleep(0.05)

            followers = []
            for tag in range(prompts):
                async with http.post(f"{self.url}/prompt", json={"prompt": prompt_graph(tag)}) as r:
                    body = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"{self.name}: POST /prompt answered {r.status}: {body}")
                    backend = r.headers.get("X-Comfy-Backend", "?")
                placed[backend] = placed.get(backend, 0) + 1
                submitted[body["prompt_id"]] = time.monotonic()
                followers.append(asyncio.create_task(follow(body["prompt_id"])))
                await asyncio.sleep(gap_seconds)
            await asyncio.gather(*followers)
            elapsed = time.monotonic() - started
        done = len(took)
        return {
            "case": self.name,
            "prompts": prompts,
            "completed": done,
            "seconds": round(elapsed, 2),
            "prompts_per_second": round(done / elapsed, 2),
            "p50_seconds": round(statistics.median(took), 2) if took else None,
            "p95_seconds": round(sorted(took)[int(0.95 * (len(took) - 1))], 2) if took else None,
            "placed": dict(sorted(placed.items())),
        }


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Pools: {args.prompts} prompts, one every {args.gap_ms:g} ms, each 2 nodes × {args.step_ms:g} ms "
        f"(the slowed member: × {SLOWER}).",
        "",
        "| default backend | completed | all done in | prompts/s | p50 submit→done | p95 | prompts per member |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        placed = ", ".join(f"{k} {v}" for k, v in r["placed"].items())
        lines.append(
            f"| {r['case']} | {r['completed']}/{r['prompts']} | {r['seconds']} s | {r['prompts_per_second']} | "
            f"{r['p50_seconds']} s | {r['p95_seconds']} s | {placed} |"
        )
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    step, slow = args.step_ms, args.step_ms * SLOWER
    plans = [("one server", [step]), ("pool of 3", [step, step, step]), ("pool of 3, one slowed", [step, step, slow])]
    results = []
    with tempfile.TemporaryDirectory(prefix="comfy-gateway-pools-") as scratch_name:
        for name, steps in plans:
            case = Case(name, steps, Path(scratch_name))
            try:
                problem = case.start()
                if problem:
                    print(f"pools: {name}: {problem}", file=sys.stderr)
                    return 2
                results.append(await case.run(args.prompts, args.gap_ms / 1000, args.deadline))
            finally:
                case.stop()
    text = markdown(results, args)
    write_report(args.out, "pools", {"cases": results}, text)
    print(text)
    return 0 if all(r["completed"] == r["prompts"] for r in results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few prompts, to check the bench itself runs")
    parser.add_argument("--prompts", type=int, default=90)
    parser.add_argument("--gap-ms", type=float, default=40.0, help="between submissions (default 40)")
    parser.add_argument("--step-ms", type=float, default=60.0, help="KernieGen's time per node (default 60)")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds for every prompt to finish")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    if args.smoke:
        args.prompts, args.step_ms, args.deadline = 6, 5.0, 30.0
    return run_main(lambda: main_async(args), "pools")


if __name__ == "__main__":
    sys.exit(main())
