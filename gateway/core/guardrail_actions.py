"""The names of what the guardrails (pipeline/guardrails.py) do to a POST /prompt: one vocabulary for the
`action` label of comfy_gateway_guardrail_actions_total, the access log's `guardrails` field and the actions
kept with a prompt's record in the state store (shown by GET /gateway/prompts/{id} and the console)."""

from __future__ import annotations

from collections.abc import Iterable

GUARDRAIL_ACTIONS = (
    "seed_normalized", "alias_applied", "placed_by_model", "refused_model", "refused_node_class", "skipped"
)
_KNOWN = frozenset(GUARDRAIL_ACTIONS)


def recorded_actions(actions: Iterable[object]) -> tuple[str, ...]:
    """What a prompt's record keeps of `actions`: each of the gateway's own action names once, first seen first.

    Anything else (a name of a newer gateway's, a value a foreign writer left) is dropped, so a record holds only
    these names, at most one of each: its size is bounded by the vocabulary, whatever the prompt and whoever
    wrote the store. How often an action was taken is the metric's and the access log's to tell."""
    return tuple(dict.fromkeys(name for name in actions if type(name) is str and name in _KNOWN))
