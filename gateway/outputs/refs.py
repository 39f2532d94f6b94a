"""Output refs in and out: prefix every `{filename, subfolder, type}` a backend emits with its name, and
turn a `/view` request's subfolder back into (backend, original subfolder) after refusing refs that escape.

Pure functions on parsed JSON, or on entries read as their members' text (json_codec.history_entries); they
mutate the structure they are given in place (it was read for this one response) and return it, so no body
is ever copied.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from gateway.core import json_codec
from gateway.core.json_codec import Raw

SUBFOLDER_SEPARATOR = "/"


def prefix_subfolder(subfolder: str, backend: str) -> str:
    """`""` → `backend`, `"a/b"` → `"backend/a/b"`: the inverse of `split_view_subfolder`."""
    return backend + SUBFOLDER_SEPARATOR + subfolder if subfolder else backend


def prefix_node_output(node_output: Any, backend: str) -> None:
    """Prefix the refs of one node's UI output (`{"images": [ref, ...], "animated": [true], ...}`).

    Any list under any key counts, so `images`, `audio`, `latents`, `gifs` and keys of custom nodes are all
    covered; an item is a ref when it is a dict with `filename` and `type`. Other items (the booleans of
    `animated`, the strings of `text`) are left alone, as is a `subfolder` that is neither a string nor
    missing/None (we cannot know what it means).
    """
    if not isinstance(node_output, dict):
        return
    for items in node_output.values():
        if not isinstance(items, list):
            continue
        for ref in items:
            if isinstance(ref, dict) and "filename" in ref and "type" in ref:
                subfolder = ref.get("subfolder")
                if subfolder is None:
                    ref["subfolder"] = backend
                elif isinstance(subfolder, str):  # prefix_subfolder, inline: this runs for every ref of every answer
                    ref["subfolder"] = backend + SUBFOLDER_SEPARATOR + subfolder if subfolder else backend


def prefix_history(body: Any, backend: str) -> Any:
    """Prefix every ref in a `/history` or `/history/{id}` body (`{prompt_id: entry}`), in place.

    Only `entry["outputs"][node]` is walked: the prompt graph, `extra_data` and status messages (the bulk
    of the body) are never visited.
    """
    if not isinstance(body, dict):
        return body
    for entry in body.values():
        prefix_entry(entry, backend)
    return body


def prefix_entry(entry: Any, backend: str) -> Any:
    """Prefix every ref in one history entry's `outputs`, in place; returns the entry."""
    if isinstance(entry, dict):
        outputs = entry.get("outputs")
        if isinstance(outputs, dict):
            for node_output in outputs.values():
                prefix_node_output(node_output, backend)
    return entry


def prefix_entry_members(members: dict[str, Raw], backend: str) -> dict[str, Raw]:
    """prefix_entry on an entry read as its members' text: only `outputs` is read and written again (exactly:
    a node's output may hold any number); the other members, its prompt graph among them, stay as they are."""
    outputs = members.get("outputs")
    if outputs is not None:
        prefixed = json_codec.loads_exact(outputs)
        if isinstance(prefixed, dict):  # as prefix_entry walks an entry's outputs
            for node_output in prefixed.values():
                prefix_node_output(node_output, backend)
        members["outputs"] = json_codec.raw(json_codec.dumps(prefixed))
    return members


def prefixed_history_text(body: bytes, backend: str) -> bytes:
    """A `/history` or `/history/{id}` body with its refs prefixed, as JSON: its entries read as their members'
    text (far cheaper than reading it whole), or, where json_codec cannot vouch for that reading, read by json
    and written again whole as json.dumps writes it. Raises ValueError (json's own) when the body is not JSON."""
    entries = json_codec.history_entries(body)
    if entries is None:
        return json.dumps(prefix_history(json.loads(body), backend)).encode()
    for members in entries.values():
        prefix_entry_members(members, backend)
    return json_codec.dumps_raw(entries)


def prefix_executed_data(data: Any, backend: str) -> Any:
    """Prefix the refs in the `data` of a WebSocket `executed` message (`data["output"]`), in place."""
    if isinstance(data, dict):
        prefix_node_output(data.get("output"), backend)
    return data


def rewrite_executed_message(msg: Any, backend: str) -> Any:
    """Prefix the refs of a parsed WebSocket text message if it is `executed`; other messages pass."""
    if isinstance(msg, dict) and msg.get("type") == "executed":
        prefix_executed_data(msg.get("data"), backend)
    return msg


def rewrite_ws_text(text: str, backend: str) -> str:
    """Rewrite one WebSocket text frame. Frames that cannot be `executed` are returned untouched without
    being parsed (most frames are `progress`/`progress_state`, some of them tens of KB); unparsable or
    non-`executed` frames are also returned as they came, byte for byte."""
    if '"executed"' not in text:
        return text
    try:
        msg = json.loads(text)
    except ValueError:
        return text
    if not isinstance(msg, dict) or msg.get("type") != "executed":
        return text
    rewrite_executed_message(msg, backend)
    return json.dumps(msg)


def split_view_subfolder(subfolder: str, backends: Collection[str]) -> tuple[str | None, str]:
    """`"comfyui/a/b"` → `("comfyui", "a/b")`, `"comfyui"` → `("comfyui", "")`; a first segment that is
    not a backend name → `(None, subfolder)` unchanged (the request routes by normal selection)."""
    first, _, rest = subfolder.partition(SUBFOLDER_SEPARATOR)
    if first in backends:
        return first, rest
    return None, subfolder


def _escape_reason(value: str, *, backslash_separates: bool) -> str | None:
    if "\x00" in value:
        return "contains a NUL byte"
    if "\\" in value:
        if not backslash_separates:
            return "contains a backslash"
        value = value.replace("\\", SUBFOLDER_SEPARATOR)  # checked as the separator it is on Windows
    if value.startswith(SUBFOLDER_SEPARATOR):
        return "is an absolute path"
    if value[1:2] == ":":  # Windows reads any first character before a colon as a drive (`::`, `1:` too)
        return "starts with a drive letter"
    if ".." in value.split(SUBFOLDER_SEPARATOR):
        return "has a '..' segment"
    return None


def check_view_ref(filename: str, subfolder: str) -> None:
    """Raise ValueError when a `/view` ref could leave the directory it names.

    Refused in either part: NUL, a leading `/` (absolute; this also catches the empty first segment left by
    `"comfyui//x"` once split), a drive letter (`C:`), a `..` segment. `..` inside a name (`a..b.png`) is
    allowed. A backslash is refused in a filename; in a subfolder it is a separator, checked as `/` is: a
    ComfyUI on Windows writes a nested subfolder so (`a\\b`, from os.path), and its clients send it back.
    Values arrive decoded: `%2F`, `%5C`, `+` and `%2E%2E` are the caller's to decode.
    """
    for part, value in (("subfolder", subfolder), ("filename", filename)):
        reason = _escape_reason(value, backslash_separates=part == "subfolder")
        if reason is not None:
            raise ValueError(f"/view {part} {value!r} {reason}")


@dataclass(frozen=True)
class ViewRef:
    """Where a `/view` request goes: `backend` None means "by normal selection"."""

    backend: str | None
    subfolder: str
    filename: str


def parse_view_ref(filename: str, subfolder: str, backends: Collection[str]) -> ViewRef:
    """Split a decoded `/view` ref and check what will be forwarded; ValueError if it escapes."""
    backend, rest = split_view_subfolder(subfolder, backends)
    check_view_ref(filename, rest)
    return ViewRef(backend=backend, subfolder=rest, filename=filename)

