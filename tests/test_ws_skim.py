"""A backend's progress messages are known by their opening, unread (datapath/aio/backend_socket.py's
skimmed_kind): never a type json.loads would not give, whatever text follows the opening."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.datapath.aio.backend_socket import skimmed_kind


def _skimmed_kind(text: str) -> str | None:
    return skimmed_kind(text.encode("utf-8"))

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def test_progress_messages_as_comfyui_writes_them_are_skimmed() -> None:
    progress = json.dumps({"type": "progress", "data": {"value": 3, "max": 20, "prompt_id": "p", "node": "3"}})
    state = json.dumps({"type": "progress_state", "data": {"prompt_id": "p", "nodes": {"3": {"value": 1}}}})
    assert _skimmed_kind(progress) == "progress"
    assert _skimmed_kind(state) == "progress_state"


def test_other_messages_and_lookalikes_are_read() -> None:
    for text in (
        json.dumps({"type": "executed", "data": {}}),
        json.dumps({"type": "progress_x", "data": {}}),
        '{"type": "progress", "data": {}, "type": "executed"}',  # json.loads keeps the last
        '{"type": "progress", "data": {}, "\\u0074ype": "executed"}',  # the same key, escaped
        '{"type":"progress","data":{}}',  # not ComfyUI's separators: read, not guessed
        '{"type": "progress", "data": {"node": "\u00e9"}}',  # not ASCII: read (and checked as UTF-8)
        json.dumps({"data": {}, "type": "progress"}),
    ):
        assert _skimmed_kind(text) is None, text


@given(st.sampled_from(["progress", "progress_state"]), JSON_VALUES)
def test_a_skimmed_message_has_the_type_json_reads(kind: str, data: object) -> None:
    text = json.dumps({"type": kind, "data": data})
    skimmed = _skimmed_kind(text)
    if skimmed is not None:
        assert json.loads(text)["type"] == skimmed


@given(st.sampled_from(['{"type": "progress", ', '{"type": "progress_state", ']), st.text(max_size=60))
def test_whatever_follows_the_opening_a_skim_never_contradicts_json(opening: str, rest: str) -> None:
    text = opening + rest
    skimmed = _skimmed_kind(text)
    try:
        message = json.loads(text)
    except ValueError:
        return  # not JSON: relayed unread either way
    if skimmed is not None:
        assert message["type"] == skimmed


@given(st.sampled_from(["progress", "progress_state"]), st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3))
def test_a_second_type_member_anywhere_means_reading_it(kind: str, extra: dict[str, object]) -> None:
    text = json.dumps({"type": kind, "data": {**extra, "type": "executed"}})
    assert _skimmed_kind(text) is None
