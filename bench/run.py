"""The benchmark in one command: `python bench/run.py [--smoke] [--pin] [--reps 3] [--out bench/results]`.

Starts two fake ComfyUI upstreams and the targets (direct, nginx, the plain aiohttp proxy, the gateway) as
separate processes on 127.0.0.1, refuses any target that answers a wrong body, measures in interleaved
repetitions and writes medians and ratios (Markdown and JSON) into --out, printing the Markdown.
Exit status: 0 when every started target answered right and no measure errored, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

import measures
import report
import targets
import workload
from entry import run_main, write_report
from lineup import Lineup, StartError, note_exits, verify_all
from load import write_wrk_script
from nginx_conf import find_nginx
from processes import cpu_by_process, process_tree, stolen_cpu_seconds

BENCH_DIR = Path(__file__).resolve().parent
LOAD_CPU, SERVER_CPU = 0, 1
NEEDS_WRK = {"http_history", "http_queue", "http_prompt", "prompt_latency", "view_small"}
NEEDS_CURL = {"view_large", "slow_client_rss"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds, one repetition, for CI")
    parser.add_argument("--pin", action="store_true", help="load on CPU 0, servers on CPU 1 (taskset)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3, smoke 1)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="where the report goes")
    parser.add_argument("--targets", default=",".join(targets.TARGET_NAMES),
                        help="comma-separated subset of: " + ", ".join(targets.TARGET_NAMES))
    parser.add_argument("--seconds", type=int, default=None, help="wrk duration per run (default 5, smoke 1)")
    parser.add_argument("--keep-scratch", action="store_true", help="keep the temp dir (configs, server logs)")
    args = parser.parse_args(argv)
    unknown = set(args.targets.split(",")) - set(targets.TARGET_NAMES)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.reps is not None and args.reps < 1 or args.seconds is not None and args.seconds < 1:
        parser.error("--reps and --seconds must be at least 1")
    return args


def make_plan(args: argparse.Namespace, scratch: Path, load_cpu: int | None) -> measures.Plan:
    common = {"wrk_script": scratch / "bench.lua", "prompt_file": scratch / "prompt.json", "load_cpu": load_cpu}
    if args.smoke:
        return measures.Plan(wrk_seconds=args.seconds or 1, latency_seconds=1, large_bytes=4 * workload.MIB,
                             large_downloads=1, ws_connections=2, ws_burst=500, held_sockets=50,
                             held_idle_seconds=1.0, **common)
    return measures.Plan(wrk_seconds=args.seconds or 5, latency_seconds=3, large_bytes=50 * workload.MIB,
                         large_downloads=3, ws_connections=4, ws_burst=50_000, **common)


def machine_info() -> dict[str, Any]:
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor() or "unknown")
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model, "memory_gib": mem_kib / 1024 / 1024,
            "kernel": platform.release(), "python": platform.python_version(), "aiohttp": aiohttp.__version__,
            "nginx": _version([find_nginx() or "nginx", "-v"]), "wrk": _version(["wrk", "-v"]),
            "commit": _version(["git", "-C", str(BENCH_DIR), "describe", "--always", "--dirty"]),
            "gateway_build": gateway_build()}


def gateway_build() -> str:
    """Which build of the gateway the targets run (`python -m gateway`, started outside the checkout): pure
    Python, or its request path compiled (setup.py). A compiled wheel is what the Docker image ships."""
    code = "from gateway.core.build import build_name, compiled_modules; print(build_name(compiled_modules()))"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              cwd=tempfile.gettempdir())
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    lines = (done.stdout + done.stderr).strip().splitlines()
    if not lines:
        return "unknown"
    # "nginx version: nginx/1.22.1", "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
    return lines[0].removeprefix("nginx version: ").removeprefix("wrk ").split(" [")[0]


async def run(args: argparse.Namespace) -> int:
    pin = args.pin and (os.cpu_count() or 1) >= 2
    if args.pin and not pin:
        print("bench: --pin needs 2 CPUs; running unpinned", file=sys.stderr)
    if pin:
        os.sched_setaffinity(0, {LOAD_CPU})
    wanted = [name for name in targets.TARGET_NAMES if name in args.targets.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="comfy-bench-"))
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")
    plan = make_plan(args, scratch, LOAD_CPU if pin else None)
    lineup = Lineup(scratch, SERVER_CPU if pin else None)
    plan = dataclasses.replace(plan, fresh_target=lineup.fresh)
    try:
        before = CpuLedger.now()
        files = workload.write_view_files(scratch / "data", plan.large_bytes)
        plan.prompt_file.write_bytes(workload.prompt_request_body())
        write_wrk_script(scratch)
        await lineup.start_upstreams(scratch / "data")
        live, statuses = await lineup.start_targets(wanted)
        await verify_all(live, statuses, files=files, prompt_body=plan.prompt_file.read_bytes())
        runnable, skipped = choose_measurements()
        samples = await measure_all(list(live.values()), runnable, plan, args, smoke=args.smoke)
        contention = before.contention_since()
        for name in note_exits(live, statuses):
            samples.pop(name, None)
        summary = report.summarise(samples)
        result = {
            "started": started_at,
            "machine": machine_info(),
            "settings": {"smoke": args.smoke, "pinned": pin, "reps": args.reps or (1 if args.smoke else 3),
                         "wrk_seconds": plan.wrk_seconds, "http_connections": plan.http_connections,
                         "view_connections": plan.view_connections, "large_mib": plan.large_bytes // workload.MIB,
                         "ws_connections": plan.ws_connections, "ws_burst": plan.ws_burst,
                         "slow_client_bytes_per_second": plan.slow_client_bytes_per_second,
                         "held_sockets": plan.held_sockets, "held_idle_seconds": plan.held_idle_seconds,
                         "skipped_measurements": skipped},
            "contention": contention,
            "target_order": list(targets.TARGET_NAMES),
            "targets": {name: dataclasses.asdict(status) for name, status in statuses.items()},
            "summary": summary,
            "goals": report.judge_goals(summary) if "gateway" in live and "gateway" in samples else [],
        }
        markdown = report.render_markdown(result)
        write_report(args.out, "bench", result, markdown)
        print(markdown)
        clean = all(s.status in ("ok", "not available") for s in statuses.values()) and not any(
            entry["problems"] for per_target in summary.values() for entry in per_target.values())
        return 0 if clean else 1
    except StartError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    finally:
        lineup.stop()
        if args.keep_scratch:
            print(f"bench: scratch kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class CpuLedger:
    """CPU used by processes outside the benchmark's own tree (another test run, a build) and stolen by the
    hypervisor: either makes this run's numbers lower than the machine can do."""

    wall: float
    by_process: dict[int, float]
    stolen: float

    @classmethod
    def now(cls) -> CpuLedger:
        return cls(time.monotonic(), cpu_by_process(), stolen_cpu_seconds())

    def contention_since(self) -> dict[str, float]:
        """Percent of one CPU, averaged over the run."""
        later = CpuLedger.now()
        ours = set(process_tree(os.getpid()))
        others = sum(max(0.0, seconds - self.by_process.get(pid, 0.0))
                     for pid, seconds in later.by_process.items() if pid not in ours)
        wall = max(later.wall - self.wall, 1e-9)
        return {"seconds": round(wall, 1), "others_percent": round(others / wall * 100, 1),
                "stolen_percent": round((later.stolen - self.stolen) / wall * 100, 1)}


