"""The output root: one directory where `<root>/<backend>` is a symlink to each backend's `output_dir`, so a
client reading `OUTPUT_DIR/subfolder/filename` finds every rewritten ref (its subfolder starts with the
backend's name). Owns creating and repairing those links, and mapping a ref to a path inside the root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from gateway.outputs.refs import SUBFOLDER_SEPARATOR, check_view_ref


class OutputRootError(Exception):
    """The output root cannot be set up: something that is not our symlink is in the way."""


class OutputRoot:
    """Keeps `root/<backend>` → `output_dir` links for the backends that have an `output_dir`."""

    def __init__(self, root: Path, backend_dirs: Mapping[str, Path]) -> None:
        self.root = Path(os.path.abspath(root))
        # Absolute, not resolved: if the configured output_dir is itself a symlink, the link keeps pointing
        # at the path the operator wrote.
        self.backend_dirs = {name: Path(os.path.abspath(path)) for name, path in backend_dirs.items()}

    def sync(self) -> list[str]:
        """Create the root and make every `root/<backend>` a symlink to its `output_dir`; return what changed.

        A missing link is created, a link to anywhere else is replaced atomically, a real file or directory
        is never touched: OutputRootError names it. Targets need not exist yet (a backend creates its own
        output_dir). Entries of backends no longer configured are left alone.
        """
        changes: list[str] = []
        if not self.root.is_dir():
            if self.root.exists() or self.root.is_symlink():
                raise OutputRootError(f"output root {self.root} exists and is not a directory")
            self.root.mkdir(parents=True)
            changes.append(f"created output root {self.root}")
        for backend, target in sorted(self.backend_dirs.items()):
            link = self.root / backend
            if link.is_symlink():
                current = os.readlink(link)
                if Path(current) == target:
                    continue
                self._replace_link(link, target)
                changes.append(f"repaired {link}: {current} -> {target}")
            elif link.exists():
                kind = "directory" if link.is_dir() else "file"
                raise OutputRootError(
                    f"output root entry {link} is a real {kind}, not a symlink to backend {backend!r}'s "
                    f"output_dir {target}; move it away (the gateway never deletes files)"
                )
            else:
                link.symlink_to(target, target_is_directory=True)
                changes.append(f"linked {link} -> {target}")
        return changes

    @staticmethod
    def _replace_link(link: Path, target: Path) -> None:
        # A new link under a temporary name, then rename over the old one: readers never see a gap.
        temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        if temporary.is_symlink():
            temporary.unlink()
        temporary.symlink_to(target, target_is_directory=True)
        os.replace(temporary, link)

    def path_for(self, backend: str, subfolder: str, filename: str) -> Path:
        """`root/<backend>/<subfolder>/<filename>` for a backend's own (un-prefixed) ref.

        ValueError for an unknown backend, an empty filename, a filename with a `/` (ComfyUI names files
        by their base name), or a ref `check_view_ref` refuses. The path is lexically inside the root.
        """
        if backend not in self.backend_dirs:
            raise ValueError(f"backend {backend!r} has no output_dir under the output root")
        if not filename or SUBFOLDER_SEPARATOR in filename:
            raise ValueError(f"output filename {filename!r} must be a non-empty base name")
        check_view_ref(filename, subfolder)
        base = self.root / backend
        path = base.joinpath(*[part for part in subfolder.split(SUBFOLDER_SEPARATOR) if part], filename)
        if os.path.commonpath([base, os.path.normpath(path)]) != str(base):
            raise ValueError(f"output ref {subfolder!r}/{filename!r} leaves {base}")
        return path
