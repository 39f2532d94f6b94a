"""The README's two commands are the contract with newcomers and with CI: keep them exact."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    return re.findall(r"```sh\n(python3 -m venv [^\n]+)\n```", (ROOT / "README.md").read_text())


def test_readme_has_exactly_two_setup_commands():
    run, test = _readme_commands()
    assert run.endswith("comfy-gateway serve")
    assert test.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    _, test = _readme_commands()
    assert test in (ROOT / ".ci" / "run").read_text()
