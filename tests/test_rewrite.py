"""Output-ref rewriting and /view ref parsing (gateway/rewrite.py), on recorded ComfyUI 0.3.64 bodies."""

from __future__ import annotations

import copy
import json
import ntpath
import posixpath
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from gateway.outputs.refs import (
    ViewRef,
    check_view_ref,
    parse_view_ref,
    prefix_executed_data,
    prefix_history,
    prefix_node_output,
    prefix_subfolder,
    rewrite_executed_message,
    rewrite_ws_text,
    split_view_subfolder,
)

FIXTURES = Path(__file__).parent / "fixtures" / "comfyui"
BACKENDS = ("comfyui", "kerniegen", "gpu-2")
WS_TRANSCRIPTS = sorted(FIXTURES.glob("06_ws_*.json")) + [FIXTURES / "05_upload_then_loadimage.json"]


def load_transcript(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def recorded_history() -> dict[str, Any]:
    """The full GET /history body: 34 entries, 44,950 bytes."""
    return load_transcript("03_history_get.json")["exchanges"][0]["response"]["body"]["json"]


def ws_text_messages(path: Path) -> list[dict[str, Any]]:
    transcript = json.loads(path.read_text())
    return [
        message["data"]
        for session in transcript.get("ws_sessions", [])
        for message in session["messages"]
        if message["kind"] == "text" and message["direction"] == "server->client"
    ]


def executed_messages() -> list[dict[str, Any]]:
    return [m for path in WS_TRANSCRIPTS for m in ws_text_messages(path) if m["type"] == "executed"]


def refs_of(node_output: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for items in node_output.values() if isinstance(items, list) for r in items if isinstance(r, dict)]


# --- prefix_subfolder / split_view_subfolder -----------------------------------------------------------------

@pytest.mark.parametrize(
    ("subfolder", "backend", "expected"),
    [
        ("", "comfyui", "comfyui"),
        ("gwref", "comfyui", "comfyui/gwref"),
        ("a/b", "kerniegen", "kerniegen/a/b"),
        ("kerniegen", "comfyui", "comfyui/kerniegen"),
        ("with space", "gpu-2", "gpu-2/with space"),
    ],
    ids=["empty", "one-segment", "two-segments", "other-backend-name-inside", "space"],
)
def test_prefix_subfolder(subfolder: str, backend: str, expected: str) -> None:
    assert prefix_subfolder(subfolder, backend) == expected


@pytest.mark.parametrize(
    ("subfolder", "expected"),
    [
        ("comfyui", ("comfyui", "")),
        ("comfyui/", ("comfyui", "")),
        ("comfyui/gwref", ("comfyui", "gwref")),
        ("kerniegen/a/b", ("kerniegen", "a/b")),
        ("comfyui/kerniegen/x", ("comfyui", "kerniegen/x")),
        ("gwref", (None, "gwref")),
        ("", (None, "")),
        ("ComfyUI/x", (None, "ComfyUI/x")),
        ("comfyuix/a", (None, "comfyuix/a")),
        ("/comfyui/a", (None, "/comfyui/a")),
        ("comfyui//etc", ("comfyui", "/etc")),
    ],
    ids=["bare", "trailing-slash", "nested", "deep", "backend-name-below", "plain", "empty", "case-differs",
         "name-prefix-only", "leading-slash", "double-slash"],
)
def test_split_view_subfolder(subfolder: str, expected: tuple[str | None, str]) -> None:
    assert split_view_subfolder(subfolder, BACKENDS) == expected


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "subfolder", ["", "gwref", "a/b/c", "comfyui", "kerniegen/x", "with space", "ünï/çødé", "a..b"]
)
def test_prefix_then_split_gives_original(subfolder: str, backend: str) -> None:
    assert split_view_subfolder(prefix_subfolder(subfolder, backend), BACKENDS) == (backend, subfolder)


