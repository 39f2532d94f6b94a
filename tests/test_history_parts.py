"""HistoryParts: a backend's /history reply ready for merging is what a whole parse of that reply gives, whether
it was parsed whole, kept from before or grown by entries added at its end; and what is kept stays bounded."""

from __future__ import annotations

import gc
import json
import tracemalloc
from typing import Any

import pytest

from gateway.core.json_codec import dumps_raw
from gateway.merge.aggregate import NO_TIMESTAMP, HistoryItem, entry_timestamp
from gateway.merge.history_parts import HistoryParts, ready_answer
from gateway.outputs.refs import prefix_history

MIB = 1024 * 1024


def entry(prompt_id: str, timestamp: int | None, seed: int = 1) -> dict[str, Any]:
    messages = [] if timestamp is None else [["execution_start", {"prompt_id": prompt_id, "timestamp": timestamp}]]
    return {
        "prompt": [1, prompt_id, {"3": {"class_type": "KSampler", "inputs": {"seed": seed}}}, {}, ["9"]],
        "outputs": {"9": {"images": [{"filename": f"{prompt_id}.png", "subfolder": "day", "type": "output"}]}},
        "status": {"status_str": "success", "completed": True, "messages": messages},
    }


def reply(*entries: tuple[str, dict[str, Any]]) -> bytes:
    return json.dumps(dict(entries)).encode()  # as ComfyUI writes it, with json's spaces


def readable(items: Any) -> list[tuple[str, str, Any, float]]:
    """Items with each serialised entry read back (json, which reads every integer exactly): what a merged
    answer would hold for them."""
    return [(i.backend, i.prompt_id, json.loads(dumps_raw({"e": i.entry.ready()}))["e"], i.timestamp) for i in items]


def parsed_whole(backend: str, body: bytes) -> list[tuple[str, str, Any, float]]:
    """What json.loads reads the reply as, its refs prefixed: what the items must give in any case."""
    prefixed = prefix_history(json.loads(body), backend)
    if not isinstance(prefixed, dict):
        return []
    items, carried = [], NO_TIMESTAMP
    for prompt_id, value in prefixed.items():
        stamp = entry_timestamp(value)
        carried = carried if stamp is None else stamp  # an entry without a time takes the one before it
        items.append((backend, prompt_id, value, carried))
    return items


def test_entries_are_prefixed_timed_and_serialised_once() -> None:
    body = reply(("a", entry("a", 100, seed=2**64 + 1)), ("b", entry("b", None)))
    items = HistoryParts(MIB).items("alpha", "/history", body)

    assert all(isinstance(item, HistoryItem) for item in items)
    got = readable(items)
    assert [(backend, prompt_id, stamp) for backend, prompt_id, _, stamp in got] == [
        ("alpha", "a", 100.0), ("alpha", "b", 100.0)]  # b has no time of its own: it takes a's
    assert got[0][2]["outputs"]["9"]["images"][0]["subfolder"] == "alpha/day"
    assert got[0][2]["prompt"][2]["3"]["inputs"]["seed"] == 2**64 + 1  # beyond 64 bits, unchanged


def test_an_entry_is_made_ready_once_and_only_when_an_answer_holds_it() -> None:
    body = reply(("a", entry("a", 100)), ("b", entry("b", 200)))
    items = HistoryParts(MIB).items("alpha", "/history", body)
    first = items[1].entry.ready()

    assert items[1].entry.ready() is first  # serialised once
    answer = ready_answer({"b": items[1].entry})
    assert answer == {"b": first}
    assert json.loads(dumps_raw(answer))["b"]["outputs"]["9"]["images"][0]["subfolder"] == "alpha/day"


def test_the_same_reply_is_not_parsed_again() -> None:
    parts = HistoryParts(MIB)
    body = reply(("a", entry("a", 100)))
    first = parts.items("alpha", "/history", body)

    assert parts.items("alpha", "/history", bytes(bytearray(body))) is first  # equal bytes, another object
    assert parts.items("beta", "/history", body) is not first  # kept per backend: refs name their backend
    assert parts.items("alpha", "/history?max_items=1", body) is not first  # and per path


@pytest.mark.parametrize(
    "added",
    [
        [("c", entry("c", 300))],
        [("c", entry("c", None)), ("d", entry("d", 50))],  # c takes b's time; d steps back in time
        [("c", entry("c", 300, seed=2**70))],
    ],
    ids=["one", "two-untimed-first", "big-seed"],
)
def test_a_grown_reply_parses_only_what_was_added(added: list[tuple[str, dict[str, Any]]]) -> None:
    parts = HistoryParts(MIB)
    old = [("a", entry("a", 100)), ("b", entry("b", 200))]
    kept = parts.items("alpha", "/history", reply(*old))
    grown = reply(*old, *added)

    items = parts.items("alpha", "/history", grown)

    assert all(new is old_item for new, old_item in zip(items, kept, strict=False))  # the kept items, not parsed again
    assert readable(items) == parsed_whole("alpha", grown)


@pytest.mark.parametrize(
    "new",
    [
        reply(("b", entry("b", 200)), ("c", entry("c", 300))),  # the oldest dropped: ComfyUI at its maximum
        reply(("a", entry("a", 100))),  # an entry deleted
        reply(("a", entry("a", 100)), ("b", entry("b", 200)), ("a", entry("a", 999))),  # a key again: json's way
        b'{"a": 1, "b": 2, "c": 3}',  # entries that are not entries
        b"{}",
        b"[]",
        reply(("a", entry("a", 100)), ("b", entry("b", 200))).replace(b", ", b","),  # the same, written otherwise
    ],
    ids=["oldest-dropped", "deleted", "repeated-key", "not-entries", "empty", "a-list", "respaced"],
)
def test_any_other_change_is_parsed_whole(new: bytes) -> None:
    parts = HistoryParts(MIB)
    parts.items("alpha", "/history", reply(("a", entry("a", 100)), ("b", entry("b", 200))))

    assert readable(parts.items("alpha", "/history", new)) == parsed_whole("alpha", new)


