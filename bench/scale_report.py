"""The scale benchmark's report: medians and run-to-run spread of every sample, the verdicts issue 6 asks
for (cost flat from 1 to 100,000 affinity entries and from 2 to 20 backends, within the spread measured; a
merged GET /history within 2× one backend's own answer time), as JSON and as Markdown.

A measure with a problem in any repetition has no median: it is refused and its problems are listed.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from measures import Sample
from report import CONTENTION_LIMIT_PERCENT, CONTENTION_WARNING, _number, machine_line
from scale_merge import GATEWAY_KINDS

MERGE_BOUND = 2.0  # merged answer time ÷ one backend's own, at most
FLAT_MEASURES = (("cpu_us", "gateway CPU per request", "µs"),
                 ("cpu_per_upstream", "gateway CPU ÷ the upstreams' for the same requests (the machine's drift "
                                      "cancelled)", "×"),
                 ("rps", "req/s", "req/s"))


def summarise(samples: Mapping[str, Sequence[Sample]]) -> dict[str, dict[str, Any]]:
    """key -> {reps, median, spread, problems}; spread = (max - min) / median over the repetitions."""
    summary = {}
    for key, reps in samples.items():
        problems = sorted({s.problem for s in reps if s.problem})
        values = [s.value for s in reps if s.value is not None]
        median = statistics.median(values) if values and not problems else None
        spread = (max(values) - min(values)) / median if median and len(values) > 1 else None
        summary[key] = {"reps": [s.value for s in reps], "median": median, "spread": spread, "problems": problems}
    return summary


def flat_verdict(name: str, before: Mapping[str, Any], after: Mapping[str, Any], measure: str) -> dict[str, Any]:
    """Does `measure` stay within the noise from case `before` to case `after`? Noise: the larger of the two
    cases' run-to-run spreads. None (undecided) with one repetition or a refused measure."""
    first, second = (case.get("summary", {}).get(f"history_{measure}", {}) for case in (before, after))
    low, high = first.get("median"), second.get("median")
    spreads = [s for s in (first.get("spread"), second.get("spread")) if s is not None]
    change = (high - low) / low if low and high is not None else None
    noise = max(spreads) if len(spreads) == 2 else None
    holds = None if change is None or noise is None else abs(change) <= noise
    return {"name": name, "measure": measure, "from": low, "to": high, "change": change, "noise": noise,
            "holds": holds}


def merge_verdict(name: str, merge: Mapping[str, Any], query: str, who: str = "gateway") -> dict[str, Any]:
    """Merged answer time ÷ one backend's own answer time, at most MERGE_BOUND. The backend answers as ComfyUI
    does, serialising its history on each request (server.py: web.json_response(get_history(...))); the
    ratio to the same backend answering from bytes kept ready is given alongside."""
    direct, dumped, merged = (merge.get(f"{kind}_{query}_p50_ms", {}) for kind in ("direct", "direct_dumped", who))
    ratio = _divide(merged, dumped)
    return {"name": name, "measure": f"{query}_p50_ms", "direct": direct.get("median"),
            "dumped": dumped.get("median"), "merged": merged.get("median"), "ratio": ratio,
            "ratio_to_direct": _divide(merged, direct), "bound": MERGE_BOUND,
            "holds": None if ratio is None else ratio <= MERGE_BOUND}


