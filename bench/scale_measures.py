"""The scale benchmark's two measurements, each with the target's CPU read from /proc over its window:
GET /history/{id} over a list of stored prompt ids, under wrk (load.run_wrk) at 32 connections; and a fixed
number of GET /history answers (whole or paged) one after another over one connection, timed by curl, which
a time-boxed wrk run cannot do for answers that take most of a second. Each window also notes how much CPU
processes outside the benchmark took meanwhile, so a disturbed window can be measured again.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import load
import workload
from measures import Sample
from processes import ServerProcess, pinned
from run import CpuLedger

# Per answer: status, bytes, seconds from sending the request to its last byte.
CURL_FORMAT = "%{http_code} %{size_download} %{time_total}\n"

# wrk asks for each id of the list in turn, from requests formatted once; `done` prints the line run_wrk reads.
IDS_SCRIPT = """\
local paths = {}
for line in io.lines("IDS_FILE") do paths[#paths + 1] = "/history/" .. line end
local requests, position = {}, 0
CLIENT_HEADERS
function init(args)
  for i, path in ipairs(paths) do requests[i] = wrk.format("GET", path) end
end
function request()
  position = position % #requests + 1
  return requests[position]
end
""".replace("CLIENT_HEADERS", "\n".join(
    f'wrk.headers["{name}"] = "{value}"' for name, value in workload.client_headers().items()))


@dataclass(frozen=True)
class LoadSettings:
    seconds: int
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


async def history_by_id(base_url: str, process: ServerProcess, upstreams: Sequence[ServerProcess], script: Path,
                        min_body_bytes: int, settings: LoadSettings) -> Window:
    """req/s, p50, p99 and the gateway's CPU µs per GET /history/{id}, ids from `script`'s list; also the
    upstreams' CPU per request, which tells effects of the machine (caches, scheduling) from the gateway's."""
    ledger = CpuLedger.now()
    pids = process.tree()
    cpu_before = process.cpu_seconds(pids)
    upstream_before = sum(upstream.cpu_seconds([upstream.pid]) for upstream in upstreams)
    result = await load.run_wrk(base_url + "/history/", script=script, seconds=settings.seconds,
                                connections=settings.connections, backend=None, min_body_bytes=min_body_bytes,
                                cpu=settings.load_cpu)
    cpu_seconds = process.cpu_seconds(pids) - cpu_before
    upstream_seconds = sum(upstream.cpu_seconds([upstream.pid]) for upstream in upstreams) - upstream_before
    others = ledger.contention_since()
    # cpu_per_upstream: the gateway's CPU per request over the upstreams' for the same requests, whose work is the
    # same in every case: a window where the machine ran slower (a neighbour, the hypervisor, the clock) makes
    # both dearer, and their ratio cancels that.
    kinds = ("rps", "p50_ms", "p99_ms", "cpu_us", "upstream_cpu_us", "cpu_per_upstream")
    if result.problem:
        samples = [Sample(f"history_{kind}", None, result.problem) for kind in kinds]
    elif upstream_seconds <= 0:
        samples = [Sample(f"history_{kind}", None, "the upstreams' CPU did not advance") for kind in kinds]
    else:
        values = (result.requests_per_second, result.p50_ms, result.p99_ms, cpu_seconds * 1e6 / result.requests,
                  upstream_seconds * 1e6 / result.requests, cpu_seconds / upstream_seconds)
        samples = [Sample(f"history_{kind}", value) for kind, value in zip(kinds, values, strict=True)]
    return Window(samples, others["others_percent"] + others["stolen_percent"])


async def history_answers(url: str, process: ServerProcess, least_bytes: int, count: int, settings: LoadSettings,
                          prefix: str) -> Window:
    """`count` answers in a row over one kept-alive connection: their p50 and slowest time, and the target's
    CPU per answer. Any answer that is not a 200 of at least least_bytes refuses the measure."""
    command = ["curl", "-sS", "-H", "Accept-Encoding: identity", "-w", CURL_FORMAT]
    for name, value in workload.client_headers().items():
        command += ["-H", f"{name}: {value}"]
    for _ in range(count):
        command += ["-o", "/dev/null", url]
    ledger = CpuLedger.now()
    pids = process.tree()
    cpu_before = process.cpu_seconds(pids)
    code, out, err = await load._run(pinned(command, settings.load_cpu), timeout_seconds=60 + count * 30)
    cpu_seconds = process.cpu_seconds(pids) - cpu_before
    others = ledger.contention_since()
    answers = [line.split() for line in out.splitlines() if line.strip()]
    problem = None
    if code != 0 or len(answers) != count:
        problem = f"curl failed (exit {code}, {len(answers)} of {count} answers): {err.strip()[-300:]}"
    elif any(status != "200" or int(size) < least_bytes for status, size, _ in answers):
        wrong = next((status, size) for status, size, _ in answers if status != "200" or int(size) < least_bytes)
        problem = f"answered {wrong[0]} with {wrong[1]} bytes, expected 200 with at least {least_bytes}"
    kinds = ("p50_ms", "max_ms", "cpu_us")
    if problem:
        return Window([Sample(f"{prefix}_{kind}", None, problem) for kind in kinds], 0.0)
    times = [float(seconds) * 1000 for _, _, seconds in answers]
    values = (statistics.median(times), max(times), cpu_seconds * 1e6 / count)
    return Window([Sample(f"{prefix}_{kind}", value) for kind, value in zip(kinds, values, strict=True)],
                  others["others_percent"] + others["stolen_percent"])
