"""The scale benchmark in one command: `python bench/scale.py [--smoke] [--pin] [--reps 3] [--out bench/results]`.

Measures whether the gateway's cost grows with its work: GET /history/{id} routed by affinity with 1, 1,000
and 100,000 entries in its SQLite store and with 2 and 20 backends, and a merged GET /history over two
backends of 10,000 entries each against one backend's own answer. Every server is its own process on
127.0.0.1; a target that answers wrong is refused. Medians go to --out (Markdown and JSON) and are printed.
Exit status: 0 when every target answered right and no measure errored, 1 otherwise, 2 when nothing started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import scale_report
import scale_workload
import workload
from entry import run_main, write_report
from lineup import StartError
from measures import Sample
from processes import ServerProcess
from report import CONTENTION_LIMIT_PERCENT
from run import CpuLedger, machine_info
from scale_cast import Case, Cast, GatewayUnderTest
from scale_checks import check_affinity_routing
from scale_measures import LoadSettings, Window, history_answers, history_by_id, write_ids_script
from scale_merge import GATEWAY_KINDS, MERGE_CACHES_OFF, QUERIES, Answer, check_answers, merge_answers

BENCH_DIR = Path(__file__).resolve().parent
LOAD_CPU, SERVER_CPU = 0, 1
ATTEMPTS = 3  # a window disturbed by other processes is measured again, at most this often in all
RETRY_PAUSE_SECONDS = 3.0


@dataclass(frozen=True)
class Plan:
    store_sizes: tuple[int, int, int]  # small, middle (also the backend cases'), large
    backend_counts: tuple[int, int]
    merge_entries: int
    answers: dict[str, int]  # how many merge answers each run times, per query
    reps: int
    load: LoadSettings
    smoke: bool

    def store_cases(self) -> list[Case]:
        """Small, middle, large store; the load on one backend's prompts, so only the store changes."""
        return [Case(size, self.backend_counts[0], spread=False) for size in self.store_sizes]

    def backend_pairs(self) -> list[tuple[Case, Case]]:
        """Few against many backends at the large store size (so that even the many backends' first one holds
        enough prompts for the sample): configured, with the load on the first one's prompts (what the
        configuration costs); and in use, with the load on every backend's prompts."""
        few, many = self.backend_counts
        return [(Case(self.store_sizes[-1], few, spread), Case(self.store_sizes[-1], many, spread))
                for spread in (False, True)]

    def cases(self) -> list[Case]:
        paired = [case for pair in self.backend_pairs() for case in pair]
        return list(dict.fromkeys(self.store_cases() + paired))


