"""Which build of the gateway is running: pure Python, or with its request path compiled by mypyc (setup.py,
`COMFY_GATEWAY_COMPILE=1`). Said in the start-up log line and in the build_info metric, so that an operator
comparing two replicas, or a benchmark, knows which one it measures."""

from __future__ import annotations

import functools
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


@functools.cache  # read once: an install does not change under a running process
def compiled_modules(package: Path = _PACKAGE) -> tuple[str, ...]:
    """The modules of the gateway package at `package` present as compiled extension modules, by dotted name;
    empty for a pure-Python build. Found on disk, without importing: an extension module beside its .py is
    the one imported."""
    found = []
    for path in package.rglob("*"):
        suffix = next((s for s in EXTENSION_SUFFIXES if path.name.endswith(s)), None)
        if suffix is not None:
            relative = path.relative_to(package.parent).as_posix()[: -len(suffix)]
            found.append(relative.replace("/", "."))
    return tuple(sorted(found))


def build_name(compiled: tuple[str, ...]) -> str:
    return f"compiled ({len(compiled)} modules, mypyc)" if compiled else "pure Python"
