"""The fault bench's smoke mode runs end to end, so bench/faults.py cannot rot unnoticed.

It asserts what the bench itself holds the gateway to (no prompt lost, no affinity mapping lost, the gateway
still up) and that the faults did happen (alpha's circuit opened and closed); latencies are never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_fault_bench_smoke_loses_nothing(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(BENCH / "faults.py"), "--smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, f"bench/faults.py --smoke exited {run.returncode}\n{run.stdout}\n{run.stderr}"
    assert "Traceback" not in run.stderr, run.stderr
    report = json.loads((tmp_path / "faults-latest.json").read_text())
    assert report["prompts"]["accepted"] > 0 and report["prompts"]["completed"] > 0
    assert report["prompts"]["lost"] == 0 and report["affinity_mappings_lost"] == 0
    assert report["gateway"]["exit"] is None
    assert [action for _, action in report["faults"]].count("kill alpha") == 2
    opened = [t for t in report["breaker_transitions"] if 'backend="alpha",to="open"' in t]
    assert opened, report["breaker_transitions"]
    assert (tmp_path / "faults-latest.md").read_text().startswith("## comfy-gateway fault bench")