def choose_measurements() -> tuple[list[measures.Measurement], dict[str, str]]:
    """The measurements whose tools are installed, and why the others were skipped."""
    runnable, skipped = [], {}
    for measurement in measures.MEASUREMENTS:
        name = measurement.__name__
        if name in NEEDS_WRK and shutil.which("wrk") is None:
            skipped[name] = "wrk is not installed (run bench/setup.sh)"
        elif name in NEEDS_CURL and shutil.which("curl") is None:
            skipped[name] = "curl is not installed (run bench/setup.sh)"
        else:
            runnable.append(measurement)
    return runnable, skipped


async def measure_all(live: list[targets.Target], runnable: list[measures.Measurement], plan: measures.Plan,
                      args: argparse.Namespace, *, smoke: bool) -> dict[str, dict[str, list[measures.Sample]]]:
    """Interleaved: every repetition runs each measurement on every target before the next measurement, and
    the target order rotates between repetitions so none always goes first. Smoke runs targets at once."""
    samples: dict[str, dict[str, list[measures.Sample]]] = {t.name: {} for t in live}
    if not smoke and shutil.which("wrk"):
        warm_up = dataclasses.replace(plan, wrk_seconds=1)
        for target in live:  # warm pools, caches and lazy imports; results discarded
            await measures.http_endpoint("history")(target, warm_up)
    reps = args.reps or (1 if smoke else 3)
    for rep in range(reps):
        order = live[rep % len(live):] + live[:rep % len(live)] if live else []
        for measurement in runnable:
            measured = [t for t in order if measures.applies(measurement, t.name)]
            if smoke:
                results = await asyncio.gather(*(measurement(t, plan) for t in measured))
            else:
                results = [await measurement(t, plan) for t in measured]
            for target, found in zip(measured, results, strict=True):
                for sample in found:
                    samples[target.name].setdefault(sample.key, []).append(sample)
        print(f"bench: repetition {rep + 1}/{reps} done", file=sys.stderr)
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: run(args), "bench")


if __name__ == "__main__":
    sys.exit(main())