@dataclass
class Tally:
    """Samples as they come in: per case key (or "merge"), per sample key, one per repetition."""

    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)
    retried_windows: int = 0

    def add(self, group: str, window: Window) -> None:
        for sample in window.samples:
            self.samples.setdefault(group, {}).setdefault(sample.key, []).append(sample)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].split(": ", 1)[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds, small stores, for CI")
    parser.add_argument("--pin", action="store_true", help="load on CPU 0, servers on CPU 1 (taskset)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3, smoke 1)")
    parser.add_argument("--seconds", type=int, default=None, help="wrk duration per run (default 5, smoke 1)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="where the report goes")
    parser.add_argument("--keep-scratch", action="store_true", help="keep the temp dir (configs, stores, logs)")
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1 or args.seconds is not None and args.seconds < 1:
        parser.error("--reps and --seconds must be at least 1")
    return args


def make_plan(args: argparse.Namespace, scratch: Path, load_cpu: int | None) -> Plan:
    load = LoadSettings(seconds=args.seconds or (1 if args.smoke else 5), connections=32, load_cpu=load_cpu,
                        scratch=scratch)
    if args.smoke:
        return Plan((1, 100, 1_000), (2, 20), merge_entries=200, answers={"whole": 2, "page64": 10},
                    reps=args.reps or 1, load=load, smoke=True)
    return Plan((1, 1_000, 100_000), (2, 20), merge_entries=10_000, answers={"whole": 10, "page64": 200},
                reps=args.reps or 3, load=load, smoke=False)


async def run(args: argparse.Namespace) -> int:
    pin = args.pin and (os.cpu_count() or 1) >= 2
    if args.pin and not pin:
        print("scale: --pin needs 2 CPUs; running unpinned", file=sys.stderr)
    if pin:
        os.sched_setaffinity(0, {LOAD_CPU})
    scratch = Path(tempfile.mkdtemp(prefix="comfy-scale-"))
    started_at = time.strftime("%Y-%m-%d %H:%M:%S")
    plan = make_plan(args, scratch, LOAD_CPU if pin else None)
    cast = Cast(scratch, SERVER_CPU if pin else None)
    try:
        before = CpuLedger.now()
        gateways, cases = await start_cast(cast, plan)
        merge_gateways = await start_merge_gateways(cast, gateways.get(plan.backend_pairs()[1][0].key), plan)
        answers, merge = await check_merge(cast, merge_gateways, plan)
        tally = Tally()
        await measure(tally, gateways, answers, cast.upstreams, plan)
        contention = before.contention_since()
        for key, gateway in gateways.items():
            if gateway.process.exited() is not None:
                cases[key].update(status="failed", detail="exited during the run: " + gateway.process.log_tail())
            else:
                cases[key]["summary"] = scale_report.summarise(tally.samples.get(key, {}))
        merge["summary"] = scale_report.summarise(tally.samples.get("merge", {}))
        result = assemble(started_at, plan, pin, contention, tally, cases, merge)
        markdown = scale_report.render_markdown(result)
        write_report(args.out, "scale", result, markdown)
        print(markdown)
        clean = all(case["status"] == "ok" for case in cases.values()) and merge["status"] == "ok" and not any(
            entry["problems"] for _, group in scale_report._groups(result) for entry in group.values())
        return 0 if clean else 1
    except StartError as error:
        print(f"scale: {error}", file=sys.stderr)
        return 2
    finally:
        cast.stop()
        if args.keep_scratch:
            print(f"scale: scratch kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


async def start_cast(cast: Cast, plan: Plan) -> tuple[dict[str, GatewayUnderTest], dict[str, dict[str, Any]]]:
    """The upstreams, then one gateway per case (store filled first), each checked; refused ones are left out."""
    cases = plan.cases()
    asked = {case: scale_workload.request_indices(case.store_size, case.backends, case.spread) for case in cases}
    ids_file = cast.scratch / "prompt-ids.txt"
    every_id = sorted({scale_workload.affinity_prompt_id(i) for chosen in asked.values() for i in chosen})
    ids_file.write_text("\n".join(every_id) + "\n")
    await cast.start_upstreams(scale_workload.ALL_BACKENDS[:max(plan.backend_counts)], ids_file, plan.merge_entries,
                               changing=scale_workload.MERGE_BACKENDS[1:])
    started = await asyncio.gather(*(cast.start_gateway(case, asked[case]) for case in cases))
    gateways: dict[str, GatewayUnderTest] = {}
    statuses: dict[str, dict[str, Any]] = {}
    for case, gateway in zip(cases, started, strict=True):
        statuses[case.key] = {"store_size": case.store_size, "backends": case.backends, "spread": case.spread,
                              "distinct_ids": len(asked[case]), "status": "ok", "detail": ""}
        if isinstance(gateway, str):
            statuses[case.key].update(status="failed", detail=gateway)
            continue
        problems = await check_affinity_routing(gateway.base_url, gateway.holders)
        if problems:
            statuses[case.key].update(status="refused", detail="answered wrong: " + "; ".join(problems[:5]))
            continue
        gateways[case.key] = gateway
    return gateways, statuses


async def start_merge_gateways(cast: Cast, default: GatewayUnderTest | None,
                               plan: Plan) -> dict[str, GatewayUnderTest | str | None]:
    """Per GATEWAY_KINDS kind, the merging gateway (the default one is the two-backend case's), or why not."""
    case = Case(plan.store_sizes[0], plan.backend_counts[0], spread=False)
    changing = await cast.start_gateway(case, [], label="gateway-merge-changed", urls=cast.changing_urls)
    uncached = await cast.start_gateway(case, [], label="gateway-merge-nocache", overrides=MERGE_CACHES_OFF)
    return {"gateway": default, "gateway_changed": changing, "gateway_nocache": uncached}


async def check_merge(cast: Cast, started: dict[str, GatewayUnderTest | str | None],
                      plan: Plan) -> tuple[list[Answer], dict[str, Any]]:
    """The answers the merge part times, and its status: refused if any of them is wrong."""
    gateways = {}
    for kind, gateway in started.items():
        if gateway is None:
            return [], {"status": "failed", "detail": "the two-backend gateway it needs is not running"}
        if isinstance(gateway, str):
            return [], {"status": "failed", "detail": f"the merging gateway {kind} {gateway}"}
        gateways[kind] = (gateway.base_url, gateway.process)
    alone = scale_workload.MERGE_BACKENDS[0]
    answers = merge_answers(cast.backend_urls, cast.upstream_of(alone), gateways, plan.merge_entries)
    problems = await check_answers(answers, plan.merge_entries)
    if problems:
        return [], {"status": "refused", "detail": "answered wrong: " + "; ".join(problems)}
    return answers, {"status": "ok", "detail": ""}


async def measure(tally: Tally, gateways: dict[str, GatewayUnderTest], answers: list[Answer],
                  upstreams: list[ServerProcess], plan: Plan) -> None:
    """Interleaved: each repetition measures every case and then every merge answer, the order rotating."""
    load = plan.load
    runs: list[tuple[str, Callable[[], Awaitable[Window]]]] = []
    for key, gateway in gateways.items():
        script = write_ids_script(load.scratch, gateway.ids_file)
        shortest = min(len(workload.history_body(pid, b)) for pid, b in gateway.holders.items())
        runs.append((key, lambda g=gateway, s=script, n=shortest: history_by_id(g.base_url, g.process, upstreams, s,
                                                                                n, load)))
    merge_runs: list[tuple[str, Callable[[], Awaitable[Window]]]] = [
        ("merge", lambda a=answer: history_answers(a.url, a.process, a.least_bytes,
                                                   plan.answers[a.query], load, a.name))
        for answer in answers]
    if not plan.smoke:  # warm pools, caches and lazy imports; results discarded
        warm_up = LoadSettings(1, load.connections, load.load_cpu, load.scratch)
        for gateway in gateways.values():
            await history_by_id(gateway.base_url, gateway.process, upstreams,
                                write_ids_script(load.scratch, gateway.ids_file), 0, warm_up)
        for answer in answers:
            await history_answers(answer.url, answer.process, 0, 1, load, "warm_up")
    for rep in range(plan.reps):
        for group in (runs, merge_runs):
            shift = rep % len(group) if group else 0
            for key, make in group[shift:] + group[:shift]:
                tally.add(key, await measure_quietly(make, tally, plan))
        print(f"scale: repetition {rep + 1}/{plan.reps} done", file=sys.stderr)


async def measure_quietly(make: Callable[[], Awaitable[Window]], tally: Tally, plan: Plan) -> Window:
    """One window; measured again (up to ATTEMPTS in all) while processes outside the benchmark took over
    CONTENTION_LIMIT_PERCENT of a CPU during it. The last attempt counts whatever it saw."""
    for attempt in range(1 if plan.smoke else ATTEMPTS):
        if attempt:
            tally.retried_windows += 1
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
        window = await make()
        if window.others_percent <= CONTENTION_LIMIT_PERCENT:
            break
    return window


def assemble(started_at: str, plan: Plan, pin: bool, contention: dict[str, float], tally: Tally,
             cases: dict[str, dict[str, Any]], merge: dict[str, Any]) -> dict[str, Any]:
    small, middle, large = (cases[case.key] for case in plan.store_cases())
    verdicts = [scale_report.flat_verdict(f"{low['store_size']:,} → {high['store_size']:,} affinity entries", low,
                                          high, measure)
                for low, high in ((small, large), (middle, large)) for measure, _, _ in scale_report.FLAT_MEASURES]
    for few_case, many_case in plan.backend_pairs():
        few, many = cases[few_case.key], cases[many_case.key]
        load = "load on every backend" if few_case.spread else "load on the first backend"
        verdicts += [scale_report.flat_verdict(f"{few['backends']} → {many['backends']} backends, {load}", few, many,
                                               measure) for measure, _, _ in scale_report.FLAT_MEASURES]
    verdicts += [scale_report.merge_verdict(f"merged GET /history{'' if n is None else f'?max_items={n}'}, {kind}",
                                            merge.get("summary", {}), query, who)
                 for query, n in QUERIES.items() for who, kind in GATEWAY_KINDS.items()]
    entry_bytes = len(json.dumps(scale_workload.merge_entry(scale_workload.MERGE_BACKENDS[0], 0)))
    return {
        "started": started_at,
        "machine": machine_info(),
        "settings": {"smoke": plan.smoke, "pinned": pin, "reps": plan.reps,
                     "wrk_seconds": plan.load.seconds, "merge_answers": plan.answers,
                     "connections": plan.load.connections, "store_sizes": list(plan.store_sizes),
                     "backend_counts": list(plan.backend_counts), "merge_entries": plan.merge_entries,
                     "merge_entry_bytes": entry_bytes, "distinct_ids": scale_workload.REQUEST_SAMPLE},
        "contention": contention,
        "retried_windows": tally.retried_windows,
        "cases": cases,
        "merge": merge,
        "verdicts": verdicts,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: run(args), "scale")


if __name__ == "__main__":
    sys.exit(main())
