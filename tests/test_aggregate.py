"""Merged /history, /queue and /prompt answers (gateway/merge/aggregate.py; /history through
gateway/merge/replies.merge_replies, as the product merges it), on recorded ComfyUI 0.3.64 bodies."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from gateway.merge.aggregate import (
    backend_history_query,
    entry_timestamp,
    merge_prompt_info,
    merge_queue,
    page_like_comfyui,
    parse_history_paging,
)
from gateway.merge.history_parts import HistoryParts
from gateway.merge.replies import merge_replies
from gateway.outputs.refs import prefix_history

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"


def load_transcript(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def history_exchange(label_start: str) -> dict[str, Any]:
    exchanges = load_transcript("03_history_get.json")["exchanges"]
    return next(e for e in exchanges if e["label"].startswith(label_start))


def recorded_history() -> dict[str, Any]:
    return history_exchange("all history")["response"]["body"]["json"]


def comfyui_get_history(history: dict[str, Any], max_items: int | None, offset: int) -> dict[str, Any]:
    """ComfyUI 0.3.64 `PromptQueue.get_history(prompt_id=None, max_items, offset)`, transcribed as the oracle."""
    out = {}
    i = 0
    if offset < 0 and max_items is not None:
        offset = len(history) - max_items
    for k in history:
        if i >= offset:
            out[k] = history[k]
            if max_items is not None and len(out) >= max_items:
                break
        i += 1
    return out


def entry(prompt_id: str, *stamps: int | None, number: int = 0) -> dict[str, Any]:
    messages = [["execution_start" if i == 0 else "execution_success", {"prompt_id": prompt_id, "timestamp": s}]
                for i, s in enumerate(stamps) if s is not None]
    return {
        "prompt": [number, prompt_id, {}, {}, []],
        "outputs": {"9": {"images": [{"filename": f"{prompt_id}.png", "subfolder": "", "type": "output"}]}},
        "status": {"status_str": "success", "completed": True, "messages": messages},
        "meta": {},
    }


def body(*entries: dict[str, Any]) -> dict[str, Any]:
    return {e["prompt"][1]: e for e in entries}


def merged_history(
    parts: list[tuple[str, Any]], max_items: int | None, offset: int | None, kept: HistoryParts | None = None
) -> dict[str, Any]:
    """The merged GET /history answer, as the product makes it: every `(backend, body)` part sent as the
    JSON reply bytes ComfyUI writes, merged by merge_replies, its body read back."""
    replies = [(backend, json.dumps(b).encode()) for backend, b in parts]
    merged = merge_replies(HistoryParts(0) if kept is None else kept, "/history", "/history", replies,
                           max_items, offset)
    assert merged.answered == tuple(backend for backend, _ in parts)
    assert merged.not_json == ()
    return json.loads(merged.body)


def subfolders(merged: dict[str, Any]) -> list[tuple[str, str]]:
    """(prompt id, the subfolder of its entry's ref): which backend each merged entry came from."""
    return [(prompt_id, e["outputs"]["9"]["images"][0]["subfolder"]) for prompt_id, e in merged.items()]


# --- paging exactly like ComfyUI ---------------------------------------------------------------------------

@pytest.mark.parametrize("length", range(6))
def test_page_like_comfyui_matches_comfyui_for_every_combination(length: int) -> None:
    history = {f"p{i}": i for i in range(length)}
    for max_items, offset in itertools.product([None, *range(-3, 9)], [None, *range(-3, 9)]):
        expected = comfyui_get_history(history, max_items, -1 if offset is None else offset)
        got = page_like_comfyui(list(history), max_items, offset)
        assert list(got) == list(expected), (max_items, offset)


@pytest.mark.parametrize(
    ("label", "max_items", "offset"),
    [("all history", None, None), ("max_items=1", 1, None), ("max_items=2&offset=1", 2, 1)],
    ids=["all", "newest-one", "two-from-offset-one"],
)
def test_single_backend_merge_reproduces_recorded_paging(label: str, max_items: int | None, offset: int | None) -> None:
    exchange = history_exchange(label)
    query = exchange["request"].get("query") or {}
    assert parse_history_paging(query) == (max_items, offset)
    merged = merged_history([("comfyui", recorded_history())], max_items, offset)
    expected = prefix_history(exchange["response"]["body"]["json"], "comfyui")
    assert list(merged) == list(expected)
    assert merged == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [("", (None, None)), ("max_items=5", (5, None)), ("offset=3", (None, 3)), ("max_items=%2B5&offset=-1", (5, -1)),
     ("max_items=+5", (5, None)), ("max_items=0&offset=0", (0, 0)), ("max_items=1&max_items=9", (1, None))],
    ids=["none", "max-items", "offset", "explicit-plus-and-negative", "space-from-plus", "zeros", "first-wins"],
)
def test_parse_history_paging(query: str, expected: tuple[int | None, int | None]) -> None:
    assert parse_history_paging(URL("/history?" + query).query) == expected


