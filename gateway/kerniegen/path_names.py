"""Telling a client's bad file name from a server fault: names no file can have (a NUL byte, bytes
the filesystem encoding cannot hold, a component or path over the filesystem's limits, or nesting
too deep to handle) are found before anything touches the disk, and the errno values that blame the
name rather than the server are named once for every route that stores what a client names."""

from __future__ import annotations

import errno
import os

# Too long, a missing or non-directory parent inside the name, a directory where a file should go,
# something already in the way, an illegal byte, a symlink loop: the name, not the server, is at fault.
NAME_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                         errno.EINVAL, errno.EILSEQ, errno.ELOOP})
# Used when the filesystem does not say (os.pathconf unavailable): Linux's usual limits.
_FALLBACK_NAME_MAX = 255
_FALLBACK_PATH_MAX = 4096
# os.makedirs and shutil.rmtree recurse once per directory level, so a tree deeper than Python's
# recursion limit could be neither made nor removed (a RecursionError, not an OSError). ComfyUI has
# no such limit; no client needs a tree anywhere near this deep.
MAX_DEPTH = 256


def blames_the_name(error: OSError) -> bool:
    return error.errno in NAME_ERRNOS


def unstorable_reason(path: str, directory: str) -> str | None:
    """Why no file can be at `path` (an absolute path under `directory`), or None when one can."""
    if path.count("/") - directory.rstrip("/").count("/") > MAX_DEPTH:
        return f"the path is nested more than {MAX_DEPTH} directories deep"
    if "\0" in path:
        return "the name has a NUL byte"
    try:
        encoded = os.fsencode(path)
    except UnicodeEncodeError:
        return "the name cannot be encoded for the filesystem"
    name_max, path_max = _limits(directory)
    if len(encoded) >= path_max:  # PATH_MAX counts the terminating NUL
        return f"the path is {len(encoded)} bytes long, the filesystem allows {path_max - 1}"
    longest = max(len(component) for component in encoded.split(b"/"))
    if longest > name_max:
        return f"a path component is {longest} bytes long, the filesystem allows {name_max}"
    return None


def _limits(directory: str) -> tuple[int, int]:
    try:
        return os.pathconf(directory, "PC_NAME_MAX"), os.pathconf(directory, "PC_PATH_MAX")
    except (OSError, ValueError):
        return _FALLBACK_NAME_MAX, _FALLBACK_PATH_MAX
