"""Turns per-repetition samples into the benchmark's report: medians, ratios to direct and to nginx, and the
gateway's standing against issue 21's must/goal table, as Markdown and as JSON.

A measure with any problem in any repetition has no median: it is refused and its problems are listed.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from measures import Sample

REFERENCES = ("direct", "nginx")
CONTENTION_LIMIT_PERCENT = 10.0
CONTENTION_WARNING = " **Other work competed with this run: its numbers are low; run again on a quiet machine.**"


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    ratios: bool = True


MEASURES = (
    Measure("history_rps", "GET /history/{id}", "req/s", True),
    Measure("history_p50_ms", "GET /history/{id} p50", "ms", False),
    Measure("history_p99_ms", "GET /history/{id} p99", "ms", False),
    Measure("queue_rps", "GET /queue", "req/s", True),
    Measure("queue_p50_ms", "GET /queue p50", "ms", False),
    Measure("queue_p99_ms", "GET /queue p99", "ms", False),
    Measure("prompt_rps", "POST /prompt 20 KB", "req/s", True),
    Measure("prompt_p50_ms", "POST /prompt p50", "ms", False),
    Measure("prompt_p99_ms", "POST /prompt p99", "ms", False),
    Measure("view_small_mibps", "/view 1 MiB × 8 connections", "MiB/s", True),
    Measure("view_large_mibps", "/view {large_mib} MiB single", "MiB/s", True),
    Measure("ws_msgps", "WS messages", "msg/s", True),
    Measure("history_cpu_us", "CPU per /history request", "µs", False),
    Measure("queue_cpu_us", "CPU per /queue request", "µs", False),
    Measure("prompt_cpu_us", "CPU per POST /prompt request", "µs", False),
    Measure("ws_cpu_us", "CPU per WS message", "µs", False),
    # The backend shares the servers' core: what a request costs it behind each target is part of every rate.
    Measure("history_upstream_cpu_us", "backend's CPU per /history request", "µs", False),
    Measure("queue_upstream_cpu_us", "backend's CPU per /queue request", "µs", False),
    Measure("prompt_upstream_cpu_us", "backend's CPU per POST /prompt request", "µs", False),
    Measure("slow_client_rss_mib", "RSS growth, {large_mib} MiB to a 25 MB/s client", "MiB", False, ratios=False),
    Measure("prompt_serial_p50_ms", "POST /prompt p50, one connection", "ms", False),
    Measure("prompt_added_p50_ms", "added p50 on POST /prompt vs direct", "ms", False, ratios=False),
    Measure("held_ws_rss_kib", "RSS per held WebSocket ({held_sockets} held)", "KiB", False),
    Measure("held_ws_idle_cpu_ms", "CPU while {held_sockets} WebSockets idle", "ms/s", False),
)


@dataclass(frozen=True)
class Goal:
    """Issue 21's target for one measure of `target`: `must` and `goal` as (reference, bound) where reference
    is another target (bound = factor: "nginx", or "gateway" for a variant of it) or "absolute" (bound =
    value)."""

    key: str
    must: tuple[str, float]
    goal: tuple[str, float]
    target: str = "gateway"
    label: str | None = None  # when not the measure's own


GOALS = (
    Goal("history_rps", ("nginx", 0.60), ("nginx", 0.80)),
    Goal("queue_rps", ("nginx", 0.60), ("nginx", 0.85)),
    Goal("prompt_rps", ("nginx", 0.85), ("nginx", 0.95)),
    Goal("view_small_mibps", ("nginx", 1.00), ("nginx", 1.20)),
    Goal("view_large_mibps", ("nginx", 1.00), ("nginx", 1.20)),
    Goal("ws_msgps", ("nginx", 1.00), ("nginx", 1.20)),
    Goal("history_cpu_us", ("absolute", 70.0), ("absolute", 40.0)),
    Goal("history_rps", ("gateway", 0.80), ("gateway", 0.95), target="gateway-redis",
         label="Redis store: GET /history/{id}"),
    Goal("held_ws_rss_kib", ("nginx", 4.0), ("nginx", 2.0)),
    Goal("slow_client_rss_mib", ("absolute", 5.0), ("absolute", 3.0)),
    Goal("prompt_added_p50_ms", ("absolute", 1.0), ("absolute", 0.5)),
)


def summarise(samples: Mapping[str, Mapping[str, Sequence[Sample]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """samples: target → key → one Sample per repetition. Returns key → target → {reps, median, problems}."""
    added_latency = {target: _added_latency(samples, target) for target in samples}
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for measure in MEASURES:
        per_target: dict[str, dict[str, Any]] = {}
        for target, by_key in samples.items():
            reps = added_latency[target] if measure.key == "prompt_added_p50_ms" else by_key.get(measure.key)
            if not reps:
                continue
            problems = sorted({s.problem for s in reps if s.problem})
            values = [s.value for s in reps if s.value is not None]
            median = statistics.median(values) if values and not problems else None
            per_target[target] = {"reps": [s.value for s in reps], "median": median, "problems": problems}
        for entry in per_target.values():
            for reference in REFERENCES:
                base = per_target.get(reference, {}).get("median")
                ratio = entry["median"] / base if measure.ratios and base and entry["median"] is not None else None
                entry[f"vs_{reference}"] = ratio
        summary[measure.key] = per_target
    return summary


def _added_latency(samples: Mapping[str, Mapping[str, Sequence[Sample]]], target: str) -> list[Sample]:
    """Per repetition: this target's serial POST /prompt p50 minus direct's in the same repetition."""
    own = samples[target].get("prompt_serial_p50_ms", [])
    direct = samples.get("direct", {}).get("prompt_serial_p50_ms", [])
    added = []
    for mine, base in zip(own, direct, strict=False):  # a missing repetition pairs nothing
        if mine.value is None or base.value is None:
            added.append(Sample("prompt_added_p50_ms", None, mine.problem or f"direct: {base.problem}"))
        else:
            added.append(Sample("prompt_added_p50_ms", mine.value - base.value))
    return added


def judge_goals(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Each must and goal of issue 21. One relative to another target is judged on the median of the ratios of
    the repetitions, each measured back to back: a machine that runs slower for a while (the hypervisor, a
    neighbour) slows both sides of a repetition's ratio, where it may slow one target's median and not the
    other's. The ratio of the two medians is kept beside it, and judges only when the repetitions cannot."""
    verdicts = []
    for goal in GOALS:
        entries = summary.get(goal.key, {})
        target = goal.target
        if target not in entries:
            continue
        value = entries[target].get("median")
        higher = next(m.higher_is_better for m in MEASURES if m.key == goal.key)
        verdict: dict[str, Any] = {"key": goal.key, "target": target, "label": goal.label, "value": value}
        for name, (reference, bound) in (("must", goal.must), ("goal", goal.goal)):
            judged: dict[str, Any] = {"reference": reference, "bound": bound}
            if reference == "absolute":
                limit, measured = bound, value
            else:
                base = entries.get(reference, {}).get("median")
                limit = base * bound if base is not None else None
                ratios = _paired_ratios(entries.get(target), entries.get(reference))
                judged["per_repetition"] = ratios
                judged["ratio_of_medians"] = value / base if value is not None and base else None
                if ratios:
                    limit, measured = bound, statistics.median(ratios)
                    judged["ratio"] = measured
                else:
                    measured = value
            holds = None
            if measured is not None and limit is not None:
                holds = measured >= limit if higher else measured <= limit
            verdict[name] = {**judged, "limit": limit, "holds": holds}
        verdicts.append(verdict)
    return verdicts


