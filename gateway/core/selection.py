"""A selection: the backend chosen for a request, and why (the vocabulary of X-Comfy-Route and metrics)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import lru_cache


class Source(enum.StrEnum):
    """Why a backend was chosen; the value of the X-Comfy-Route header and the `source` metric label."""

    HEADER = "header"
    QUERY = "query"
    AFFINITY = "affinity"
    PREFERENCE = "preference"
    DEFAULT = "default"
    MODEL = "model"  # the default backend lacked a model file the prompt names; one that has it was chosen
    FALLBACK = "fallback"  # the chosen backend was open or down: its configured fallback took the new prompt
    MERGED = "merged"

    # A member is the str of its value, and equal to it, so it hashes as that str does: in C, where Enum's own
    # hash is a Python call on every lookup (a selection's text, lru_cache's keys), and consistent with
    # equality, so a member and its text find the same dict entry.
    __hash__ = str.__hash__


# Each source's text, for the hot paths: an enum member's `.value` is two Python calls.
SOURCE_TEXT: dict[Source, str] = {source: source.value for source in Source}


@dataclass(frozen=True, slots=True)
class Selection:
    backend: str
    source: Source

    @property
    def explicit(self) -> bool:
        """Chosen by this request or its user, rather than by the gateway's default."""
        return self.source in (Source.HEADER, Source.QUERY, Source.PREFERENCE)


@lru_cache(maxsize=1024)
def selected(backend: str, source: Source) -> Selection:
    """Selection(backend, source), made once per pair: a frozen value, ~0.6 µs to make, and a request's
    selection is one of a few (backends are the configured ones)."""
    return Selection(backend, source)