def test_parse_history_paging_bad_param_recorded() -> None:
    """ComfyUI answers 500 "Server got itself in trouble" for max_items=abc; the gateway gets a clear error."""
    recorded = load_transcript("03_history_bad_param.json")
    assert recorded["response"]["status"] == 500
    with pytest.raises(ValueError, match="max_items must be an integer, got 'abc'"):
        parse_history_paging(recorded["request"]["query"])


@pytest.mark.parametrize(
    "query",
    ["max_items=", "offset=x", "max_items=1.5", "offset=1e3", "max_items=" + "9" * 5000],
    ids=["empty", "word", "float", "exponent", "too-many-digits"],
)
def test_parse_history_paging_rejects(query: str) -> None:
    with pytest.raises(ValueError, match="must be an integer"):
        parse_history_paging(URL("/history?" + query).query)


# --- timestamps and order ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (entry("a", 10, 20), 10.0),
        (
            {"status": {"messages": [["execution_cached", {"timestamp": 7}], ["execution_start", {"timestamp": 9}]]}},
            9.0,
        ),
        (
            {"status": {"messages": [["execution_cached", {"timestamp": 7}], ["execution_success", {"timestamp": 9}]]}},
            7.0,
        ),
        ({"status": {"messages": [["execution_start", {"prompt_id": "a"}], ["x", {"timestamp": 5.5}]]}}, 5.5),
        ({"status": {"messages": [["execution_start", {"timestamp": True}]]}}, None),
        ({"status": {"messages": [["execution_start", {"timestamp": "10"}]]}}, None),
        ({"status": {"messages": [["execution_start", {"timestamp": float("nan")}]]}}, None),
        ({"status": {"messages": [["execution_start"], "x", None, ["a", "b", "c"]]}}, None),
        ({"status": {"messages": []}}, None),
        ({"status": {"messages": None}}, None),
        ({"status": None}, None),
        ({}, None),
        (None, None),
    ],
    ids=["start", "start-not-first", "first-without-start", "start-without-stamp", "bool", "string", "nan",
         "malformed-messages", "no-messages", "messages-none", "status-none", "no-status", "entry-none"],
)
def test_entry_timestamp(value: Any, expected: float | None) -> None:
    assert entry_timestamp(value) == expected


def test_recorded_history_is_in_time_order() -> None:
    stamps = [entry_timestamp(e) for e in recorded_history().values()]
    assert None not in stamps and stamps == sorted(stamps)


@pytest.mark.parametrize(
    "split",
    [lambda i: i % 2, lambda i: int(i >= 17), lambda i: int(i % 5 == 0), lambda i: i % 3],
    ids=["alternate", "halves", "every-fifth", "three-backends"],
)
def test_merge_of_a_split_history_restores_time_order(split: Any) -> None:
    full = recorded_history()
    names = ["comfyui", "kerniegen", "gpu-2"]
    parts_bodies: dict[str, dict[str, Any]] = {}
    owner: dict[str, str] = {}
    for index, (prompt_id, value) in enumerate(full.items()):
        backend = names[split(index)]
        parts_bodies.setdefault(backend, {})[prompt_id] = copy.deepcopy(value)
        owner[prompt_id] = backend
    parts = list(reversed(list(parts_bodies.items())))  # parts order must not matter when times differ
    merged = merged_history(parts, None, None)
    assert list(merged) == list(full)
    for prompt_id, value in merged.items():
        assert value == prefix_history({prompt_id: copy.deepcopy(full[prompt_id])}, owner[prompt_id])[prompt_id]
        assert len(value["prompt"]) == 5