def _paired_ratios(entry: Mapping[str, Any] | None, reference: Mapping[str, Any] | None) -> list[float] | None:
    """entry's value over reference's, repetition by repetition; None when a side was refused or is missing."""
    if not entry or not reference or entry["problems"] or reference["problems"]:
        return None
    pairs = list(zip(entry["reps"], reference["reps"], strict=False))  # lengths checked below
    if len(entry["reps"]) != len(reference["reps"]) or any(a is None or not b for a, b in pairs):
        return None
    return [a / b for a, b in pairs]


def render_markdown(report: Mapping[str, Any]) -> str:
    summary, targets = report["summary"], report["targets"]
    names = [name for name in report["target_order"] if name in targets]
    shown = [name for name in names if targets[name]["status"] == "ok"]
    fill = {"{large_mib}": str(report["settings"]["large_mib"]),
            "{held_sockets}": f"{report['settings'].get('held_sockets', 0):,}"}
    lines = [f"## comfy-gateway benchmark, {report['started']}", "", machine_line(report), ""]
    contention = report.get("contention")
    if contention:
        busy = contention["others_percent"] + contention["stolen_percent"]
        lines[-1:] = ["", f"CPU taken from this run by other processes: {contention['others_percent']:.0f} % of one "
                      f"CPU; stolen by the hypervisor: {contention['stolen_percent']:.0f} %."
                      + (CONTENTION_WARNING if busy > CONTENTION_LIMIT_PERCENT else ""), ""]
    lines += ["| measure | unit | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for measure in MEASURES:
        arrow = "↑" if measure.higher_is_better else "↓"
        cells = [_cell(summary.get(measure.key, {}).get(name)) if name in shown else "n/a" for name in names]
        lines.append(f"| {_label(measure.label, fill)} {arrow} | {measure.unit} | " + " | ".join(cells) + " |")
    ratio_columns = _ratio_columns(shown)
    if ratio_columns:
        lines += ["", "Ratios of medians in this run (↑ measures: higher is better; ↓: lower is better):", ""]
        lines += ["| measure | " + " | ".join(f"{n} ÷ {r}" for n, r in ratio_columns) + " |",
                  "|---|" + "---|" * len(ratio_columns)]
        for measure in (m for m in MEASURES if m.ratios):
            entries = summary.get(measure.key, {})
            cells = [_ratio(entries.get(name, {}).get(f"vs_{ref}")) for name, ref in ratio_columns]
            arrow = "↑" if measure.higher_is_better else "↓"
            lines.append(f"| {_label(measure.label, fill)} {arrow} | " + " | ".join(cells) + " |")
    if report.get("goals"):
        lines += ["", "The gateway, every check on, against issue 21 (must and goal: × another target or a bound; a "
                  "ratio to another target is the median of the repetitions' ratios, each measured back to back):",
                  ""]
        lines += ["| measure | gateway | must | goal |", "|---|---|---|---|"]
        for verdict in report["goals"]:
            label = _label(verdict.get("label") or next(m.label for m in MEASURES if m.key == verdict["key"]), fill)
            lines.append(f"| {label} | {_number(verdict['value'])} | {_verdict(verdict['must'])} | "
                         f"{_verdict(verdict['goal'])} |")
    lines += ["", "Targets:"]
    for name in names:
        status = targets[name]
        lines.append(f"- **{name}**: {status['status']}" + (f": {status['detail']}" if status["detail"] else ""))
    problems = [(m.key, name, p) for m in MEASURES for name, e in summary.get(m.key, {}).items()
                for p in e["problems"]]
    if problems:
        lines += ["", "Refused measures (a repetition errored or answered wrong, so no number is reported):"]
        lines += [f"- {name} / {key}: {problem}" for key, name, problem in problems]
    return "\n".join(lines) + "\n"


def _ratio_columns(shown: Sequence[str]) -> list[tuple[str, str]]:
    """(target, reference) pairs: everything over direct, then the two proxies over nginx."""
    columns = [(name, "direct") for name in shown if name != "direct"]
    columns += [(name, "nginx") for name in shown if name not in REFERENCES]
    return [(name, reference) for name, reference in columns if reference in shown]


def machine_line(report: Mapping[str, Any], *, nginx: bool = True) -> str:
    """The report's "Machine:" line (this benchmark's and scale.py's): hardware, versions, commit, settings;
    nginx's version only where nginx ran."""
    m, s = report["machine"], report["settings"]
    pin = "load on CPU 0, servers on CPU 1" if s["pinned"] else "not pinned"
    tools = (f"aiohttp {m['aiohttp']}, {m['nginx']}, wrk {m['wrk']}" if nginx
             else f"aiohttp {m['aiohttp']}, wrk {m['wrk']}")
    connections = s.get("http_connections", s.get("connections"))
    return (f"Machine: {m['nproc']} × {m['cpu_model']}, {m['memory_gib']:.0f} GiB, Linux {m['kernel']}; "
            f"Python {m['python']}, {tools}; commit {m['commit']}, gateway build: {m.get('gateway_build', 'unknown')}. "
            f"{s['reps']} repetition(s), medians; {pin}; wrk {s['wrk_seconds']} s × {connections} "
            f"connections{'; SMOKE MODE: numbers are meaningless' if s['smoke'] else ''}.")


def _label(template: str, fill: Mapping[str, str]) -> str:
    for placeholder, value in fill.items():
        template = template.replace(placeholder, value)
    return template


def _cell(entry: Mapping[str, Any] | None) -> str:
    if entry is None:
        return "n/a"
    if entry["problems"]:
        return "✗ refused"
    return _number(entry["median"])


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _verdict(judged: Mapping[str, Any]) -> str:
    mark = {True: "✓", False: "✗", None: "?"}[judged["holds"]]
    if judged["reference"] == "absolute":
        return f"{mark} bound {_number(judged['bound'])}"
    ratios = judged.get("per_repetition")
    if not ratios:
        return f"{mark} {judged['bound']:.2f} × {judged['reference']} = {_number(judged['limit'])}"
    return (f"{mark} {judged['bound']:.2f} × {judged['reference']}: {_ratio(judged['ratio'])} (repetitions "
            f"{_ratio(min(ratios))}–{_ratio(max(ratios))}; ratio of medians {_ratio(judged['ratio_of_medians'])})")
