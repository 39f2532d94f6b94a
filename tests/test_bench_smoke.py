"""The benchmark's smoke mode runs end to end, so bench/ cannot rot unnoticed.

It asserts only that the run completed and that every target it reports answered the right bodies with no
error; the numbers themselves are never asserted (a smoke run's numbers mean nothing).
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
TOOLS = ("nginx", "wrk", "curl")


def missing_tools() -> list[str]:
    # Debian puts nginx in /usr/sbin, which a non-root PATH may lack.
    return [tool for tool in TOOLS
            if shutil.which(tool) is None and not (tool == "nginx" and os.access("/usr/sbin/nginx", os.X_OK))]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs `bench/run.py --smoke` once for the module; in CI, installs nginx and wrk first if missing."""
    if missing_tools() and os.environ.get("CI"):
        subprocess.run(["bash", str(BENCH / "setup.sh")], check=True, timeout=900, stdin=subprocess.DEVNULL)
    missing = missing_tools()
    wanted = ["direct", "plain", "gateway", "gateway-redis", "gateway-2w"] + ([] if "nginx" in missing else ["nginx"])
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run([sys.executable, str(BENCH / "run.py"), "--smoke", "--out", str(out),
                          "--targets", ",".join(wanted)],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    report = json.loads((out / "latest.json").read_text()) if (out / "latest.json").exists() else None
    return {"run": run, "report": report, "missing": missing, "markdown": out / "latest.md"}


def test_smoke_run_completes_and_every_reported_target_answered_right(smoke: dict[str, Any]) -> None:
    run = smoke["run"]
    assert run.returncode == 0, f"bench/run.py --smoke exited {run.returncode}\n{run.stdout}\n{run.stderr}"
    report = smoke["report"]
    assert report is not None and smoke["markdown"].read_text().startswith("## comfy-gateway benchmark")
    statuses = report["targets"]
    assert statuses["direct"]["status"] == "ok" and statuses["plain"]["status"] == "ok", statuses
    for name, status in statuses.items():
        # "not available" only when a target cannot be started here at all (a tool or command is missing);
        # a target that started and answered wrong or errored is a failure.
        assert status["status"] in ("ok", "not available"), f"{name}: {status}"
        assert status["verified"] == (status["status"] == "ok")
    reported = {name for per_target in report["summary"].values() for name in per_target}
    assert reported <= {name for name, status in statuses.items() if status["status"] == "ok"}
    refused = [(key, name, entry["problems"]) for key, per_target in report["summary"].items()
               for name, entry in per_target.items() if entry["problems"]]
    assert not refused


@pytest.mark.parametrize("tool", ["nginx", "wrk"])
def test_smoke_run_covers_the_reference_tools(smoke: dict[str, Any], tool: str) -> None:
    if tool in smoke["missing"]:
        pytest.skip(f"{tool} is not installed, so the smoke run left out what needs it; run bench/setup.sh")
    report = smoke["report"]
    assert report is not None
    if tool == "nginx":
        assert report["targets"]["nginx"]["status"] == "ok"
        assert "nginx" in report["summary"]["ws_msgps"]
    else:
        assert not report["settings"]["skipped_measurements"]
        assert set(report["summary"]["history_rps"]) >= {"direct", "plain"}
        # what the backend behind each target spent on the same requests is reported beside the target's own
        assert set(report["summary"]["history_upstream_cpu_us"]) >= {"direct", "plain"}