def test_merge_interleaves_by_time_and_pages_the_merged_list() -> None:
    a = body(entry("a1", 100), entry("a2", 300), entry("a3", 500))
    b = body(entry("b1", 200), entry("b2", 400))
    parts = [("comfyui", a), ("kerniegen", b)]
    assert list(merged_history(parts, None, None)) == ["a1", "b1", "a2", "b2", "a3"]
    assert list(merged_history(parts, 2, None)) == ["b2", "a3"]
    assert list(merged_history(parts, 2, 1)) == ["b1", "a2"]
    assert list(merged_history(parts, None, 3)) == ["b2", "a3"]
    assert list(merged_history(parts, 0, None)) == []
    assert list(merged_history(parts, 10, 10)) == []


def test_merge_rewrites_each_part_with_its_own_backend() -> None:
    merged = merged_history([("comfyui", body(entry("a", 1))), ("kerniegen", body(entry("b", 2)))], None, None)
    assert merged["a"]["outputs"]["9"]["images"][0]["subfolder"] == "comfyui"
    assert merged["b"]["outputs"]["9"]["images"][0]["subfolder"] == "kerniegen"


def test_equal_times_keep_parts_order() -> None:
    parts = [("comfyui", body(entry("a", 5))), ("kerniegen", body(entry("b", 5)))]
    assert list(merged_history(parts, None, None)) == ["a", "b"]
    parts = [("kerniegen", body(entry("b", 5))), ("comfyui", body(entry("a", 5)))]
    assert list(merged_history(parts, None, None)) == ["b", "a"]


def test_a_backends_own_order_is_never_changed() -> None:
    # A clock that stepped back: ComfyUI's own order (insertion) wins over the timestamps.
    parts = [("comfyui", body(entry("a1", 300), entry("a2", 100))), ("kerniegen", body(entry("b1", 200)))]
    assert list(merged_history(parts, None, None)) == ["b1", "a1", "a2"]


@pytest.mark.parametrize(
    ("a_stamps", "b_stamps", "expected"),
    [
        ([None, 100, None, 300], [50, 200], ["a0", "b0", "a1", "a2", "b1", "a3"]),
        ([None, None], [50], ["a0", "a1", "b0"]),
        ([None], [None], ["a0", "b0"]),
        ([100, None], [100, None], ["a0", "a1", "b0", "b1"]),
        ([400, None], [300], ["b0", "a0", "a1"]),
    ],
    ids=["carried-from-predecessor", "leading-without-stamps-first", "none-anywhere", "ties-carry", "trailing"],
)
def test_entries_without_timestamps_stay_after_their_predecessor(
    a_stamps: list[int | None], b_stamps: list[int | None], expected: list[str]
) -> None:
    a = body(*[entry(f"a{i}", s) for i, s in enumerate(a_stamps)])
    b = body(*[entry(f"b{i}", s) for i, s in enumerate(b_stamps)])
    assert list(merged_history([("comfyui", a), ("kerniegen", b)], None, None)) == expected


def test_duplicate_prompt_id_keeps_the_most_recent_entry() -> None:
    old = entry("same", 100)
    new = entry("same", 300)
    parts = [("comfyui", body(new, entry("a", 400))), ("kerniegen", body(entry("b", 50), old, entry("c", 200)))]
    merged = merged_history(parts, None, None)
    assert subfolders(merged) == [("b", "kerniegen"), ("c", "kerniegen"), ("same", "comfyui"), ("a", "comfyui")]
    assert list(merged_history(parts, 2, None)) == ["same", "a"]


