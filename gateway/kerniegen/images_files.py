"""Where a LoadImage value points: ComfyUI's annotated file names, confined to their folder.

"x.png" and "sub/x.png" live in input/, "x.png [output]" in output/, "x.png [temp]" in temp/.
ComfyUI would follow "../" anywhere on the disk; KernieGen treats such names as missing files.
"""

from __future__ import annotations

from pathlib import Path

_ANNOTATIONS: tuple[tuple[str, str], ...] = (("[output]", "output"), ("[input]", "input"), ("[temp]", "temp"))


def resolve_annotated_path(name: str, input_dir: Path, output_dir: Path | None, temp_dir: Path | None) -> Path | None:
    """The file `name` designates, or None if it leaves its folder or names a folder we do not have.

    A name that is not a str fails with the AttributeError ComfyUI's `name.endswith(...)` raises.
    """
    name.endswith("[output]")  # the first thing ComfyUI does with it; raises for non-strings
    folders = {"output": output_dir, "input": input_dir, "temp": temp_dir}
    base: Path | None = input_dir
    for annotation, kind in _ANNOTATIONS:
        if name.endswith(annotation):
            # ComfyUI cuts the annotation plus one character, the space it expects before it.
            name = name[: -(len(annotation) + 1)]
            base = folders[kind]
            break
    if base is None:
        return None
    try:
        root = base.resolve()
        candidate = (root / name).resolve()
    except (OSError, ValueError):  # e.g. an embedded NUL; os.path.exists answers False to those too
        return None
    if candidate != root and root not in candidate.parents:
        return None
    return candidate


def file_exists(path: Path | None) -> bool:
    try:
        return path is not None and path.exists()
    except (OSError, ValueError):
        return False

