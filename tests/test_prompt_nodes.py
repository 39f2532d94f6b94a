"""The guardrails' reading of a POST /prompt body: nodes read as json.loads reads them, values found at their exact
place in the bytes, and new values spliced in with every other byte kept (hypothesis over bodies and spellings)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.json_codec import integer_value, string_value
from gateway.pipeline.prompt_nodes import (
    NotWalked,
    read_nodes,
    splice,
    value_spans,
)


# No lone surrogates: json writes them, but they are not UTF-8 (the walk decodes the body as UTF-8).
def texts(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(blacklist_categories=("Cs",)), max_size=max_size)


scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    texts(12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
)
values = st.one_of(scalars, st.tuples(texts(3), st.integers(0, 9)).map(list))
names = texts(8)
nodes = st.dictionaries(
    names,
    st.fixed_dictionaries(
        {"class_type": texts(10), "inputs": st.dictionaries(names, values, max_size=5)},
        optional={"_meta": st.dictionaries(names, scalars, max_size=2)},
    ),
    max_size=5,
)
bodies = st.fixed_dictionaries(
    {"prompt": nodes}, optional={"client_id": texts(6), "extra_data": st.dictionaries(names, scalars)}
)
spellings = st.sampled_from(
    [
        {},
        {"indent": 2},
        {"separators": (",", ":")},
        {"ensure_ascii": False},
        {"indent": "\t", "ensure_ascii": False},
    ]
)


def dump(payload: Any, spelling: dict[str, Any]) -> bytes:
    return json.dumps(payload, **spelling).encode()


@settings(max_examples=300, deadline=None)
@given(bodies, spellings, st.data())
def test_values_are_found_where_they_are_and_spliced_with_every_other_byte_kept(
    payload: dict[str, Any], spelling: dict[str, Any], data: st.DataObject
) -> None:
    body = dump(payload, spelling)
    read = read_nodes(body)
    assert read is not None
    assert {node_id: node.class_type for node_id, node in read.items()} == {
        node_id: node["class_type"] for node_id, node in payload["prompt"].items()
    }
    targets = [(node_id, name) for node_id, node in payload["prompt"].items() for name in node["inputs"]]
    chosen = data.draw(st.lists(st.sampled_from(targets), unique=True) if targets else st.just([]))
    wanted: dict[str, list[str]] = {}
    for node_id, name in chosen:
        wanted.setdefault(node_id, []).append(name)
    spans = value_spans(body, wanted)
    assert set(spans) == set(chosen)
    for (node_id, name), (start, end) in spans.items():
        assert json.loads(body[start:end]) == payload["prompt"][node_id]["inputs"][name]
    new = {spans[key]: json.dumps(f"new-{n}").encode() for n, key in enumerate(chosen)}
    changed = splice(body, new)
    expected = json.loads(body)
    for n, (node_id, name) in enumerate(chosen):
        expected["prompt"][node_id]["inputs"][name] = f"new-{n}"
    assert json.loads(changed) == expected
    rebuilt, position = b"", 0
    for start, end in sorted(new):
        rebuilt += body[position:start] + new[(start, end)]
        position = end
    assert rebuilt + body[position:] == changed  # nothing but the spans changed


@settings(max_examples=100, deadline=None)
@given(nodes, st.data())
def test_a_node_written_twice_alike_is_found_by_the_walk(prompt: dict[str, Any], data: st.DataObject) -> None:
    twin = {"class_type": "K", "inputs": {"seed": -1, "text": "é"}}
    body = json.dumps({"prompt": {**prompt, "a": twin, "b": twin}}, ensure_ascii=False).encode()
    node_id = data.draw(st.sampled_from(["a", "b"]))
    ((start, end),) = value_spans(body, {node_id: ["seed"]}).values()
    changed = json.loads(splice(body, {(start, end): b"5"}))
    assert changed["prompt"][node_id]["inputs"]["seed"] == 5
    assert changed["prompt"]["b" if node_id == "a" else "a"]["inputs"]["seed"] == -1


def test_a_repeated_key_counts_as_json_reads_it() -> None:
    text = (
        '{"prompt": {"3": {"class_type": "A", "inputs": {"seed": 1}}}, '
        '"prompt": {"3": {"inputs": {"seed": 2, "seed": 3}, "class_type": "B"}, "3": '
        '{"class_type": "C", "inputs": {"seed": 4}, "inputs": {"seed": 5}}}}'
    )
    read = read_nodes(text.encode())
    assert read is not None and read["3"].class_type == "C"
    assert json.loads(text)["prompt"]["3"]["inputs"]["seed"] == 5
    for body in (text.encode(), text.replace("A", "é").encode()):
        ((start, end),) = value_spans(body, {"3": ["seed"]}).values()
        assert body[start:end] == b"5"


def test_exact_integers_strings_and_what_they_are_not() -> None:
    read = read_nodes(
        b'{"prompt": {"1": {"class_type": "K", "inputs": {"a": -1, "b": 18446744073709551615, "c": -1.0, '
        b'"d": true, "e": ["4", 0], "f": "x.safetensors", "g": "\\u00e9"}}}}'
    )
    assert read is not None
    inputs = read["1"].inputs
    assert integer_value(inputs["a"]) == -1
    assert integer_value(inputs["b"]) == 2**64 - 1
    assert [integer_value(inputs[k]) for k in "cdef"] == [None] * 4
    assert string_value(inputs["f"]) == "x.safetensors" and string_value(inputs["g"]) == "é"
    assert string_value(inputs["e"]) is None and string_value(inputs["a"]) is None


def test_bodies_it_does_not_read() -> None:
    for body in (b"", b"[]", b'{"prompt": []}', b'{"prompt": {"1": {"inputs": {}}}}', b'{"prompt": {"1": 3}}',
                 b'{"prompt": {"1": {"class_type": 7}}}', b'{"prompt": {"1": {"class_type": "A", "inputs": []}}}',
                 b"{\"prompt\": {}, \"x\": NaN}", b"\xef\xbb\xbf{}", b"\xff"):
        assert read_nodes(body) is None, body


@given(st.binary(max_size=40) | st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_walking_junk_raises_only_not_walked(body: bytes) -> None:
    try:
        value_spans(body, {"1": ["seed"]})
    except NotWalked:
        pass
