"""Placement: the step that turns a pool's name into the member that takes the call (any other name is one
server already, and stays).

    a new prompt          the available member with the shortest queue (backends/queues.py; ties in turn),
                          unless it names an uploaded input file: then the caller's member, where its uploads went
    any other call        the caller's member: rendezvous hashing of the caller (its user, else its address)
                          over the available members, so one caller's uploads, user data and socket stay on one
                          server while the pool's members come and go

"Available": neither open nor down at the last health check (admit.py). With none available, the first
member answers for itself (a 503 while open, a 502 when it cannot be reached), naming it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from gateway.core.json_codec import string_value
from gateway.core.selection import Selection, Source, selected
from gateway.inventory.files import INPUT_FOLDER
from gateway.pipeline import admit
from gateway.pipeline.admit import unavailable
from gateway.pipeline.prompt_nodes import PromptNode, read_nodes
from gateway.runtime import Runtime


def place(rt: Runtime, selection: Selection, caller: str) -> Selection:
    """The member of a pool that takes a call of `caller` that is not a new prompt; any other name as it is."""
    members = rt.backends.pools.get(selection.backend)
    if members is None:
        return selection
    return selected(callers_member(rt, members, caller), selection.source)


def place_prompt(
    rt: Runtime, selection: Selection, caller: str, body: bytes, nodes: Mapping[str, PromptNode] | None = None
) -> Selection:
    """The member of a pool that takes a new prompt (its `nodes`, when they were read already); any other name
    as it is."""
    members = rt.backends.pools.get(selection.backend)
    if members is None:
        return selection
    if names_upload(rt, members, body, nodes):
        return selected(callers_member(rt, members, caller), selection.source)
    available = [member for member in members if unavailable(rt, member) is None] or [members[0]]
    return selected(rt.queues.shortest(available), selection.source)


def standby(rt: Runtime, chosen: Selection, placed: Selection, caller: str, body: bytes) -> Selection | None:
    """Where a new prompt goes should its server refuse the connection: another available member of the pool
    the prompt was placed in (the shortest queue), else the configured fallback (admit.standby), placed."""
    members = rt.backends.pools.get(chosen.backend, ())
    if placed.backend in members:
        others = [m for m in members if m != placed.backend and unavailable(rt, m) is None]
        if others:
            return Selection(rt.queues.shortest(others), Source.FALLBACK)
    fallback = admit.standby(rt, placed)
    return place_prompt(rt, fallback, caller, body) if fallback is not None else None


def callers_member(rt: Runtime, members: tuple[str, ...], caller: str) -> str:
    available = [member for member in members if unavailable(rt, member) is None]
    if not available:
        return members[0]
    return max(available, key=lambda member: _weight(caller, member))


def _weight(caller: str, member: str) -> bytes:
    return hashlib.blake2b(f"{caller}\0{member}".encode(), digest_size=8).digest()


def names_upload(
    rt: Runtime, members: tuple[str, ...], body: bytes, nodes: Mapping[str, PromptNode] | None = None
) -> bool:
    """The prompt names a file of the input folder (what LoadImage and the other upload inputs read), as the
    first member with a known inventory lists its node classes. Unknown (no inventory, a body not read so):
    False, and the prompt is placed by queue."""
    if rt.inventories is None:
        return False
    inventory = next((i for i in map(rt.inventories.get, members) if i is not None and i.nodes), None)
    if inventory is None:
        return False
    if nodes is None:
        nodes = read_nodes(body)
    if nodes is None:
        return False
    for node in nodes.values():
        node_class = inventory.node(node.class_type)
        if node_class is None:
            continue
        for name, raw in node.inputs.items():
            spec = node_class.input(name)
            if spec is not None and spec.folder == INPUT_FOLDER and string_value(raw) is not None:
                return True
    return False