def test_duplicate_prompt_id_with_equal_times_keeps_the_later_part() -> None:
    parts = [("comfyui", body(entry("same", 100))), ("kerniegen", body(entry("same", 100)))]
    assert merged_history(parts, None, None)["same"]["outputs"]["9"]["images"][0]["subfolder"] == "kerniegen"


@pytest.mark.parametrize(
    "parts",
    [[("comfyui", {})], [("comfyui", None)], [("comfyui", [])], [("comfyui", {}), ("kerniegen", {})]],
    ids=["empty", "none-body", "list-body", "two-empty"],
)
def test_merge_history_of_nothing(parts: list[tuple[str, Any]]) -> None:
    assert merged_history(parts, None, None) == {}
    assert merged_history(parts, 5, 0) == {}


def test_merge_history_of_no_replies_answers_nothing() -> None:
    for max_items, offset in [(None, None), (5, 0)]:
        merged = merge_replies(HistoryParts(0), "/history", "/history", [], max_items, offset)
        assert (merged.answered, merged.body, merged.not_json) == ((), b"", ())


# --- the smallest per-backend window ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("max_items", "offset", "expected"),
    [(None, None, {}), (None, 3, {}), (None, -1, {}), (5, None, {"max_items": "5"}), (5, -1, {"max_items": "5"}),
     (0, None, {"max_items": "0"}), (-2, None, {"max_items": "0"}), (5, 0, {"max_items": "5", "offset": "0"}),
     (2, 3, {"max_items": "5", "offset": "0"}), (0, 3, {"max_items": "4", "offset": "0"})],
    ids=["all", "offset-only", "negative-offset-only", "newest", "newest-explicit", "zero", "negative",
         "first-page", "later-page", "zero-from-offset"],
)
def test_backend_history_query(max_items: int | None, offset: int | None, expected: dict[str, str]) -> None:
    assert backend_history_query(max_items, offset) == expected


def test_windowed_backend_answers_give_the_same_merged_page() -> None:
    full = recorded_history()
    split: list[tuple[str, dict[str, Any]]] = [("comfyui", {}), ("kerniegen", {}), ("gpu-2", {})]
    for index, (prompt_id, value) in enumerate(full.items()):
        split[(index * 7) % 3][1][prompt_id] = value
    kept = HistoryParts(4 * 1024 * 1024)  # the whole replies, kept between merges as the product keeps them
    for max_items, offset in itertools.product([None, 0, 1, 2, 5, 40], [None, -1, 0, 1, 4, 33, 40]):
        expected = merged_history(split, max_items, offset, kept)
        query = parse_history_paging(backend_history_query(max_items, offset))
        windowed = [(backend, comfyui_get_history(b, query[0], -1 if query[1] is None else query[1]))
                    for backend, b in split]
        got = merged_history(windowed, max_items, offset)
        assert got == expected and list(got) == list(expected), (max_items, offset)


# --- /queue and /prompt ------------------------------------------------------------------------------------

def recorded_queues() -> list[dict[str, Any]]:
    exchanges = load_transcript("08_queue_busy_interrupt_delete.json")["exchanges"]
    return [e["response"]["body"]["json"] for e in exchanges if e["request"]["path"] == "/queue"
            and e["request"]["method"] == "GET"]


def test_merge_queue_of_recorded_busy_queues() -> None:
    busy, after_delete, *_ = recorded_queues()
    # The same server twice stands in for two backends with the same numbers.
    merged = merge_queue([("comfyui", copy.deepcopy(busy)), ("kerniegen", copy.deepcopy(after_delete))])
    assert merged["queue_running"] == busy["queue_running"] + after_delete["queue_running"]
    assert [(i[0], i[1][:8]) for i in merged["queue_pending"]] == [
        (42, "27c7e565"), (42, "27c7e565"), (43, "3b8cc810"), (44, "380efb8a"), (44, "380efb8a")]
    assert all(len(item) == 5 for item in merged["queue_running"] + merged["queue_pending"])
    assert merged["queue_pending"][0] is not merged["queue_pending"][1]  # first from comfyui, then kerniegen
    assert merged["queue_pending"][0] == busy["queue_pending"][0]