def render_markdown(result: Mapping[str, Any]) -> str:
    settings = result["settings"]
    lines = [f"## comfy-gateway scale benchmark, {result['started']}", "", machine_line(result, nginx=False), ""]
    contention = result["contention"]
    busy = contention["others_percent"] + contention["stolen_percent"]
    lines += [f"CPU taken from this run by other processes: {contention['others_percent']:.0f} % of one CPU; "
              f"stolen by the hypervisor: {contention['stolen_percent']:.0f} %; windows measured again because "
              f"others used over {CONTENTION_LIMIT_PERCENT:.0f} %: {result['retried_windows']}."
              + (CONTENTION_WARNING if busy > CONTENTION_LIMIT_PERCENT else ""), ""]
    lines += ["GET /history/{id} without a backend header: the gateway looks each id up in its SQLite store and "
              "routes by affinity. The ids are stored ones sampled over the whole store "
              f"({settings['distinct_ids']:,} per case where the store has them); wrk {settings['wrk_seconds']} s × "
              f"{settings['connections']} connections. The store series asks only for prompts held by the first "
              "backend, so that only the store changes; the backend series compares 2 and 20 backends with the "
              "load on the first backend's prompts (what configuring them costs) and on every backend's (what "
              "using them costs). Spread = (max − min) ÷ median over the repetitions.", ""]
    lines += ["| affinity entries | backends | load asks for prompts on | distinct ids | req/s | p50 ms | p99 ms | "
              "gateway CPU µs/request | spread req/s | spread CPU | upstreams' CPU µs/request | "
              "gateway ÷ upstreams' CPU | spread of that |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case in result["cases"].values():
        summary = case.get("summary", {})
        cells = [_cell(summary.get(f"history_{kind}")) for kind in ("rps", "p50_ms", "p99_ms", "cpu_us")]
        spreads = [_percent(summary.get(f"history_{kind}", {}).get("spread")) for kind in ("rps", "cpu_us")]
        if case["status"] != "ok":
            cells = [case["status"]] * 4
        asked = f"all {case['backends']}" if case["spread"] else "the first"
        upstream = [_cell(summary.get("history_upstream_cpu_us")), _cell(summary.get("history_cpu_per_upstream")),
                    _percent(summary.get("history_cpu_per_upstream", {}).get("spread"))]
        if case["status"] != "ok":
            upstream = [case["status"]] * 3
        lines.append(f"| {case['store_size']:,} | {case['backends']} | {asked} | {case['distinct_ids']:,} | "
                     + " | ".join(cells + spreads + upstream) + " |")
    merge = result["merge"]
    summary = merge.get("summary", {})
    lines += ["", f"GET /history with no backend chosen, merged by the gateway from 2 backends holding "
              f"{settings['merge_entries']:,} entries each (~{settings['merge_entry_bytes']:,} bytes per entry), "
              f"against one of them answering its own {settings['merge_entries']:,} directly: dumped from its "
              "objects on each request, as ComfyUI 0.3.64 does (the reference), and from bytes kept ready. "
              "The gateway runs three times: as configured by default on unchanged backends, where a poll that "
              "gets the same replies again is answered from its merge cache (what repeated polls cost); as "
              "configured by default with the second backend's reply changed at every request, so that it is "
              "parsed whole each time while the first one's is kept (what an answer after a backend's history "
              "changed costs); and with merge_cache_bytes = history_parts_bytes = 0 (what a first answer costs, "
              "when nothing is kept yet). Answers one after another over one "
              "connection, timed by curl to the last byte "
              f"({settings['merge_answers']['whole']} whole, {settings['merge_answers']['page64']} paged per run).",
              ""]
    lines += ["| request | gateway | backend as ComfyUI p50 ms | backend, bytes ready p50 ms | merged p50 ms | "
              "merged ÷ as ComfyUI | merged ÷ bytes ready | merged slowest ms | gateway CPU ms/answer |",
              "|---|---|---|---|---|---|---|---|---|"]
    for query, label in (("whole", "GET /history"), ("page64", "GET /history?max_items=64")):
        for who, kind in GATEWAY_KINDS.items():
            direct, dumped, merged = (summary.get(f"{name}_{query}_p50_ms", {})
                                      for name in ("direct", "direct_dumped", who))
            cpu = summary.get(f"{who}_{query}_cpu_us", {}).get("median")
            lines.append(f"| {label} | {kind} | {_cell(dumped)} | {_cell(direct)} | {_cell(merged)} | "
                         f"{_ratio(_divide(merged, dumped))} | {_ratio(_divide(merged, direct))} | "
                         f"{_cell(summary.get(f'{who}_{query}_max_ms'))} | "
                         f"{_number(cpu / 1000) if cpu is not None else 'n/a'} |")
    lines += ["", "Verdicts:"]
    lines += [f"- {_verdict_line(verdict)}" for verdict in result["verdicts"]]
    refused = [f"- {name}: {case['status']}: {case['detail']}" for name, case in result["cases"].items()
               if case["status"] != "ok"]
    refused += [f"- {name} / {key}: {problem}" for name, group in _groups(result)
                for key, entry in group.items() for problem in entry["problems"]]
    if merge.get("status", "ok") != "ok":
        refused.append(f"- merge: {merge['status']}: {merge['detail']}")
    if refused:
        lines += ["", "Refused (a target answered wrong or errored, so no number is reported):", *refused]
    return "\n".join(lines) + "\n"


def _groups(result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    groups = [(name, case.get("summary", {})) for name, case in result["cases"].items()]
    return groups + [("merge", result["merge"].get("summary", {}))]


def _verdict_line(verdict: Mapping[str, Any]) -> str:
    mark = {True: "✓", False: "✗", None: "?"}[verdict["holds"]]
    if "ratio" in verdict:
        return (f"{mark} {verdict['name']}: merged p50 {_number(verdict['merged'])} ms ÷ a backend answering as "
                f"ComfyUI does {_number(verdict['dumped'])} ms = {_ratio(verdict['ratio'])} (must be ≤ "
                f"{verdict['bound']:.0f}); ÷ the backend answering from bytes kept ready "
                f"({_number(verdict['direct'])} ms): {_ratio(verdict['ratio_to_direct'])}")
    unit = next(u for key, _, u in FLAT_MEASURES if key == verdict["measure"])
    label = next(text for key, text, _ in FLAT_MEASURES if key == verdict["measure"])
    change = "n/a" if verdict["change"] is None else f"{verdict['change'] * 100:+.1f} %"
    noise = "not measured (one repetition)" if verdict["noise"] is None else f"±{verdict['noise'] * 100:.1f} %"
    state = {True: "flat within noise", False: "NOT flat", None: "undecided"}[verdict["holds"]]
    return (f"{mark} {verdict['name']}, {label}: {_number(verdict['from'])} → {_number(verdict['to'])} {unit} "
            f"({change}; run-to-run spread {noise}): {state}")


def _cell(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "n/a"
    if entry["problems"]:
        return "✗ refused"
    return _number(entry["median"])


def _divide(top: Mapping[str, Any], bottom: Mapping[str, Any]) -> float | None:
    if top.get("median") is None or not bottom.get("median"):
        return None
    return float(top["median"]) / float(bottom["median"])


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f} %"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
