"""Per-call cost of the SQLite state store's hot-path calls at 1, 1,000 and 100,000 stored prompts.

Run: /work/venv/bin/python bench/store_sqlite_cost.py [--calls N]
Prints microseconds per call (mean over a round, median of 5 rounds) for record_prompt, lookup_prompt,
get_preference, forget_prompt, count_prompts and a prune that has nothing to remove; then the latency
distribution of single record_prompt calls (the one on POST /prompt's path), WAL checkpoints included.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.config.settings import StoreSettings
from gateway.state.store import PromptRecord, open_store

SIZES = (1, 1_000, 100_000)
ROUNDS = 5


async def per_call_us(calls: int, call: Callable[[int], Awaitable[object]]) -> float:
    samples = []
    for round_index in range(ROUNDS):
        started = time.perf_counter()
        for index in range(calls):
            await call(round_index * calls + index)
        samples.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(samples)


async def measure(size: int, calls: int, directory: Path) -> dict[str, float]:
    store = await open_store(StoreSettings(path=directory / f"store-{size}.sqlite3"))
    now = time.time()
    for index in range(size):
        await store.record_prompt(PromptRecord(f"existing-{index}", "kerniegen", "alice", "c", now - index * 0.001))
    await store.set_preference("alice", "comfyui")
    ids = [f"existing-{random.randrange(size)}" for _ in range(calls * ROUNDS)]

    async def record(i: int) -> None:
        await store.record_prompt(PromptRecord(f"new-{size}-{i}", "comfyui", "alice", "c", time.time()))

    async def forget(i: int) -> None:
        await store.forget_prompt(f"new-{size}-{i}")  # back to `size` entries for the next measure

    results = {
        "record_prompt": await per_call_us(calls, record),
        "lookup_prompt (hit)": await per_call_us(calls, lambda i: store.lookup_prompt(ids[i])),
        "lookup_prompt (miss)": await per_call_us(calls, lambda i: store.lookup_prompt(f"absent-{i}")),
        "get_preference": await per_call_us(calls, lambda i: store.get_preference("alice")),
        "forget_prompt": await per_call_us(calls, forget),
        "count_prompts": await per_call_us(20, lambda i: store.count_prompts()),
        "prune (nothing to do)": await per_call_us(20, lambda i: store.prune()),
    }
    await store.close()
    return results


async def record_latency_us(calls: int, directory: Path) -> dict[str, float]:
    store = await open_store(StoreSettings(path=directory / "latency.sqlite3"))
    samples = []
    for index in range(calls):
        started = time.perf_counter()
        await store.record_prompt(PromptRecord(f"p-{index}", "comfyui", "alice", "c", time.time()))
        samples.append((time.perf_counter() - started) * 1e6)
    await store.close()
    samples.sort()
    return {f"p{q}": samples[min(len(samples) - 1, int(len(samples) * q / 100))] for q in (50, 99, 99.9)} | {
        "max": samples[-1],
        "calls over 1 ms": sum(1 for sample in samples if sample > 1000),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000, help="calls per round (default 2000)")
    calls = parser.parse_args().calls
    with tempfile.TemporaryDirectory() as directory:
        table = {size: await measure(size, calls, Path(directory)) for size in SIZES}
        latency = await record_latency_us(calls * 25, Path(directory))
    names = list(table[SIZES[0]])
    print(f"{'µs per call':<24}" + "".join(f"{size:>12,}" for size in SIZES))
    for name in names:
        print(f"{name:<24}" + "".join(f"{table[size][name]:>12.1f}" for size in SIZES))
    print(f"\nsingle record_prompt calls ({calls * 25:,}): " + ", ".join(f"{k} {v:.0f}" for k, v in latency.items()))


if __name__ == "__main__":
    asyncio.run(main())
