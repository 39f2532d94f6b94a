"""The pool bench's smoke mode runs end to end, so bench/pools.py cannot rot unnoticed: every prompt of every
case completes, and a pool's prompts are spread over its members. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_pool_bench_smoke_completes_every_prompt(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(BENCH / "pools.py"), "--smoke", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, f"bench/pools.py --smoke exited {run.returncode}\n{run.stdout}\n{run.stderr}"
    cases = {case["case"]: case for case in json.loads((tmp_path / "pools-latest.json").read_text())["cases"]}
    assert all(case["completed"] == case["prompts"] for case in cases.values())
    assert cases["one server"]["placed"] == {"gpu": cases["one server"]["prompts"]}
    assert set(cases["pool of 3"]["placed"]) == {"gpu.1", "gpu.2", "gpu.3"}
