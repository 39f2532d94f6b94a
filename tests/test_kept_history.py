"""The /history rewrite kept per backend and path (outputs/kept_history.py): every answer is exactly what
refs.prefixed_history_text makes of the reply in hand, whatever polls came before, within its byte bound."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.outputs.kept_history import KeptHistory
from gateway.outputs.refs import prefixed_history_text


def reply(filename: str, subfolder: str = "", extra: str = "") -> bytes:
    entry = {"prompt": [1, "p", {"3": {"inputs": {"text": extra}}}, {}, []],
             "outputs": {"9": {"images": [{"filename": filename, "subfolder": subfolder, "type": "output"}]}}}
    return json.dumps({"p": entry}).encode()


REPLIES = [reply("a.png"), reply("a.png", "x"), reply("b.png", "x/y"), reply("c.png", extra="é" * 50)]
POLL = st.tuples(st.sampled_from(["kerniegen", "comfyui"]), st.sampled_from(["/history/p", "/history"]),
                 st.sampled_from(REPLIES))


@given(st.lists(POLL, max_size=40), st.sampled_from([0, 1500, 4000, 1 << 20]))
@settings(max_examples=200, deadline=None)
def test_every_answer_is_the_rewrite_of_the_reply_in_hand(polls: list[tuple[str, str, bytes]], max_bytes: int) -> None:
    kept = KeptHistory(max_bytes)
    for backend, path, body in polls:
        assert kept.prefixed(backend, path, body) == prefixed_history_text(body, backend)
        assert 0 <= kept.size_bytes <= max_bytes
    if max_bytes == 0:
        assert len(kept) == 0


def test_a_reply_that_comes_again_is_not_read_again_and_a_changed_one_is() -> None:
    kept = KeptHistory(1 << 20)
    first = kept.prefixed("comfyui", "/history/p", REPLIES[1])
    assert kept.prefixed("comfyui", "/history/p", bytes(REPLIES[1])) is first  # equal bytes, another object
    changed = kept.prefixed("comfyui", "/history/p", REPLIES[2])
    assert changed is not first and json.loads(changed)["p"]["outputs"]["9"]["images"][0]["subfolder"] == "comfyui/x/y"
    assert len(kept) == 1  # one answer per backend and path: the one before it is let go


def test_the_least_recently_polled_goes_first_and_a_large_answer_is_never_kept() -> None:
    probe = KeptHistory(1 << 20)
    probe.prefixed("comfyui", "/history/1", REPLIES[0])
    kept = KeptHistory(probe.size_bytes * 8)  # room for eight, each at most an eighth
    made = {index: kept.prefixed("comfyui", f"/history/{index}", REPLIES[0]) for index in range(1, 9)}
    assert len(kept) == 8 and kept.size_bytes == kept.max_bytes
    assert kept.prefixed("comfyui", "/history/1", REPLIES[0]) is made[1]  # polled again: now the most recent
    kept.prefixed("comfyui", "/history/9", REPLIES[0])  # the oldest, /history/2, makes room
    assert kept.prefixed("comfyui", "/history/1", REPLIES[0]) is made[1]
    assert kept.prefixed("comfyui", "/history/3", REPLIES[0]) is made[3]
    assert kept.prefixed("comfyui", "/history/2", REPLIES[0]) is not made[2]
    large = reply("big.png", extra="x" * kept.max_entry_bytes)
    kept.prefixed("comfyui", "/history/big", large)
    assert kept.prefixed("comfyui", "/history/big", large) is not kept.prefixed("comfyui", "/history/big", large)
    assert len(kept) == 8 and kept.size_bytes <= kept.max_bytes


def test_a_reply_that_is_not_json_raises_and_is_not_kept() -> None:
    kept = KeptHistory(1 << 20)
    with pytest.raises(ValueError):
        kept.prefixed("comfyui", "/history/p", b'{"p": {"outputs": {"filename": ')
    assert len(kept) == 0 and kept.size_bytes == 0
