"""The /history rewrite both data paths use (pipeline/outcome.history_body, on refs.prefixed_history_text) gives
exactly what refs.prefix_history gives, passes every entry's other members on as the backend wrote them,
reads with json what its reader cannot vouch for, and leaves alone what it must not rewrite."""

from __future__ import annotations

import json

import pytest

from gateway.core.errors import UpstreamError
from gateway.outputs import refs as rewrite
from gateway.outputs.refs import prefixed_history_text as prefixed_history
from gateway.pipeline.outcome import history_body


def ref(filename: str, subfolder: str | None = "", kind: str = "output") -> dict:
    return {"filename": filename, "subfolder": subfolder, "type": kind}


def history(*refs: dict, prompt_inputs: dict | None = None) -> dict:
    return {
        "p1": {
            "prompt": [1, "p1", {"9": {"class_type": "SaveImage", "inputs": prompt_inputs or {}}}, {}, ["9"]],
            "outputs": {"9": {"images": list(refs), "animated": [False]}},
            "status": {"status_str": "success", "completed": True, "messages": []},
            "meta": {},
        }
    }


def expected(body: dict, backend: str = "comfyui") -> dict:
    return rewrite.prefix_history(json.loads(json.dumps(body)), backend)


@pytest.mark.parametrize(
    "body",
    [
        history(ref("a.png")),
        history(ref("a.png", "sub/dir"), ref("b.png", "sub/dir"), ref("c.png", None)),
        history(ref("a.png"), ref("a.png")),  # the same ref twice
        history(ref("é.png", "ü")),  # non-ASCII, escaped as json.dumps escapes it
        history(ref("a.png", "comfyui"), ref("a.png", "")),  # one replacement would make the other's text
        history(ref("a.png"), prompt_inputs={"ref": ref("a.png")}),  # the same ref outside outputs: not touched
        history({"filename": "x.png", "subfolder": 3, "type": "output"}),  # a subfolder that is not a string
        history({"filename": "x.png", "type": "output", "subfolder": "s", "extra": [1, {"a": None}]}),
        history({"filename": "x.png", "type": "output"}),  # no subfolder key: one is added
        history(ref("a.png", "s"), prompt_inputs={"subfolder": "s"}),  # the changed pair also elsewhere
        {},
    ],
    ids=[
        "one", "several", "repeated", "non-ascii", "cascade", "also-in-prompt", "odd-subfolder", "extra-keys",
        "no-subfolder", "pair-elsewhere", "empty",
    ],
)
def test_same_result_as_prefix_history(body: dict) -> None:
    raw = json.dumps(body).encode()
    assert json.loads(prefixed_history(raw, "comfyui")) == expected(body)


def test_members_other_than_outputs_are_the_backends_own_bytes() -> None:
    body = history(ref("a.png", "x"), prompt_inputs={"seed": 7, "text": "a \"quoted\" prompt"})
    raw = json.dumps(body).encode()
    out = prefixed_history(raw, "comfyui")
    for member in ("prompt", "status", "meta"):
        assert json.dumps(body["p1"][member]).encode() in out  # json's spacing and all, as the backend wrote it
    assert json.loads(out) == expected(body)


@pytest.mark.parametrize(
    "dump",
    [
        lambda b: json.dumps(b, separators=(",", ":")),
        lambda b: json.dumps(b, ensure_ascii=False),
        lambda b: json.dumps(b, indent=2),
        lambda b: json.dumps(b).replace('"filename"', '"file\\u006eame"'),  # a key written with an escape
    ],
    ids=["compact", "raw-utf8", "indented", "escaped-key"],
)
def test_any_serialisation_gives_the_same_result(dump) -> None:
    body = history(ref("é.png", "x"))
    raw = dump(body).encode()
    out = history_body(200, "application/json", None, raw, "comfyui")
    assert out is not None and json.loads(out) == expected(body)


@pytest.mark.parametrize("raw", [b'{"p1": [1, 2]}', b'{"p1": {"outputs": {"9": {"images": [{"filename": "a", '
                                 b'"type": "output", "x": NaN}]}}}}'], ids=["entry-not-object", "nan"])
def test_bodies_the_reader_cannot_vouch_for_are_read_by_json(raw: bytes) -> None:
    # Written again as the aiohttp path writes it (json.dumps: NaN stays NaN, as ComfyUI sends it).
    assert prefixed_history(raw, "comfyui") == json.dumps(rewrite.prefix_history(json.loads(raw), "comfyui")).encode()


def test_a_body_that_is_not_json_is_the_backends_error() -> None:
    with pytest.raises(UpstreamError, match="invalid JSON") as raised:
        history_body(200, "application/json", None, b'{"p1": {"outputs": {"filename": ', "comfyui")
    assert raised.value.status == 502 and raised.value.failure_kind == "protocol" and raised.value.backend == "comfyui"


@pytest.mark.parametrize(
    ("status", "content_type", "encoding", "body"),
    [
        (404, "text/plain", None, b"nope"),
        (302, "application/json", None, json.dumps(history(ref("a.png"))).encode()),
        (200, "text/html", None, json.dumps(history(ref("a.png"))).encode()),
        (200, "application/json", "gzip", b"\x1f\x8b compressed"),
        (200, "application/json", None, b"{}"),
        (200, "application/json", None, b"not json, and no output ref in it"),
    ],
    ids=["error", "redirect", "not-json-type", "compressed", "no-refs", "no-refs-not-json"],
)
def test_answers_it_must_not_rewrite_pass_on_as_they_came(
    status: int, content_type: str, encoding: str | None, body: bytes
) -> None:
    assert history_body(status, content_type, encoding, body, "comfyui") is None


def test_a_json_answer_with_refs_is_rewritten_whatever_its_charset() -> None:
    body = history_body(
        200, "application/json; charset=utf-8", "identity", json.dumps(history(ref("a.png"))).encode(), "c"
    )
    assert body is not None and json.loads(body) == expected(history(ref("a.png")), "c")


@pytest.mark.parametrize("subfolder", ["x", None], ids=["subfolder", "no-subfolder"])
def test_integers_beyond_64_bits_reach_the_client_unchanged(subfolder: str | None) -> None:
    seed = 2**64 + 12345  # orjson would read it as a float; the answer must still carry the integer
    body = history(ref("a.png", subfolder) if subfolder else {"filename": "a.png", "type": "output"},
                   prompt_inputs={"seed": seed})

    out = history_body(200, "application/json", None, json.dumps(body).encode(), "comfyui")

    assert out is not None and str(seed).encode() in out
    assert json.loads(out) == expected(body)
