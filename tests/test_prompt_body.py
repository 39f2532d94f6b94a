"""read_submission answers exactly as json.loads would: the same bodies refused, the same prompt_id kept or
minted (and spliced the same way), the same client_id, for ordinary bodies, hostile ones and random
mutations of both."""

from __future__ import annotations

import json
import os
import random
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.errors import BadPromptBody
from gateway.pipeline.prompt_body import (
    Submission,
    mint_prompt_id,
    parse_json_object,
    read_submission,
    splice_prompt_id,
)
from gateway.pipeline.prompt_nodes import read_nodes
from tests.json_shapes import json_depth


def reference(body: bytes) -> tuple[str, str | None, str | None] | None:
    """What the json.loads reading gives: None if refused, else (kind, prompt_id or None when minted, client_id)."""
    try:
        payload = parse_json_object(body)
    except BadPromptBody:
        return None
    client_id = payload.get("client_id")
    client_id = client_id if isinstance(client_id, str) else None
    given = payload.get("prompt_id")
    if given is not None:
        return ("given", str(given), client_id)
    return ("minted-reserialised" if "prompt_id" in payload or not payload else "minted-spliced", None, client_id)


def check(body: bytes) -> None:
    expected = reference(body)
    if expected is None:
        with pytest.raises(BadPromptBody):
            read_submission(body)
        return
    got = read_submission(body)
    kind, prompt_id, client_id = expected
    assert got.client_id == client_id, body
    if kind == "given":
        assert (got.prompt_id, got.body) == (prompt_id, body), body
    elif kind == "minted-spliced":
        assert got.body == splice_prompt_id(body, got.prompt_id), body
    else:
        assert json.loads(got.body) == {**json.loads(body), "prompt_id": got.prompt_id}, body


PROMPT = {
    "3": {
        "class_type": "KSampler",
        "inputs": {"seed": 18446744073709551615, "text": "é\n\"quoted\"", "n": [1, 2.5, None]},
    }
}

BODIES = [
    json.dumps({"prompt": PROMPT, "client_id": "c1"}).encode(),
    json.dumps({"prompt": PROMPT, "client_id": "c1", "prompt_id": "mine"}).encode(),
    json.dumps({"prompt": PROMPT}, ensure_ascii=False).encode(),
    json.dumps({"prompt": PROMPT, "client_id": 7, "prompt_id": 42}).encode(),  # ids that are not strings
    json.dumps({"prompt": PROMPT, "prompt_id": None}).encode(),
    json.dumps({"prompt": PROMPT, "prompt_id": ""}).encode(),
    json.dumps({"prompt": PROMPT, "client_id": {"a": 1}}).encode(),
    b"{}",
    b" \n{ } \n",
    b'{"prompt_id": "a", "prompt_id": "b"}',  # json.loads keeps the last
    b'{"prompt\\u005fid": "escaped", "x": 1}',  # a key written with an escape
    b'{"client\\u005fid": "escaped", "x": 1}',
    b'{"a": NaN, "prompt_id": "x"}',
    b'{"a": Infinity}',
    b'{"a": 1}\x00',
    b'{"a": 1}\x0c',
    b'\x0b{"a": 1}',
    b'{"a": "x\x01y"}',
    b"\xef\xbb\xbf" + b'{"a": 1}',  # a UTF-8 byte order mark
    '{"a": "é"}'.encode("utf-16"),
    b'{"a": "\xed\xa0\x80"}',  # an encoded surrogate: json.loads decodes with surrogatepass
    b'{"a": "\\ud800", "prompt_id": "\\ud800"}',
    b"[1, 2]",
    b'"text"',
    b"",
    b"not json",
    b'{"a": 1,}',
    b"{'a': 1}",
    b'{"a": 1} {"b": 2}',
    b"[" * 950 + b"]" * 950,
    b'{"a": ' + b"[" * 2000 + b"]" * 2000 + b"}",
    b'{"a": 1e999, "prompt_id": "x"}',
    b'{"prompt": {}, "prompt_id": null}',  # null is no id: a spliced one would come before it and lose
    b'{"prompt": {}, "prompt_id": "\\u00e9t\\u00e9", "client_id": "\\ud83d\\ude00"}',  # escapes, a surrogate pair
    b'{"prompt": {"a": "\xff"}}',  # not UTF-8 below the members read
    b'{"prompt": {"a": "\xc3\xa9"}, "client_id": "\xc3\xa9"}',  # UTF-8 that is not ASCII
    b'{"a": "\\/", "b": "\\"", "c": "\\\\"}',
]


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_same_answers_as_json_loads(body: bytes) -> None:
    check(body)