# --- prefix_node_output: every ref shape -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("node_output", "expected"),
    [
        ({"images": [{"filename": "a.png", "subfolder": "", "type": "output"}]},
         {"images": [{"filename": "a.png", "subfolder": "comfyui", "type": "output"}]}),
        ({"images": [{"filename": "a.png", "subfolder": "gwref", "type": "temp"},
                     {"filename": "b.png", "subfolder": "x/y", "type": "output"}]},
         {"images": [{"filename": "a.png", "subfolder": "comfyui/gwref", "type": "temp"},
                     {"filename": "b.png", "subfolder": "comfyui/x/y", "type": "output"}]}),
        ({"images": [{"filename": "a.webp", "subfolder": "", "type": "output"}], "animated": [True]},
         {"images": [{"filename": "a.webp", "subfolder": "comfyui", "type": "output"}], "animated": [True]}),
        ({"audio": [{"filename": "a.flac", "subfolder": "audio", "type": "output"}]},
         {"audio": [{"filename": "a.flac", "subfolder": "comfyui/audio", "type": "output"}]}),
        ({"latents": [{"filename": "l.latent", "subfolder": "", "type": "output"}]},
         {"latents": [{"filename": "l.latent", "subfolder": "comfyui", "type": "output"}]}),
        ({"gifs": [{"filename": "v.mp4", "subfolder": "", "type": "output", "format": "video/h264-mp4"}]},
         {"gifs": [{"filename": "v.mp4", "subfolder": "comfyui", "type": "output", "format": "video/h264-mp4"}]}),
        ({"3d": [{"filename": "m.glb", "subfolder": "3d", "type": "output"}]},
         {"3d": [{"filename": "m.glb", "subfolder": "comfyui/3d", "type": "output"}]}),
        ({"text": ["64", "64", "1"]}, {"text": ["64", "64", "1"]}),
        ({"result": ["mesh/m.glb", None]}, {"result": ["mesh/m.glb", None]}),
        ({"images": [{"filename": "a.png", "type": "output"}]},
         {"images": [{"filename": "a.png", "type": "output", "subfolder": "comfyui"}]}),
        ({"images": [{"filename": "a.png", "subfolder": None, "type": "output"}]},
         {"images": [{"filename": "a.png", "subfolder": "comfyui", "type": "output"}]}),
        ({"images": [{"filename": "a.png", "subfolder": 7, "type": "output"}]},
         {"images": [{"filename": "a.png", "subfolder": 7, "type": "output"}]}),
        ({"images": [{"filename": "a.png", "subfolder": ""}]}, {"images": [{"filename": "a.png", "subfolder": ""}]}),
        ({"images": [{"name": "a.png", "subfolder": "", "type": "input"}]},
         {"images": [{"name": "a.png", "subfolder": "", "type": "input"}]}),
        ({"count": 3, "label": "x", "nested": {"filename": "a", "type": "output", "subfolder": ""}},
         {"count": 3, "label": "x", "nested": {"filename": "a", "type": "output", "subfolder": ""}}),
        ({"images": [["a.png", "", "output"], "a.png", 1, None]},
         {"images": [["a.png", "", "output"], "a.png", 1, None]}),
        ({}, {}),
    ],
    ids=["image-empty-subfolder", "images-temp-and-nested", "animated-booleans-untouched", "audio", "latents",
         "custom-gifs", "3d", "text-strings-untouched", "preview3d-result-untouched", "missing-subfolder-added",
         "none-subfolder", "non-string-subfolder-untouched", "no-type-untouched", "upload-style-name-untouched",
         "non-list-values-untouched", "non-dict-items-untouched", "empty"],
)
def test_prefix_node_output(node_output: dict[str, Any], expected: dict[str, Any]) -> None:
    prefix_node_output(node_output, "comfyui")
    assert node_output == expected


@pytest.mark.parametrize("node_output", [None, [], "images", 3], ids=["none", "list", "str", "int"])
def test_prefix_node_output_ignores_non_dicts(node_output: Any) -> None:
    before = copy.deepcopy(node_output)
    prefix_node_output(node_output, "comfyui")
    assert node_output == before


# --- /history bodies ---------------------------------------------------------------------------------------

def test_prefix_history_rewrites_every_recorded_ref_and_nothing_else() -> None:
    original = recorded_history()
    body = copy.deepcopy(original)
    assert prefix_history(body, "comfyui") is body  # in place, same object

    ref_count = 0
    for prompt_id, entry in body.items():
        before = original[prompt_id]
        assert len(entry["prompt"]) == 5
        assert {k: v for k, v in entry.items() if k != "outputs"} == {k: v for k, v in before.items() if k != "outputs"}
        assert entry["outputs"].keys() == before["outputs"].keys()
        for node_id, node_output in entry["outputs"].items():
            for new, old in zip(refs_of(node_output), refs_of(before["outputs"][node_id]), strict=True):
                ref_count += 1
                assert new == {**old, "subfolder": prefix_subfolder(old["subfolder"], "comfyui")}
    assert ref_count == 29  # every recorded image ref was seen


