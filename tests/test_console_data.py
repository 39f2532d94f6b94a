"""The console's pure parts: ?limit= parsing, reading a history entry and what a record keeps of the guardrails'
actions, for any input (hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.admin.console import parse_limit
from gateway.admin.console_data import (
    GUARDRAIL_NOTES,
    MAX_OUTPUTS_SHOWN,
    FinishedPrompts,
    Outcome,
    guardrail_notes,
    read_outcome,
)
from gateway.core.errors import BadRequest
from gateway.core.guardrail_actions import GUARDRAIL_ACTIONS, recorded_actions
from gateway.pipeline.guard import reveals_owners
from gateway.state.store import PromptRecord

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=30,
)


@given(st.one_of(st.none(), st.text()))
def test_any_limit_is_a_number_in_range_or_a_400(raw: str | None) -> None:
    try:
        limit = parse_limit(raw, 50, 200)
    except BadRequest as exc:
        assert exc.status == 400 and "limit" in str(exc.details)
    else:
        assert 1 <= limit <= 200
        assert limit == (50 if not raw else int(raw))


@pytest.mark.parametrize(("raw", "expected"), [(None, 50), ("", 50), ("1", 1), ("200", 200), ("007", 7)])
def test_limits_that_are_taken(raw: str | None, expected: int) -> None:
    assert parse_limit(raw, 50, 200) == expected


@given(json_values)
def test_any_history_entry_reads_as_a_state_and_well_formed_outputs(entry: Any) -> None:
    outcome = read_outcome(entry, "two")

    assert outcome.state in ("done", "failed")
    assert len(outcome.outputs) <= MAX_OUTPUTS_SHOWN and outcome.output_count >= len(outcome.outputs)
    for ref in outcome.outputs:
        assert set(ref) == {"filename", "subfolder", "type"} and all(isinstance(v, str) for v in ref.values())
        assert ref["subfolder"] == "two" or ref["subfolder"].startswith("two/")


def test_a_finished_entry_gives_its_outcome_duration_and_prefixed_outputs() -> None:
    entry = {
        "outputs": {"9": {"images": [{"filename": "a.png", "subfolder": "x", "type": "output"}] * 6}},
        "status": {"status_str": "error", "completed": False, "messages": [
            ["execution_start", {"timestamp": 1000}], ["execution_error", {"timestamp": 3500}]]},
    }

    outcome = read_outcome(entry, "two")

    assert outcome.state == "failed" and outcome.duration_seconds == 2.5
    assert outcome.outputs[0] == {"filename": "a.png", "subfolder": "two/x", "type": "output"}
    assert (len(outcome.outputs), outcome.output_count) == (MAX_OUTPUTS_SHOWN, 6)


@pytest.mark.parametrize(
    ("path", "owners"),
    [
        ("/gateway/prompts/p-1", True),
        ("/gateway/console/prompts", True),
        ("/gateway/console/users", True),
        ("/gateway/console", False),
        ("/gateway/console/backends", False),
        ("/gateway/console/events", False),
        ("/gateway/backends", False),
    ],
)
def test_the_listings_that_show_owners_are_guarded(path: str, owners: bool) -> None:
    assert reveals_owners(path) is owners


@given(st.lists(json_values | st.sampled_from(GUARDRAIL_ACTIONS), max_size=40))
def test_a_record_keeps_only_the_gateways_action_names_each_once_in_order(given_actions: list[Any]) -> None:
    kept = recorded_actions(given_actions)

    assert set(kept) <= set(GUARDRAIL_ACTIONS) and len(kept) == len(set(kept))
    assert list(kept) == [a for a in dict.fromkeys(x for x in given_actions if isinstance(x, str)) if a in kept]
    assert set(kept) == {a for a in given_actions if isinstance(a, str) and a in GUARDRAIL_ACTIONS}


def test_every_guardrail_action_is_explained_in_words() -> None:
    assert set(GUARDRAIL_NOTES) == set(GUARDRAIL_ACTIONS)
    assert guardrail_notes(("placed_by_model", "seed_normalized")) == [
        GUARDRAIL_NOTES["placed_by_model"], GUARDRAIL_NOTES["seed_normalized"]
    ]


def test_finished_prompts_are_kept_per_run_and_bounded() -> None:
    first = PromptRecord("p-1", "one", "ana", None, 1000.0, route="default")
    again = PromptRecord("p-1", "one", "ana", None, 2000.0, route="default")  # the owner submitted the id again
    finished = FinishedPrompts(max_entries=2)

    finished.keep(first, Outcome("done", 1.0))
    assert finished.get(first) == Outcome("done", 1.0) and finished.get(again) is None
    finished.keep(again, Outcome("failed"))
    finished.keep(PromptRecord("p-2", "two", None, None, 3000.0), Outcome("done"))

    assert finished.get(first) is None  # the oldest went first
    assert finished.get(again) == Outcome("failed")
