"""Choosing the backend for a request, and saying why.

Precedence is written once, in `select_backend`: header → query → preference → default; an unknown name is
an error naming the valid ones, never a fallback. Affinity (a prompt already known to live on a backend) and
merging are decided in decide.py, which knows the endpoint.
"""

from __future__ import annotations

from collections.abc import Collection

from gateway.core.errors import BadRequest, UnknownBackend
from gateway.core.selection import Selection, Source, selected
from gateway.pipeline.classify import RequestFacts
from gateway.pipeline.identifiers import id_problem, user_name
from gateway.runtime import Runtime


def check_backend_name(name: str, backends: Collection[str], *, where: str, listed: Collection[str] = ()) -> str:
    """Return `name` if it is one of `backends`, else raise UnknownBackend naming the valid ones (`listed`, else
    `backends`; never fall back)."""
    if name in backends:
        return name
    valid = sorted(listed or backends)
    raise UnknownBackend(
        f"unknown backend {name!r} in {where}; valid backends: {', '.join(valid)}",
        details=valid,
    )


def select_backend(
    *,
    header: str | None,
    query: str | None,
    preference: str | None,
    default: str,
    backends: Collection[str],
    header_name: str = "X-Comfy-Backend",
    user: str | None = None,
    listed: Collection[str] = (),
) -> Selection:
    """Apply the precedence order. Empty strings count as absent (a client clearing a header). `backends`: the
    names that may be given; `listed`: those an unknown name's error lists (else `backends`)."""
    if header:
        name = check_backend_name(header.strip(), backends, where=f"header {header_name}", listed=listed)
        return selected(name, Source.HEADER)
    if query:
        name = check_backend_name(query.strip(), backends, where="query parameter backend", listed=listed)
        return selected(name, Source.QUERY)
    if preference:
        where = f"the stored preference of user {user!r}" if user else "a stored preference"
        return Selection(check_backend_name(preference, backends, where=where, listed=listed), Source.PREFERENCE)
    return Selection(default, Source.DEFAULT)


def user_of(request: RequestFacts, rt: Runtime) -> str | None:
    """The user a request speaks for: the first of the configured user headers that is set."""
    for header in rt.policy.user_headers:
        value = request.header(header)
        if value:
            user = user_name(value)
            problem = id_problem(user, rt.policy.max_id_chars)
            if problem is not None:
                raise BadRequest(f"the {header} header {problem}", details=header)
            return user
    return None


def explicit_selection(request: RequestFacts, rt: Runtime) -> Selection | None:
    """The request's own choice (header, then query), or None when it makes none."""
    policy = rt.policy
    header = request.header(policy.backend_header)
    query = request.query_value(policy.backend_query_param)
    if not header and not query:
        return None
    return select_backend(
        header=header,
        query=query,
        preference=None,
        default=rt.backends.default,
        backends=rt.backends.names,
        header_name=policy.backend_header,
        listed=rt.backends.configured,
    )


async def preference_selection(rt: Runtime, user: str | None) -> Selection | None:
    if user is None:
        return None
    preference = await rt.store.get_preference(user)
    if preference is None:
        return None
    return select_backend(
        header=None,
        query=None,
        preference=preference,
        default=rt.backends.default,
        backends=rt.backends.names,
        user=user,
        listed=rt.backends.configured,
    )


async def base_selection(rt: Runtime, user: str | None) -> Selection:
    """Preference, else the default (for when the request itself chose nothing)."""
    return await preference_selection(rt, user) or Selection(rt.backends.default, Source.DEFAULT)
