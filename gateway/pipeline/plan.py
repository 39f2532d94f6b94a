"""The per-request decisions both data paths make, as plain functions of headers, query and body: who the
user is, which backend a request selects, where it goes, what POST /prompt records (its body is read by
prompt_body.py), how /view and the prompt-scoped calls route. proxy.py (aiohttp) and gateway/fastpath call these, so they cannot drift apart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode

from gateway.outputs import refs as rewrite
from gateway.pipeline.affinity import locate_prompt, locate_prompts
from gateway.pipeline.classify import prompt_ids_in_body
from gateway.core.errors import BadRequest
from gateway.pipeline.prompt_body import Submission
from gateway.runtime import Runtime
from gateway.pipeline.select import Selection, Source, select_backend
from gateway.state.store import PromptRecord


class HeaderLookup(Protocol):
    def get(self, name: str, default: None = None, /) -> str | None: ...


# --- select -------------------------------------------------------------------------------------------------


def user_of(headers: HeaderLookup, rt: Runtime) -> str | None:
    for header in rt.policy.user_headers:
        value = headers.get(header)
        if value:
            return value
    return None


def explicit_selection(header: str | None, query: str | None, rt: Runtime) -> Selection | None:
    """Header or query choice for this request; an unknown name is an error, never a fallback."""
    if not header and not query:
        return None
    return select_backend(
        header=header,
        query=query,
        preference=None,
        default=rt.backends.default,
        backends=rt.backends,
        header_name=rt.policy.backend_header,
    )


async def preference_selection(rt: Runtime, user: str | None) -> Selection | None:
    if user is None:
        return None
    preference = await rt.store.get_preference(user)
    if preference is None:
        return None
    return select_backend(
        header=None, query=None, preference=preference, default=rt.backends.default, backends=rt.backends, user=user
    )


async def base_selection(rt: Runtime, user: str | None) -> Selection:
    """Preference, else the default (the caller has already tried header and query)."""
    return await preference_selection(rt, user) or Selection(rt.backends.default, Source.DEFAULT)


async def history_selection(rt: Runtime, prompt_id: str, explicit: Selection | None, user: str | None) -> Selection:
    """GET /history/{id}: the backend holding the prompt, whatever the request chose; else the usual order."""
    holder = await locate_prompt(rt, prompt_id)
    if holder is not None:
        return Selection(holder, Source.AFFINITY)
    return explicit or await base_selection(rt, user)


# --- where it goes ------------------------------------------------------------------------------------------


def forward_target(raw: str, param: str, *, query: str | None = None) -> str:
    """The raw path (still percent-encoded, so `%2F` inside a segment survives) plus the query, minus our own
    `backend` parameter, which is for the gateway and not the backend. `query` replaces the query."""
    path, sep, raw_query = raw.partition("?")
    if query is not None:
        return f"{path}?{query}" if query else path
    if not sep:
        return path
    if param + "=" not in raw_query and raw_query != param:
        return raw
    kept = [p for p in raw_query.split("&") if p.split("=", 1)[0] != param]
    return f"{path}?{'&'.join(kept)}" if kept else path


def view_ref(query: Mapping[str, str], rt: Runtime) -> rewrite.ViewRef:
    """A /view request's ref; its subfolder's first segment may name the backend. BadRequest if it escapes."""
    try:
        return rewrite.parse_view_ref(query.get("filename", ""), query.get("subfolder", ""), rt.backends)
    except ValueError as exc:
        raise BadRequest(f"invalid /view reference: {exc}", details="subfolder") from exc


def view_query(items: list[tuple[str, str]], ref: rewrite.ViewRef, param: str) -> str:
    """The query for the backend named by a /view subfolder: that prefix stripped, our parameter dropped."""
    return urlencode([(k, ref.subfolder if k == "subfolder" else v) for k, v in items if k != param])


# --- POST /prompt ---------------------------------------------------------------------------------------------


def prompt_record(submission: Submission, selection: Selection, user: str | None) -> PromptRecord:
    """What affinity remembers about a submitted prompt (written before it is forwarded)."""
    return PromptRecord(
        prompt_id=submission.prompt_id,
        backend=selection.backend,
        user=user,
        client_id=submission.client_id,
        submitted_at=time.time(),
    )


# --- prompt-scoped calls: POST /queue, /history, /interrupt ---------------------------------------------------


@dataclass(frozen=True)
class ScopedRoute:
    """Where a prompt-scoped call goes: one backend (`selection`), or several, each with the ids it holds."""

    selection: Selection | None
    groups: dict[str, list[str]]
    payload: object
    first_prompt_id: str | None


async def route_prompt_scoped(
    rt: Runtime, template: str, body: bytes, explicit: Selection | None, user: str | None
) -> ScopedRoute:
    """Ids named in the body go to the backends that hold them; a call naming none acts on the selected one."""
    try:
        payload = json.loads(body) if body.strip() else None
    except (UnicodeDecodeError, ValueError):
        payload = None  # not ours to judge: the backend answers malformed bodies in its own way
    ids = prompt_ids_in_body(template, payload)
    if not ids:
        return ScopedRoute(explicit or await base_selection(rt, user), {}, payload, None)
    groups, unknown = await locate_prompts(rt, ids)
    fallback = explicit or await base_selection(rt, user)
    if unknown:
        groups.setdefault(fallback.backend, []).extend(unknown)
    if len(groups) == 1:
        (backend,) = groups
        source = Source.AFFINITY if not unknown or backend != fallback.backend else fallback.source
        return ScopedRoute(Selection(backend, source), groups, payload, ids[0])
    return ScopedRoute(None, groups, payload, ids[0])