def test_prefix_history_leaves_look_alike_dicts_outside_outputs_alone() -> None:
    look_alike = {"filename": "x.png", "subfolder": "", "type": "output"}
    body = {
        "p1": {
            "prompt": [1, "p1", {"1": {"class_type": "X", "inputs": {"ref": dict(look_alike)}}},
                       {"client_id": "c", "extra_pnginfo": {"images": [dict(look_alike)]}}, ["1"]],
            "outputs": {"1": {"images": [dict(look_alike)]}},
            "status": {"status_str": "success", "completed": True, "messages": [["x", dict(look_alike)]]},
            "meta": {"1": {"images": [dict(look_alike)]}},
        }
    }
    prefix_history(body, "kerniegen")
    entry = body["p1"]
    assert entry["outputs"]["1"]["images"][0]["subfolder"] == "kerniegen"
    assert entry["prompt"][2]["1"]["inputs"]["ref"] == look_alike
    assert entry["prompt"][3]["extra_pnginfo"]["images"][0] == look_alike
    assert entry["status"]["messages"][0][1] == look_alike
    assert entry["meta"]["1"]["images"][0] == look_alike


@pytest.mark.parametrize(
    "body",
    [None, [], "x", {}, {"p": None}, {"p": []}, {"p": {"outputs": None}}, {"p": {"outputs": []}},
     {"p": {"outputs": {"1": None}}}, {"p": {"outputs": {"1": {"images": None}}}}, {"p": {}}],
    ids=["none", "list", "str", "empty", "entry-none", "entry-list", "outputs-none", "outputs-list",
         "node-none", "images-none", "entry-empty"],
)
def test_prefix_history_tolerates_malformed_bodies(body: Any) -> None:
    before = copy.deepcopy(body)
    assert prefix_history(body, "comfyui") == before


# --- WebSocket executed messages ---------------------------------------------------------------------------

def test_recorded_executed_messages_exist() -> None:
    assert len(executed_messages()) == 7


@pytest.mark.parametrize("message", executed_messages(), ids=lambda m: m["data"]["prompt_id"][:8])
def test_rewrite_executed_message(message: dict[str, Any]) -> None:
    rewritten = rewrite_executed_message(copy.deepcopy(message), "kerniegen")
    assert {k: v for k, v in rewritten["data"].items() if k != "output"} == {
        k: v for k, v in message["data"].items() if k != "output"
    }
    for new, old in zip(refs_of(rewritten["data"]["output"]), refs_of(message["data"]["output"]), strict=True):
        assert new == {**old, "subfolder": prefix_subfolder(old["subfolder"], "kerniegen")}


@pytest.mark.parametrize("message", executed_messages(), ids=lambda m: m["data"]["prompt_id"][:8])
def test_ws_and_history_refs_agree_after_rewrite(message: dict[str, Any]) -> None:
    """CLIENTS.md #7: a client reading refs from `executed` and one reading /history build the same /view."""
    history = prefix_history(recorded_history(), "comfyui")
    data = rewrite_executed_message(copy.deepcopy(message), "comfyui")["data"]
    assert data["output"] == history[data["prompt_id"]]["outputs"][data["node"]]


@pytest.mark.parametrize(
    "message",
    [
        {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "x"}},
        {"type": "executing", "data": {"node": None, "prompt_id": "p"}},
        {"type": "execution_error", "data": {"prompt_id": "p", "executed": ["1"], "node_id": "2"}},
        {"type": "executed"},
        {"type": "executed", "data": None},
        {"type": "executed", "data": {"node": "1", "output": None}},
        ["executed"],
    ],
    ids=["status", "executing", "error-with-executed-key", "no-data", "data-none", "output-none", "not-a-dict"],
)
def test_rewrite_executed_message_leaves_others_alone(message: Any) -> None:
    before = copy.deepcopy(message)
    assert rewrite_executed_message(message, "comfyui") == before


def all_ws_texts() -> list[str]:
    # Serialised as ComfyUI's send_json does (json.dumps with default separators).
    return [json.dumps(m) for path in WS_TRANSCRIPTS for m in ws_text_messages(path)]


