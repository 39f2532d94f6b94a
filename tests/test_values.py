"""The per-request values made as plain classes (Forward, Endpoint) keep a value's behaviour: equal by their
fields, unchanged by a copy, readable when printed; a selection source hashes as its text."""

from __future__ import annotations

import pytest

from gateway.core.selection import SOURCE_TEXT, Selection, Source, selected
from gateway.pipeline.classify import Endpoint, Routing, classify
from gateway.pipeline.decision import Forward, with_headers

CHOSEN = Selection("kerniegen", Source.HEADER)
FALLBACK = Selection("comfyui", Source.FALLBACK)


def test_a_forward_is_equal_to_one_made_with_the_same_values_and_to_no_other() -> None:
    one = Forward(CHOSEN, "/history/abc", None, None, True, headers={"Vary": "Origin"})
    same = Forward(CHOSEN, "/history/abc", None, None, True, headers={"Vary": "Origin"})

    assert one == same
    assert one != Forward(CHOSEN, "/history/abc", None, None, False, headers={"Vary": "Origin"})
    assert one != Forward(CHOSEN, "/history/abc", None, None, True)
    assert one.__eq__("not a forward") is NotImplemented


def test_a_forward_made_without_headers_shares_an_empty_mapping_nobody_can_change() -> None:
    plain = Forward(CHOSEN)

    assert dict(plain.headers) == {}
    with pytest.raises(TypeError):
        plain.headers["X-Injected"] = "1"  # type: ignore[index]
    assert Forward(CHOSEN).headers == {}


def test_replaced_changes_what_it_is_given_and_keeps_the_rest() -> None:
    original = Forward(CHOSEN, "/prompt", b"{}", "p1", headers={"A": "1"}, kind="transfer", fallback=FALLBACK)

    moved = original.replaced(selection=FALLBACK, fallback=None, body=b'{"x": 1}')

    assert (moved.selection, moved.fallback, moved.body) == (FALLBACK, None, b'{"x": 1}')
    kept = ("target", "prompt_id", "rewrite_history", "websocket", "headers", "client_id", "also_follow", "kind")
    assert all(getattr(moved, name) == getattr(original, name) for name in kept)
    assert original.fallback == FALLBACK  # the original is not changed
    assert original.replaced() == original


def test_a_socket_s_forward_takes_its_client_id_and_followed_servers() -> None:
    socket = Forward(CHOSEN, "/ws?clientId=c1", websocket=True).replaced(client_id="c1", also_follow=("gpu-2",))

    assert (socket.client_id, socket.also_follow, socket.websocket) == ("c1", ("gpu-2",), True)


def test_with_headers_adds_to_a_forward_s_own_headers_and_leaves_it_unchanged() -> None:
    forward = Forward(CHOSEN, headers={"X-Comfy-Guardrails": "seed_normalized"})

    added = with_headers(forward, {"Vary": "Origin"})

    assert isinstance(added, Forward)
    assert dict(added.headers) == {"X-Comfy-Guardrails": "seed_normalized", "Vary": "Origin"}
    assert dict(forward.headers) == {"X-Comfy-Guardrails": "seed_normalized"}
    assert added.replaced(headers=forward.headers) == forward


def test_a_forward_prints_its_values() -> None:
    text = repr(Forward(CHOSEN, "/queue"))

    assert text.startswith("Forward(selection=Selection(backend='kerniegen'")
    assert "target='/queue'" in text and "kind='api'" in text


def test_endpoints_are_values() -> None:
    history = classify("GET", "/history/p1")

    assert history == Endpoint("/history/{prompt_id}", Routing.HISTORY, "p1")
    assert history != Endpoint("/history/{prompt_id}", Routing.HISTORY, "p2")
    assert hash(history) == hash(Endpoint("/history/{prompt_id}", Routing.HISTORY, "p1"))
    assert len({history, classify("GET", "/api/history/p1")}) == 1
    assert repr(history) == "Endpoint(template='/history/{prompt_id}', routing=<Routing.HISTORY: 'history'>, " \
                            "prompt_id='p1')"


@pytest.mark.parametrize("source", list(Source))
def test_a_source_hashes_as_its_text_and_finds_its_entries(source: Source) -> None:
    assert hash(source) == hash(source.value)
    assert {source.value: 1}[source] == 1
    assert SOURCE_TEXT[source] == source.value
    assert selected("kerniegen", source) is selected("kerniegen", source)
