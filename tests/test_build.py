"""The build that runs is the one asked for: .ci/run runs this suite twice, on the README's editable install
(pure Python) and on a wheel compiled with COMFY_GATEWAY_COMPILE=1 (setup.py), saying which it expects in
EXPECT_COMPILED_BUILD. A compiled module left in a checkout would shadow the .py beside it."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import gateway
from gateway.core.build import build_name, compiled_modules

ROOT = Path(__file__).resolve().parent.parent


def _listed() -> list[str]:
    """The modules pyproject.toml has setup.py compile, by dotted name."""
    paths = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy-gateway"]["compiled"]
    return [path.removesuffix(".py").replace("/", ".") for path in paths]


def test_the_compiled_list_names_modules_of_the_request_path() -> None:
    listed = _listed()
    assert len(listed) == len(set(listed)) >= 20
    for name in listed:
        module = importlib.import_module(name)
        assert module.__name__ == name
    assert "gateway.pipeline.prompt_nodes" not in listed  # msgspec Structs: mypyc cannot compile them


def test_the_build_is_the_one_expected() -> None:
    compiled = compiled_modules()
    if os.environ.get("EXPECT_COMPILED_BUILD") == "1":
        assert set(compiled) == set(_listed())
        for name in compiled:  # imported as compiled, not from a .py elsewhere on the path
            assert not str(importlib.import_module(name).__file__).endswith(".py")
        assert build_name(compiled) == f"compiled ({len(compiled)} modules, mypyc)"
    else:
        assert compiled == ()
        assert build_name(compiled) == "pure Python"
        assert Path(gateway.__file__).resolve().parent == ROOT / "gateway"  # the checkout's own sources


def test_compiled_modules_are_found_on_disk_by_name(tmp_path: Path) -> None:
    package = tmp_path / "gateway"
    (package / "datapath" / "fast").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "datapath" / "fast" / "relay.py").write_text("")
    for name, suffix in (("datapath/fast/relay", EXTENSION_SUFFIXES[0]), ("core", EXTENSION_SUFFIXES[-1])):
        (package / f"{name}{suffix}").write_bytes(b"")
    assert compiled_modules(package) == ("gateway.core", "gateway.datapath.fast.relay")


def test_a_wheel_never_ships_a_compiled_module_an_earlier_build_left_behind(tmp_path: Path) -> None:
    """pip builds in the checkout, whose build/ directory outlives a build: a module compiled by an earlier
    build must not reach a later wheel, pure or compiled with a shorter list, to shadow its .py."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("gateway", "config"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    stale = source / "build" / "lib" / "gateway" / "pipeline" / f"guardrails{EXTENSION_SUFFIXES[0]}"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an earlier compiled build")
    environment = {key: value for key, value in os.environ.items() if key != "COMFY_GATEWAY_COMPILE"}
    # setuptools' build command, which every wheel build runs (pip wheel, pip install .) to fill build/lib
    built = subprocess.run([sys.executable, "setup.py", "--quiet", "build"], cwd=source, capture_output=True,
                           text=True, env=environment, timeout=300)
    assert built.returncode == 0, built.stderr
    shipped = [path.relative_to(source / "build" / "lib") for path in (source / "build" / "lib").rglob("*")]
    assert Path("gateway/pipeline/guardrails.py") in shipped
    assert not [path for path in shipped if path.name.endswith(tuple(EXTENSION_SUFFIXES))]
