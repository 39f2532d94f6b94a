"""The scale benchmark's smoke mode runs end to end, so bench/scale.py cannot rot unnoticed.

It asserts only that the run completed, that every gateway and the merge answered the right bodies (the
benchmark refuses any that did not) and that no load run errored; the numbers are never asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs `bench/scale.py --smoke` once for the module; in CI, installs wrk first if missing."""
    if shutil.which("wrk") is None and os.environ.get("CI"):
        subprocess.run(["bash", str(BENCH / "setup.sh")], check=True, timeout=900, stdin=subprocess.DEVNULL)
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed; run bench/setup.sh")
    out = tmp_path_factory.mktemp("scale")
    run = subprocess.run([sys.executable, str(BENCH / "scale.py"), "--smoke", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    report_path = out / "scale-latest.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return {"run": run, "report": report, "markdown": out / "scale-latest.md"}


def test_scale_smoke_run_completes(smoke: dict[str, Any]) -> None:
    run = smoke["run"]
    assert run.returncode == 0, f"bench/scale.py --smoke exited {run.returncode}\n{run.stdout}\n{run.stderr}"
    assert smoke["report"] is not None
    assert smoke["markdown"].read_text().startswith("## comfy-gateway scale benchmark")
    assert smoke["report"]["settings"]["smoke"] is True


def test_every_gateway_routed_by_affinity_and_answered_right(smoke: dict[str, Any]) -> None:
    report = smoke["report"]
    assert report is not None
    cases = report["cases"]
    assert {(case["store_size"], case["backends"], case["spread"]) for case in cases.values()} == {
        (1, 2, False), (100, 2, False), (1_000, 2, False), (1_000, 20, False), (1_000, 2, True), (1_000, 20, True)}
    for name, case in cases.items():
        assert case["status"] == "ok", f"{name}: {case['status']}: {case['detail']}"
        measured = case["summary"]
        assert set(measured) == {"history_rps", "history_p50_ms", "history_p99_ms", "history_cpu_us",
                                 "history_upstream_cpu_us", "history_cpu_per_upstream"}
        assert not [entry["problems"] for entry in measured.values() if entry["problems"]], name


def test_merged_history_and_direct_answered_right(smoke: dict[str, Any]) -> None:
    report = smoke["report"]
    assert report is not None
    merge = report["merge"]
    assert merge["status"] == "ok", merge["detail"]
    runs = [f"{who}_{query}" for who in ("direct", "direct_dumped", "gateway", "gateway_changed", "gateway_nocache")
            for query in ("whole", "page64")]
    kinds = ("p50_ms", "max_ms", "cpu_us")
    assert set(merge["summary"]) == {f"{run}_{kind}" for run in runs for kind in kinds}
    assert not [entry["problems"] for entry in merge["summary"].values() if entry["problems"]]
