"""The build, for what pyproject.toml cannot say: an optional compiled build of the request path.

`COMFY_GATEWAY_COMPILE=1 pip install .` (or `pip wheel .`) compiles the modules pyproject.toml lists under
[tool.comfy-gateway] with mypyc, part of mypy: the same typed code, as C extension modules, for about 30 % fewer
instructions per small proxied request and per relayed WebSocket message (bench/README.md). It needs a C
compiler and the Python headers. Without the variable the build is pure Python and needs neither: what a fresh
machine gets. The Docker image ships the compiled build.

Compiled code checks its type annotations at run time where the interpreter trusts them, so a compiled build
is tested whole: .ci/run runs the suite against one. An editable install is never compiled: a compiled module
sits beside its .py and is imported first, so an edit to the .py would silently not run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from pathlib import Path

from setuptools import setup
from setuptools.command.build import build

MYPY = "mypy==2.4.1"  # the version the code is type-checked with (the test extra's pin)
ROOT = Path(__file__).resolve().parent


def compile_requested() -> bool:
    wanted = os.environ.get("COMFY_GATEWAY_COMPILE", "").strip().lower()
    if wanted in ("", "0", "no", "false"):
        return False
    if wanted not in ("1", "yes", "true"):
        sys.exit(f"COMFY_GATEWAY_COMPILE={wanted!r}: say 1 to compile the request path with mypyc, or 0")
    if "editable_wheel" in sys.argv:
        sys.exit(
            "COMFY_GATEWAY_COMPILE=1 asks for a compiled editable install: a compiled module is imported before "
            "the .py beside it, so edits would silently not run. Compile a wheel (pip install .) instead."
        )
    return True


def compiled_extensions() -> tuple[list[object], list[str]]:
    """(the extension modules, what building them needs)."""
    if not compile_requested():
        return [], []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # mypyc compiles from the types of everything the code calls, so the build needs the gateway's own
    # dependencies installed beside mypy: the code is type-checked against them.
    requires = [MYPY, *project["project"]["dependencies"]]
    try:
        from mypyc.build import mypycify
    except ImportError:
        # Asked for its build requirements first, this names them; pip installs them and runs this file again.
        return [], requires
    return mypycify(project["tool"]["comfy-gateway"]["compiled"], opt_level="3", debug_level="0"), requires


class FreshBuild(build):
    """Every build starts with no gateway package in the build directory, which a local `pip install .` or
    `pip wheel .` keeps between builds: a compiled module an earlier build left there would ship in this one
    (a pure build, or a compiled one with a shorter list) and be imported before the .py beside it."""

    def run(self) -> None:
        shutil.rmtree(Path(self.build_lib) / "gateway", ignore_errors=True)
        super().run()


extensions, build_requires = compiled_extensions()
setup(ext_modules=extensions, setup_requires=build_requires, cmdclass={"build": FreshBuild})
