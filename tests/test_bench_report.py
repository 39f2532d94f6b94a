"""bench/report.py judges a must relative to another target on the repetitions' own ratios, and says so."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402
from measures import Sample  # noqa: E402


def samples(**per_target: list[float | None]) -> dict[str, dict[str, list[Sample]]]:
    return {target: {"prompt_rps": [Sample("prompt_rps", value, None if value else "errored") for value in values]}
            for target, values in per_target.items()}


def prompt_must(summary: dict) -> dict:
    return next(v for v in report.judge_goals(summary) if v["key"] == "prompt_rps")["must"]


def test_a_slow_stretch_of_the_machine_does_not_decide_the_must() -> None:
    # POST /prompt req/s of one run on this project's noisy machine: the gateway ahead in four repetitions of
    # five, its median from a slow stretch and the reference's from a fast one.
    nginx, gateway = [751, 1133, 1008, 804, 1078], [873, 905, 1082, 909, 1320]
    must = prompt_must(report.summarise(samples(nginx=nginx, gateway=gateway)))

    assert must["ratio_of_medians"] == 909 / 1008
    assert must["per_repetition"] == [g / p for g, p in zip(gateway, nginx, strict=True)]
    assert must["ratio"] == 909 / 804 and must["holds"] is True


def test_a_gateway_behind_in_most_repetitions_fails_the_must() -> None:
    summary = report.summarise(samples(nginx=[1000, 1000, 1000], gateway=[840, 1200, 800]))
    must = prompt_must(summary)
    assert must["ratio"] == 0.84 and must["holds"] is False  # the must is 0.85 × nginx


def test_a_refused_repetition_leaves_the_ratio_of_medians_to_judge() -> None:
    summary = report.summarise(samples(nginx=[1000, None, 1000], gateway=[1100, 1100, 1100]))
    must = prompt_must(summary)
    assert must["per_repetition"] is None and must["holds"] is None  # nginx has no median: nothing to judge by
