"""The scale benchmark's two measurements, each one wrk run (load.run_wrk) with the target's CPU read from
/proc over the window: GET /history/{id} over a list of stored prompt ids at 32 connections, and GET /history
(whole or paged) one request at a time for the answer time. Each run also notes how much CPU processes
outside the benchmark took meanwhile, so a disturbed window can be measured again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import load
from measures import Sample
from processes import ServerProcess
from run import CpuLedger

# wrk asks for each id of the list in turn, from requests formatted once; `done` prints the line run_wrk reads.
IDS_SCRIPT = """\
local paths = {}
for line in io.lines("IDS_FILE") do paths[#paths + 1] = "/history/" .. line end
local requests, position = {}, 0
function init(args)
  for i, path in ipairs(paths) do requests[i] = wrk.format("GET", path) end
end
function request()
  position = position % #requests + 1
  return requests[position]
end
"""


@dataclass(frozen=True)
class LoadSettings:
    seconds: int
    latency_seconds: int
    connections: int
    load_cpu: int | None
    scratch: Path


@dataclass(frozen=True)
class Window:
    """What one wrk run gave, and the CPU other processes took (percent of one CPU) while it ran."""

    samples: list[Sample]
    others_percent: float


def write_ids_script(directory: Path, ids_file: Path) -> Path:
    if '"' in str(ids_file) or "\\" in str(ids_file):
        raise ValueError(f"cannot quote {ids_file} in a Lua string")
    done = load.WRK_SCRIPT[load.WRK_SCRIPT.index("function done"):]  # the same result line as every run
    path = directory / f"{ids_file.parent.name}-{ids_file.stem}.lua"
    path.write_text(IDS_SCRIPT.replace("IDS_FILE", str(ids_file)) + done)
    return path


async def history_by_id(base_url: str, process: ServerProcess, script: Path, min_body_bytes: int,
                        settings: LoadSettings) -> Window:
    """req/s, p50, p99 and the gateway's CPU µs per GET /history/{id}, ids from `script`'s list."""
    return await _window(base_url + "/history/", process, settings, prefix="history", script=script,
                         seconds=settings.seconds, connections=settings.connections, min_body_bytes=min_body_bytes)


async def history_answer(url: str, process: ServerProcess, min_body_bytes: int, settings: LoadSettings,
                         prefix: str) -> Window:
    """One connection, one request at a time: p50/p99 is the answer time, plus the CPU per answer."""
    script = load.write_wrk_script(settings.scratch)
    return await _window(url, process, settings, prefix=prefix, script=script, seconds=settings.latency_seconds,
                         connections=1, min_body_bytes=min_body_bytes)


async def _window(url: str, process: ServerProcess, settings: LoadSettings, *, prefix: str, script: Path,
                  seconds: int, connections: int, min_body_bytes: int) -> Window:
    ledger = CpuLedger.now()
    pids = process.tree()
    cpu_before = process.cpu_seconds(pids)
    result = await load.run_wrk(url, script=script, seconds=seconds, connections=connections, backend=None,
                                min_body_bytes=min_body_bytes, cpu=settings.load_cpu)
    cpu_seconds = process.cpu_seconds(pids) - cpu_before
    others = ledger.contention_since()
    kinds = ("rps", "p50_ms", "p99_ms", "cpu_us")
    if result.problem:
        samples = [Sample(f"{prefix}_{kind}", None, result.problem) for kind in kinds]
    else:
        values = (result.requests_per_second, result.p50_ms, result.p99_ms, cpu_seconds * 1e6 / result.requests)
        samples = [Sample(f"{prefix}_{kind}", value) for kind, value in zip(kinds, values)]
    return Window(samples, others["others_percent"] + others["stolen_percent"])