@pytest.mark.parametrize(
    "body",
    [
        reply(("a", {**entry("a", 100), "meta": {"9": {"node_id": "9"}}, "later_member": [1.5e300, None, True]})),
        reply(("a", {**entry("a", 100), "outputs": {"9": {"images": [{"filename": "x.png", "type": "output"}],
                                                          "counts": [2**64, -(2**70), 0.1]}}})),
        json.dumps({"é": entry("é", 100), "\ud800": entry("\ud800", 200)}, ensure_ascii=False).encode(
            "utf-8", "surrogatepass"
        ),
        reply(("\ud800", entry("x", 100)), ("ü", entry("ü", 200))),  # escaped by json: one lone surrogate
        reply(("a", entry("a", 100))).replace(b'"filename"', b'"file\\u006eame"'),  # a key written with an escape
        reply(("a", {**entry("a", 100), "outputs": None}), ("b", {**entry("b", 200), "outputs": [1]})),
        reply(("a", {"status": {"messages": [["execution_start", {"timestamp": 2**70}]]}}), ("b", {})),
        reply(("a", entry("a", 100))).replace(b"[", b"[ \n\t"),
        b'{"a": {"prompt": [1], "prompt": [2], "status": {"messages": []}}}',  # a member again: the last wins
        b'{"a": {"x": NaN}}',
    ],
    ids=["unknown-members", "numbers-in-outputs", "utf8-and-surrogate", "escaped-keys", "escaped-filename",
         "odd-outputs", "big-timestamp", "whitespace", "repeated-member", "nan"],
)
def test_replies_read_as_json_reads_them(body: bytes) -> None:
    parts = HistoryParts(MIB)
    items = parts.items("alpha", "/history", body)
    got, expected = readable(items), parsed_whole("alpha", body)
    if body.endswith(b"NaN}}"):
        assert json.dumps(got) == json.dumps(expected).replace("NaN", "null")  # json writes NaN, not JSON: null
    else:
        assert got == expected
    answer = json.loads(dumps_raw(ready_answer({item.prompt_id: item.entry for item in items})))
    assert answer == {prompt_id: entry for _, prompt_id, entry, _ in got}


def test_a_history_can_grow_from_empty() -> None:
    parts = HistoryParts(MIB)
    parts.items("alpha", "/history", b"{}")
    grown = reply(("a", entry("a", 100)))

    assert readable(parts.items("alpha", "/history", grown)) == parsed_whole("alpha", grown)


@pytest.mark.parametrize("broken", [b'{"a": 1', b"<html>bad gateway</html>", b"\xff\xfe"],
                         ids=["cut-short", "html", "not-utf8"])
def test_a_reply_that_is_not_json_raises_and_leaves_what_was_kept(broken: bytes) -> None:
    parts = HistoryParts(MIB)
    good = reply(("a", entry("a", 100)))
    kept = parts.items("alpha", "/history", good)
    # A body that starts like the kept one and then breaks must not pass for a grown one either.
    for body in (broken, good[:-1] + b', "b": ' + broken + b"}"):
        with pytest.raises(ValueError):
            parts.items("alpha", "/history", body)
    assert parts.items("alpha", "/history", good) is kept


def test_kept_replies_stay_under_the_bound_least_recently_used_out_first() -> None:
    one = reply(*[(f"p{i}", entry(f"p{i}", i)) for i in range(20)])
    probe = HistoryParts(MIB)
    probe.items("alpha", "/history", one)
    size = probe.size_bytes
    assert size > 2 * len(one)  # the reply and its entries are both counted

    parts = HistoryParts(2 * size)
    first = parts.items("alpha", "/history", one)
    parts.items("beta", "/history", one)
    assert parts.items("alpha", "/history", one) is first  # used again: now the most recent
    parts.items("gamma", "/history", one)  # over the bound: beta, the least recently used, goes

    assert parts.size_bytes == 2 * size
    assert parts.items("alpha", "/history", one) is first
    assert parts.size_bytes <= 2 * size


def test_nothing_is_kept_when_it_alone_is_larger_than_the_bound() -> None:
    parts = HistoryParts(100)
    body = reply(("a", entry("a", 100)))
    first = parts.items("alpha", "/history", body)

    assert parts.size_bytes == 0
    assert parts.items("alpha", "/history", body) is not first
    assert readable(first) == parsed_whole("alpha", body)


@pytest.mark.parametrize("how", ["read-as-text", "grown", "read-by-json"])
def test_what_is_kept_is_counted_at_least_as_what_it_takes_and_not_twice_over(how: str) -> None:
    entries = [(f"p{i}", entry(f"p{i}", i, seed=i)) for i in range(400)]
    if how == "read-by-json":
        entries[0] = ("p0", {**entry("p0", 0), "meta": {"x": float("nan")}})  # NaN: msgspec leaves it to json
    parts = HistoryParts(1 << 30)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        if how == "grown":
            parts.items("alpha", "/history", reply(*entries[:200]))
        items = parts.items("alpha", "/history", reply(*entries))
        ready_answer({item.prompt_id: item.entry for item in items})  # every entry made ready: the most kept
        del items
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used <= parts.size_bytes <= 2 * used