def test_rewrite_ws_text_passes_other_frames_byte_for_byte() -> None:
    texts = all_ws_texts()
    passed = [t for t in texts if json.loads(t)["type"] != "executed"]
    assert len(passed) == 266
    for text in passed:
        assert rewrite_ws_text(text, "comfyui") is text


def test_rewrite_ws_text_rewrites_executed_frames() -> None:
    for message in executed_messages():
        out = json.loads(rewrite_ws_text(json.dumps(message), "comfyui"))
        assert out == rewrite_executed_message(copy.deepcopy(message), "comfyui")


@pytest.mark.parametrize(
    "text",
    ['{"type": "executed", "data": {', "not json \"executed\"", '["executed"]', '{"type":"executing","x":"executed"}',
     ""],
    ids=["truncated", "not-json", "array", "other-type-mentioning-executed", "empty"],
)
def test_rewrite_ws_text_returns_unparsable_or_other_frames_unchanged(text: str) -> None:
    assert rewrite_ws_text(text, "comfyui") is text


def test_rewrite_ws_text_compact_json_from_other_servers() -> None:
    text = (
        '{"type":"executed","data":{"node":"9","output":'
        '{"images":[{"filename":"a.png","subfolder":"","type":"output"}]}}}'
    )
    assert json.loads(rewrite_ws_text(text, "kerniegen"))["data"]["output"]["images"][0]["subfolder"] == "kerniegen"


# --- prefix_executed_data and prefix_history -------------------------------------------------------------

def test_prefix_executed_data_rewrites_in_place() -> None:
    data = copy.deepcopy(executed_messages()[0]["data"])
    assert prefix_executed_data(data, "comfyui") is data
    assert all(r["subfolder"].startswith("comfyui") for r in refs_of(data["output"]))


def test_prefix_history_with_prompt_ids_named_node_and_output() -> None:
    ref = {"filename": "a.png", "subfolder": "", "type": "output"}
    body = {
        "node": {"outputs": {}},
        "output": {"prompt": [0, "output", {}, {}, []], "outputs": {"1": {"images": [ref]}}},
    }
    prefix_history(body, "comfyui")
    assert body["output"]["outputs"]["1"]["images"][0]["subfolder"] == "comfyui"


def test_prefix_executed_data_tolerates_non_dict() -> None:
    assert prefix_executed_data(None, "comfyui") is None


# --- /view refs --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("filename", "subfolder"),
    [
        ("a.png", ""),
        ("a.png", "gwref"),
        ("a.png", "a/b/c"),
        ("a..b.png", "x..y"),
        ("ComfyUI_00001_.png [output]", ""),
        ("a b.png", "with space"),
        ("ünï.png", "çødé"),
        ("a.png", "gwref/"),
        ("a.png", "a//b"),
        ("a.png", "./a"),
        ("", ""),
        (".hidden", "..."),
        ("a.png", "a\\b\\c"),
        ("a.png", "a..b\\x"),
    ],
    ids=["plain", "subfolder", "nested", "dots-inside-names", "annotated", "spaces", "unicode", "trailing-slash",
         "inner-empty-segment", "dot-segment", "empty-filename-is-the-backends-404", "three-dots",
         "windows-nested", "windows-dots-inside-names"],
)
def test_check_view_ref_accepts(filename: str, subfolder: str) -> None:
    check_view_ref(filename, subfolder)