def test_merge_queue_idle_recorded() -> None:
    idle = next(e["response"]["body"]["json"] for e in load_transcript("02_queue_idle.json")["exchanges"]
                if e["request"]["path"] == "/queue")
    assert merge_queue([("comfyui", idle), ("kerniegen", idle)]) == {"queue_running": [], "queue_pending": []}


def item(number: Any, prompt_id: str) -> list[Any]:
    return [number, prompt_id, {}, {"client_id": "c"}, ["9"]]


@pytest.mark.parametrize(
    ("parts", "running", "pending"),
    [
        ([("a", {"queue_running": [item(3, "ra")], "queue_pending": [item(9, "a9"), item(4, "a4")]}),
          ("b", {"queue_running": [item(1, "rb")], "queue_pending": [item(5, "b5"), item(-2, "b-2")]})],
         ["ra", "rb"], ["b-2", "a4", "b5", "a9"]),
        ([("a", {"queue_running": [], "queue_pending": [item(2, "a2")]}),
          ("b", {"queue_running": [], "queue_pending": [item(2, "b2"), item(1.5, "b1.5")]})],
         [], ["b1.5", "a2", "b2"]),
        ([("a", {"queue_running": [], "queue_pending": [item("x", "ax"), item(None, "an"), item(1, "a1")]}),
          ("b", {"queue_running": [], "queue_pending": [item(float("nan"), "bn"), item(True, "bt"), [], "junk"]})],
         [], ["a1", "ax", "an", "bn", "bt", [], "junk"]),
        ([("a", None), ("b", {"queue_running": None}), ("c", {"queue_pending": "x"}),
          ("d", {"queue_running": [item(1, "rd")]})],
         ["rd"], []),
        ([], [], []),
    ],
    ids=["running-concatenated-pending-by-number", "ties-by-parts-order-and-floats", "non-numbers-last-in-order",
         "malformed-parts-skipped", "no-parts"],
)
def test_merge_queue(parts: list[tuple[str, Any]], running: list[str], pending: list[Any]) -> None:
    merged = merge_queue(parts)
    assert [i[1] for i in merged["queue_running"]] == running
    assert [i[1] if isinstance(i, list) and len(i) == 5 else i for i in merged["queue_pending"]] == pending
    assert all(len(i) == 5 for i in merged["queue_running"])


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([("a", {"exec_info": {"queue_remaining": 4}}), ("b", {"exec_info": {"queue_remaining": 1}})], 5),
        ([("a", {"exec_info": {"queue_remaining": 0}})], 0),
        ([], 0),
        ([("a", {"exec_info": {"queue_remaining": 2}}), ("b", {}), ("c", None), ("d", {"exec_info": None}),
          ("e", {"exec_info": {"queue_remaining": "3"}}), ("f", {"exec_info": {"queue_remaining": True}})], 2),
    ],
    ids=["sum", "one-idle", "no-parts", "malformed-parts-add-nothing"],
)
def test_merge_prompt_info(parts: list[tuple[str, Any]], expected: int) -> None:
    assert merge_prompt_info(parts) == {"exec_info": {"queue_remaining": expected}}


def test_merge_prompt_info_recorded_busy() -> None:
    busy = next(e["response"]["body"]["json"]
                for e in load_transcript("08_queue_busy_interrupt_delete.json")["exchanges"]
                if e["request"]["path"] == "/prompt" and e["request"]["method"] == "GET")
    idle = next(e["response"]["body"]["json"] for e in load_transcript("02_queue_idle.json")["exchanges"]
                if e["request"]["path"] == "/prompt")
    assert merge_prompt_info([("comfyui", busy), ("kerniegen", idle)]) == {"exec_info": {"queue_remaining": 4}}