def test_random_mutations_get_the_same_answers() -> None:
    rng = random.Random(6)
    seeds = [b for b in BODIES if len(b) < 2000]
    alphabet = b'{}[]":,\\ \t\n\x00\x0bu0-eE.+abcprompt_idclient_id\xc3\xa9\xff'
    for _ in range(3000):
        body = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(body) + 1)
            action = rng.random()
            if action < 0.4 and body:
                del body[min(at, len(body) - 1)]
            elif action < 0.8:
                body.insert(at, rng.choice(alphabet))
            else:
                body[at:at] = rng.choice([b'"prompt_id": "z", ', b'"client_id": "k", ', b"\\u0041", b"NaN", b"[]"])
        check(bytes(body))


def test_a_minted_id_is_spliced_in_front_and_the_rest_is_untouched() -> None:
    body = b'  {"prompt": {"1": {"inputs": {"seed": 18446744073709551615}}}, "client_id": "c"}'
    got = read_submission(body)
    assert isinstance(got, Submission) and got.client_id == "c"
    assert got.body == b'  {"prompt_id": "' + got.prompt_id.encode() + b'", ' + body[3:]


def test_minted_prompt_ids_are_random_uuid4_strings_as_uuid_writes_them() -> None:
    minted = [mint_prompt_id() for _ in range(1000)]  # across several 4 KiB reads of os.urandom

    assert len(set(minted)) == len(minted)
    for prompt_id in minted:
        parsed = uuid.UUID(prompt_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, prompt_id)