@pytest.mark.parametrize(
    ("filename", "subfolder", "reason"),
    [
        ("a.png", "..", "'..' segment"),
        ("a.png", "a/../..", "'..' segment"),
        ("a.png", "a/..", "'..' segment"),
        ("..", "", "'..' segment"),
        ("../secret", "", "'..' segment"),
        ("a.png", "/etc", "absolute"),
        ("/etc/passwd", "", "absolute"),
        ("a.png", "//server/share", "absolute"),
        ("a.png", "a\\..\\..", "'..' segment"),
        ("a.png", "..\\x", "'..' segment"),
        ("a.png", "\\\\server\\share", "absolute"),
        ("a.png", "\\windows", "absolute"),
        ("a.png", "C:\\windows", "drive letter"),
        ("a.png", "a/..\\..", "'..' segment"),
        ("..\\x.png", "", "backslash"),
        ("a\\b.png", "a\\b", "backslash"),
        ("a.png", "a\x00b", "NUL"),
        ("a.png\x00.txt", "", "NUL"),
        ("a.png", "C:", "drive letter"),
        ("a.png", "c:/windows", "drive letter"),
        ("C:x.png", "", "drive letter"),
    ],
    ids=["dotdot", "dotdot-deep", "dotdot-last", "filename-dotdot", "filename-dotdot-dir", "absolute-subfolder",
         "absolute-filename", "unc-like", "windows-dotdot", "windows-dotdot-first", "windows-unc",
         "windows-rooted", "windows-drive", "mixed-separators-dotdot", "backslash-filename",
         "backslash-filename-beside-a-windows-subfolder", "nul-subfolder",
         "nul-filename", "drive", "drive-path", "drive-filename"],
)
def test_check_view_ref_rejects(filename: str, subfolder: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        check_view_ref(filename, subfolder)


_PATH_TEXT = st.text(alphabet=st.sampled_from(["a", "b", ".", "/", "\\", ":", "C", " "]), max_size=16)


@given(filename=_PATH_TEXT, subfolder=_PATH_TEXT)
def test_an_accepted_view_ref_stays_in_the_output_dir_on_posix_and_on_windows(filename: str, subfolder: str) -> None:
    """What a Linux or a Windows ComfyUI makes of an accepted ref (os.path.join, then the file) is inside its
    output directory: the backend's own check is not what keeps it there."""
    try:
        check_view_ref(filename, subfolder)
    except ValueError:
        return
    posix = posixpath.normpath(posixpath.join("/out", subfolder, filename or "x"))
    assert posix == "/out" or posix.startswith("/out/")
    windows = ntpath.normpath(ntpath.join("C:\\out", subfolder, filename or "x"))
    assert windows == "C:\\out" or windows.startswith("C:\\out\\")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("filename=a.png&subfolder=comfyui%2Fgwref&type=output", ViewRef("comfyui", "gwref", "a.png")),
        ("filename=a.png&subfolder=comfyui/gwref&type=output", ViewRef("comfyui", "gwref", "a.png")),
        ("filename=a+b.png&subfolder=kerniegen%2Fmy+dir", ViewRef("kerniegen", "my dir", "a b.png")),
        ("filename=a%20b.png&subfolder=kerniegen/my%20dir", ViewRef("kerniegen", "my dir", "a b.png")),
        ("filename=a.png&subfolder=comfyui", ViewRef("comfyui", "", "a.png")),
        ("filename=a.png&subfolder=", ViewRef(None, "", "a.png")),
        ("filename=a.png&subfolder=gwref", ViewRef(None, "gwref", "a.png")),
        ("filename=a.png&subfolder=comfyui%2Fkerniegen%2Fx", ViewRef("comfyui", "kerniegen/x", "a.png")),
        ("filename=a.png&subfolder=comfyui%2Fa%5Cb", ViewRef("comfyui", "a\\b", "a.png")),
    ],
    ids=["percent-2F", "slash", "plus-for-space", "percent-20", "bare-backend", "empty", "no-backend",
         "backend-name-below", "windows-nested"],
)
def test_parse_view_ref_from_client_queries(query: str, expected: ViewRef) -> None:
    """The caller decodes with aiohttp's own parser (yarl); every encoding clients use lands the same."""
    params = URL("/view?" + query).query
    assert parse_view_ref(params["filename"], params.get("subfolder", ""), BACKENDS) == expected


@pytest.mark.parametrize(
    "subfolder",
    ["comfyui//etc", "comfyui/../kerniegen", "comfyui/..", "comfyui/a\\..\\b", "/comfyui/a", "../comfyui",
     "comfyui/C:"],
    ids=["empty-segment-after-backend", "dotdot-to-other-backend", "dotdot-out", "backslash", "absolute",
         "dotdot-first", "drive-after-backend"],
)
def test_parse_view_ref_rejects_escapes(subfolder: str) -> None:
    with pytest.raises(ValueError):
        parse_view_ref("a.png", subfolder, BACKENDS)


def test_parse_view_ref_percent_encoded_dotdot_is_caught_after_decoding() -> None:
    params = URL("/view?filename=a.png&subfolder=comfyui%2F%2E%2E%2Fkerniegen").query
    assert params["subfolder"] == "comfyui/../kerniegen"
    with pytest.raises(ValueError, match="'..' segment"):
        parse_view_ref(params["filename"], params["subfolder"], BACKENDS)