def test_a_forked_child_mints_other_ids_than_its_parent() -> None:
    mint_prompt_id()  # the pool holds unread random bytes now
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its next id, to the parent, and out without running pytest's teardown
        os.write(write_end, mint_prompt_id().encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    with os.fdopen(read_end) as pipe:
        child_id = pipe.read()
    assert uuid.UUID(child_id).version == 4
    assert child_id != mint_prompt_id()  # the parent's next id, from the same place in its pool


# --- the typed reader: ComfyUI's API format in one pass ----------------------------------------------------------


def read_as_nodes(body: bytes) -> dict[str, tuple[str, dict[str, bytes]]] | None:
    nodes = read_nodes(body)
    return None if nodes is None else {k: (n.class_type, {i: bytes(v) for i, v in n.inputs.items()})
                                       for k, n in nodes.items()}


def api_body(**members: Any) -> bytes:
    node = {"class_type": "KSampler", "inputs": {"seed": -1, "model": ["4", 0], "text": "a [b] {c}"},
            "_meta": {"title": "KSampler"}}
    return json.dumps({"prompt": {"3": node, "4": {"class_type": "CheckpointLoaderSimple", "inputs": {}}},
                       **members}).encode()


def test_a_body_of_comfyui_s_api_format_is_read_once_with_its_nodes() -> None:
    workflow = {"nodes": [{"id": 3, "widgets_values": [[1, [2, {"a": [3]}]]]}], "links": [[1, 4, 0, 3, 0]]}
    body = api_body(client_id="c1", extra_data={"extra_pnginfo": {"workflow": workflow}}, front=False, number=3,
                    partial_execution_targets=["9"])
    got = read_submission(body)
    assert got.nodes is not None and got.client_id == "c1"
    assert {k: (n.class_type, {i: bytes(v) for i, v in n.inputs.items()}) for k, n in got.nodes.items()} == \
        read_as_nodes(body)
    check(body)


@pytest.mark.parametrize("body", [
    api_body(client_id="c", other_member=1),  # a member ComfyUI does not read: the members reader
    b'{"prompt": {"1": {"class_type": "X", "inputs": {}, "is_changed": 1}}}',  # a node member of another kind
    b'{"prompt": {"1": {"inputs": {}}}}',  # no class_type
    b'{"prompt": [], "client_id": "c"}',
    api_body(prompt_id=None),
    api_body(prompt_id=7),
    api_body(number=float("inf")),  # Infinity, which json reads and msgspec does not
])
def test_a_body_of_another_shape_is_read_by_the_next_reader_alike(body: bytes) -> None:
    assert read_submission(body).nodes is None
    check(body)


@pytest.mark.parametrize(("where", "levels_above"), [
    (lambda deep: api_body(extra_data={"a": deep}), 2),
    (lambda deep: api_body(client_id=deep), 1),
    (lambda deep: json.dumps({"prompt": {"1": {"class_type": "X", "inputs": {"v": deep}}}}).encode(), 4),
    (lambda deep: json.dumps({"prompt": {"1": {"class_type": "X", "_meta": deep}}}).encode(), 3),
])
def test_each_piece_the_typed_reader_holds_as_text_is_bounded_by_what_is_left_at_its_level(
    where: Any, levels_above: int
) -> None:
    for depth in range(1, 70):
        deep: Any = "x"
        for _ in range(depth):
            deep = [deep, 1]
        body = where(deep)
        total = json_depth(json.loads(body))
        assert total == max(levels_above + depth, 5 if b"KSampler" in body else 4)
        if total <= 64:
            assert read_submission(body).nodes is not None
        else:
            with pytest.raises(BadPromptBody, match="deeper than 64 levels"):
                read_submission(body)


_TEXT = st.text(alphabet='[]{}"\\ab\n/ué', max_size=6)
_VALUES = st.recursive(_TEXT | st.integers() | st.none() | st.booleans(),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
                       max_leaves=30)
_NODES = st.dictionaries(
    st.text(alphabet="0123456789ab", min_size=1, max_size=3),
    st.fixed_dictionaries({"class_type": _TEXT, "inputs": st.dictionaries(_TEXT, _VALUES, max_size=4)},
                          optional={"_meta": _VALUES}),
    max_size=4,
)
_SUBMISSIONS = st.fixed_dictionaries(
    {"prompt": _NODES},
    optional={"client_id": _TEXT | _VALUES, "prompt_id": _TEXT, "extra_data": _VALUES, "front": st.booleans(),
              "number": st.integers() | st.floats(allow_nan=False, allow_infinity=False),
              "partial_execution_targets": _VALUES},
)


@settings(max_examples=400, deadline=None)
@given(_SUBMISSIONS, st.integers(4, 12), st.booleans())
def test_the_typed_reader_answers_as_json_loads_and_bounds_the_whole_body(
    payload: dict[str, Any], bound: int, ascii_only: bool
) -> None:
    body = json.dumps(payload, ensure_ascii=ascii_only).encode()
    if json_depth(payload) > bound:
        with pytest.raises(BadPromptBody, match=f"deeper than {bound} levels"):
            read_submission(body, bound)
        return
    got = read_submission(body, bound)
    assert got.nodes is not None
    assert {k: (n.class_type, {i: bytes(v) for i, v in n.inputs.items()}) for k, n in got.nodes.items()} == \
        read_as_nodes(body)
    reference_answer = reference(body)
    assert reference_answer is not None
    kind, prompt_id, client_id = reference_answer
    assert got.client_id == client_id
    if kind == "given":
        assert (got.prompt_id, got.body) == (prompt_id, body)
    else:
        assert got.body == splice_prompt_id(body, got.prompt_id)
