"""The routes ComfyUI's web UI calls, against real KernieGens on 127.0.0.1: the frontend's files, the
recorded support routes (07_frontend_support_routes, 07_userdata, 09_root_and_static) under both
spellings, settings and saved workflows across a restart, the bounds, and path escapes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from gateway.kerniegen import frontend
from gateway.kerniegen.cli import build_parser, config_from_args
from gateway.kerniegen.config import KernieGenConfig
from gateway.kerniegen.frontend_extension import EXTENSION_URL
from gateway.kerniegen.inventory import MODEL_FOLDERS
from gateway.kerniegen.server import KernieGenServer
from tests.kerniegen.conftest import StartKernieGen
from tests.kerniegen.kerniegen_client import get_json, next_json
from tests.kerniegen.transcript_replay import Replayer, exchanges, load

SPELLINGS = pytest.mark.parametrize("prefix", ["", "/api"], ids=["bare", "api"])


def with_prefix(item: dict[str, Any], prefix: str) -> dict[str, Any]:
    request = {**item["request"], "url_as_sent": prefix + item["request"]["url_as_sent"]}
    return {**item, "request": request}


def url(server: KernieGenServer, path: str) -> URL:
    return URL(server.url + path, encoded=True)  # keeps %2F (and %252F) exactly as written


async def request(http: aiohttp.ClientSession, method: str, target: URL, **kwargs: Any) -> tuple[int, bytes, Any]:
    async with http.request(method, target, **kwargs) as response:
        return response.status, await response.read(), response.headers


# -- the recorded exchanges ------------------------------------------------------------------------
@SPELLINGS
async def test_boot_routes_answer_as_recorded(prefix: str, kerniegen: KernieGenServer,
                                              http: aiohttp.ClientSession) -> None:
    replayer = Replayer(http, kerniegen.url)
    for item in exchanges(load("07_frontend_support_routes.json")):
        reply = await replayer.replay(with_prefix(item, prefix))
        if item["request"]["path"] == "/i18n":  # recorded as a summary of the two bytes "{}"
            assert reply.json() == {}
        elif item["request"]["path"] in ("/users", "/settings", "/workflow_templates", "/v2/userdata"):
            assert reply.json() == item["response"]["body"]["json"]


@SPELLINGS
async def test_userdata_exchanges_answer_as_recorded(prefix: str, kerniegen: KernieGenServer,
                                                     http: aiohttp.ClientSession) -> None:
    replayer = Replayer(http, kerniegen.url)
    root = kerniegen.state.config.data_dir / "user" / "default"
    for item in exchanges(load("07_userdata.json")):
        reply = await replayer.replay(with_prefix(item, prefix))
        if item["request"]["method"] == "POST" and reply.status == 200:  # the saved and the moved path
            assert reply.json() == item["response"]["body"]["json"]
    assert not (root / "workflows" / "gwref.json").exists() and not (root / "workflows" / "gwref2.json").exists()


async def test_userdata_exchanges_answer_as_recorded_through_the_gateway(
    kerniegen: KernieGenServer, http: aiohttp.ClientSession, start_gateway: Any
) -> None:
    gateway = await start_gateway({"kerniegen": kerniegen.url})
    replayer = Replayer(http, gateway.url)
    # The gateway forwards the raw path, so %2F stays inside the one segment; Host is the gateway's own.
    for item in [*exchanges(load("07_frontend_support_routes.json")), *exchanges(load("07_userdata.json"))]:
        item = with_prefix(item, "/api")
        item["request"]["headers"] = {k: v for k, v in item["request"]["headers"].items() if k != "Host"}
        await replayer.replay(item)


async def test_root_and_static_files_are_the_frontends_as_recorded(kerniegen: KernieGenServer,
                                                                  http: aiohttp.ClientSession) -> None:
    replayer = Replayer(http, kerniegen.url)
    for item in exchanges(load("09_root_and_static.json")):
        if item["request"]["path"] == "/templates/index.json":
            continue  # the templates package is not installed here; see the next test
        reply = await replayer.replay(item)
        recorded_body = item["response"]["body"]
        if recorded_body and "binary" in recorded_body:  # same frontend version: the same index.html
            assert hashlib.sha256(reply.body).hexdigest() == recorded_body["binary"]["sha256"]


async def test_templates_without_their_package_are_an_empty_valid_index(kerniegen: KernieGenServer,
                                                                       http: aiohttp.ClientSession) -> None:
    status, body, headers = await request(http, "GET", url(kerniegen, "/templates/index.json"))
    assert (status, headers["Content-Type"], json.loads(body)) == (200, "application/json", [])
    assert headers["Cache-Control"] == "no-cache"
    assert (await request(http, "GET", url(kerniegen, "/templates/default.json")))[0] == 404
    assert await get_json(http, f"{kerniegen.url}/api/workflow_templates") == {}


async def test_frontend_scripts_are_served_uncached_and_escapes_are_404(kerniegen: KernieGenServer,
                                                                       http: aiohttp.ClientSession) -> None:
    status, body, headers = await request(http, "GET", url(kerniegen, "/scripts/app.js"))
    assert (status, headers["Cache-Control"]) == (200, "no-cache") and b"comfyAPI" in body
    status, _, headers = await request(http, "HEAD", url(kerniegen, "/materialdesignicons.min.css"))
    assert status == 200 and int(headers["Content-Length"]) > 0
    for escape in ("/..%2F..%2F..%2Fetc%2Fpasswd", "/assets/..%2F..%2F__init__.py", "/%2Fetc%2Fpasswd",
                   "/assets", "/api/scripts/app.js"):
        status, body, headers = await request(http, "GET", url(kerniegen, escape))
        assert (status, body, headers["Content-Type"]) == (404, b"", "application/octet-stream"), escape


async def test_extensions_lists_the_frontends_scripts_and_kerniegens(kerniegen: KernieGenServer,
                                                                    http: aiohttp.ClientSession) -> None:
    recorded = exchanges(load("07_extensions.json"))[0]["response"]["body"]["json"]
    listed = await get_json(http, f"{kerniegen.url}/api/extensions")
    assert sorted(listed) == sorted([*recorded, EXTENSION_URL])
    status, body, headers = await request(http, "GET", url(kerniegen, EXTENSION_URL))
    assert (status, headers["Content-Type"], headers["Cache-Control"]) == (
        200, "text/javascript; charset=utf-8", "no-cache")
    assert b"registerExtension" in body and b"loadedGraphNode" in body
    # Every loader the UI's model menus need is a real KernieGen node now, so no stand-in definitions.
    assert b"addCustomNodeDefs" not in body


async def test_feature_flags_handshake_as_the_frontend_does_it(kerniegen: KernieGenServer,
                                                              http: aiohttp.ClientSession) -> None:
    session = next(s for s in load("06_ws_connect_and_broadcast.json")["ws_sessions"]
                   if s["client_id_param"] == "gwref-flags" and s["messages"][0]["direction"] == "client->server")
    async with http.ws_connect(f"{kerniegen.url}/api/ws?clientId=gwref-flags") as ws:
        await ws.send_json(session["messages"][0]["data"])
        assert (await next_json(ws))["type"] == "status"
        assert await next_json(ws) == session["messages"][2]["data"]


# -- settings and saved workflows --------------------------------------------------------------------
async def test_settings_and_saved_workflows_survive_a_restart(start_kg: StartKernieGen, tmp_path: Path,
                                                              http: aiohttp.ClientSession) -> None:
    data_dir = tmp_path / "kept"
    first = await start_kg(data_dir=data_dir)
    workflow = json.dumps({"last_node_id": 1, "nodes": [{"id": 1, "type": "EmptyImage"}], "version": 0.4})
    assert (await request(http, "POST", url(first, "/api/settings"),
                          json={"Comfy.Locale": "fr", "Comfy.TutorialCompleted": True}))[0] == 200
    assert (await request(http, "POST", url(first, "/api/settings/Comfy.Locale"), json="de"))[0] == 200
    status, body, _ = await request(http, "POST", url(first, "/api/userdata/workflows%2Fmine%20one.json"),
                                    data=workflow)
    assert (status, json.loads(body)) == (200, "workflows/mine one.json")
    await first.close()

    second = await start_kg(data_dir=data_dir)
    assert await get_json(http, f"{second.url}/api/settings") == {"Comfy.Locale": "de", "Comfy.TutorialCompleted": True}
    assert await get_json(http, f"{second.url}/settings/Comfy.Locale") == "de"
    status, body, _ = await request(http, "GET", url(second, "/api/userdata/workflows%2Fmine%20one.json"))
    assert (status, body.decode()) == (200, workflow)
    listed = await get_json(http, f"{second.url}/api/userdata?dir=workflows&recurse=true&split=false&full_info=true")
    assert [entry["path"] for entry in listed] == ["mine one.json"]
    on_disk = json.loads((data_dir / "user" / "default" / "comfy.settings.json").read_text())
    assert on_disk == {"Comfy.Locale": "de", "Comfy.TutorialCompleted": True}


@pytest.mark.parametrize(("path", "body"), [
    ("/settings", b"not json"), ("/settings", b"[1, 2]"), ("/settings", b""), ("/settings/Comfy.X", b"{oops"),
], ids=["not-json", "not-an-object", "empty", "one-not-json"])
async def test_settings_bad_bodies_get_comfyuis_500_and_change_nothing(
    path: str, body: bytes, kerniegen: KernieGenServer, http: aiohttp.ClientSession
) -> None:
    status, text, _ = await request(http, "POST", url(kerniegen, path), data=body)
    assert (status, text.decode()) == (500, "500 Internal Server Error\n\nServer got itself in trouble")
    assert await get_json(http, f"{kerniegen.url}/settings") == {}


async def test_settings_are_bounded(start_kg: StartKernieGen, http: aiohttp.ClientSession) -> None:
    server = await start_kg(max_settings_bytes=1024)
    status, text, _ = await request(http, "POST", url(server, "/settings"), json={"big": "x" * 2000})
    assert (status, text.decode()) == (413, "Maximum request body size 1024 exceeded.")
    for index in range(3):  # each body fits, the file they add up to does not
        status, _, _ = await request(http, "POST", url(server, f"/settings/s{index}"), json="y" * 400)
    assert status == 413
    assert set(await get_json(http, f"{server.url}/settings")) == {"s0", "s1"}


# -- userdata beyond the recording -------------------------------------------------------------------
async def test_userdata_listings(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    for name in ("workflows%2Fa.json", "workflows%2Fsub%2Fb.json", "workflows%2F.hidden.json", "top.css"):
        assert (await request(http, "POST", url(kerniegen, f"/userdata/{name}"), data=b"{}"))[0] == 200
    base = f"{kerniegen.url}/userdata?dir=workflows"
    assert sorted(await get_json(http, base)) == ["a.json"]
    assert sorted(await get_json(http, base + "&recurse=true")) == ["a.json", "sub/b.json"]
    assert sorted(await get_json(http, base + "&recurse=true&split=true")) == [["a.json", "a.json"],
                                                                             ["sub/b.json", "sub", "b.json"]]
    v2 = await get_json(http, f"{kerniegen.url}/v2/userdata")
    # Directories first, then files, each by name (ComfyUI sorts the whole walk that way).
    assert [(entry["name"], entry["type"]) for entry in v2][:2] == [("sub", "directory"), ("workflows", "directory")]
    assert {entry["path"] for entry in v2 if entry["type"] == "file"} == {
        "top.css", "workflows/a.json", "workflows/.hidden.json", "workflows/sub/b.json"}
    assert [entry["path"] for entry in await get_json(http, f"{kerniegen.url}/v2/userdata?path=workflows%2Fsub")] \
        == ["workflows/sub/b.json"]
    for query, expected in (("?path=..%2F..", (400, b"Invalid path requested")),
                            ("?path=nothing", (404, b"Requested path not found")),
                            ("?path=top.css", (400, b"Requested path is not a directory"))):
        assert (await request(http, "GET", url(kerniegen, "/v2/userdata" + query)))[:2] == expected
    for query, expected in (("", (400, b"Directory not provided")), ("?dir=..%2F..", (403, b"Invalid directory"))):
        assert (await request(http, "GET", url(kerniegen, "/userdata" + query)))[:2] == expected


@pytest.mark.parametrize("name", ["..%2F..%2Fcomfyui.db", "%2Fetc%2Fpasswd", "..%252F..%252Fescaped.json",
                                  "workflows%2F..%2F..%2F..%2Fescaped.json"],
                         ids=["dotdot", "absolute", "double-encoded", "inner-dotdot"])
async def test_userdata_paths_leaving_the_user_dir_get_403(name: str, kerniegen: KernieGenServer,
                                                          http: aiohttp.ClientSession) -> None:
    assert (await request(http, "POST", url(kerniegen, "/userdata/ok.json"), data=b"{}"))[0] == 200
    attempts = [("GET", f"/userdata/{name}"), ("POST", f"/userdata/{name}"), ("DELETE", f"/userdata/{name}"),
                ("POST", f"/userdata/{name}/move/ok2.json"), ("POST", f"/userdata/ok.json/move/{name}")]
    for method, path in attempts:
        status, body, headers = await request(http, method, url(kerniegen, "/api" + path), data=b"{}")
        assert (status, body, headers.get("Content-Type")) == (403, b"", None), (method, path)
    data_dir = kerniegen.state.config.data_dir
    assert not (data_dir / "user" / "escaped.json").exists() and not (data_dir / "escaped.json").exists()
    assert (data_dir / "user" / "default" / "ok.json").exists()


async def test_userdata_writes_are_bounded_and_leave_nothing_behind(start_kg: StartKernieGen,
                                                                   http: aiohttp.ClientSession) -> None:
    server = await start_kg(max_userdata_bytes=4096)
    status, text, _ = await request(http, "POST", url(server, "/userdata/workflows%2Fbig.json"), data=b"x" * 5000)
    assert (status, text.decode()) == (413, "Maximum request body size 4096 exceeded.")
    assert os.listdir(server.state.config.data_dir / "user" / "default" / "workflows") == []
    status, body, _ = await request(http, "POST", url(server, "/userdata/workflows%2Ffits.json?full_info=true"),
                                    data=b"x" * 4096)
    assert status == 200 and {**json.loads(body), "modified": 0, "created": 0} == {
        "path": "workflows/fits.json", "size": 4096, "modified": 0, "created": 0}


async def test_userdata_move_and_delete_edges(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    for name in ("a.json", "b.json"):
        await request(http, "POST", url(kerniegen, f"/userdata/{name}"), data=name.encode())
    move = "/userdata/a.json/move/b.json"
    assert (await request(http, "POST", url(kerniegen, move + "?overwrite=false")))[:2] == (409, b"File already exists")
    assert (await request(http, "POST", url(kerniegen, move)))[:2] == (200, b'"b.json"')
    assert (await request(http, "GET", url(kerniegen, "/userdata/b.json")))[1] == b"a.json"
    assert (await request(http, "POST", url(kerniegen, move)))[0] == 404  # the source is gone
    assert (await request(http, "DELETE", url(kerniegen, "/userdata/a.json")))[0] == 404
    await request(http, "POST", url(kerniegen, "/userdata/dir%2Finside.json"), data=b"{}")
    assert (await request(http, "GET", url(kerniegen, "/userdata/dir")))[0] == 404  # a directory is no file


async def test_users_in_single_user_mode(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    assert await get_json(http, f"{kerniegen.url}/api/users") == {"storage": "server", "migrated": True}
    status, body, _ = await request(http, "POST", url(kerniegen, "/users"), json={"username": "default"})
    assert (status, json.loads(body)) == (400, {"error": "Duplicate username."})
    status, body, _ = await request(http, "POST", url(kerniegen, "/users"), json={"username": "  "})
    assert (status, json.loads(body)) == (400, {"error": "username not provided"})
    status, body, _ = await request(http, "POST", url(kerniegen, "/users"), json={"username": "Ann B"})
    assert status == 200 and json.loads(body).startswith("Ann-B_")
    assert (await request(http, "POST", url(kerniegen, "/users"), data=b"[]"))[0] == 500


# -- models, internal routes ---------------------------------------------------------------------------
async def test_experiment_models_describe_the_inventory(kerniegen: KernieGenServer,
                                                       http: aiohttp.ClientSession) -> None:
    folders = await get_json(http, f"{kerniegen.url}/api/experiment/models")
    assert [folder["name"] for folder in folders] == [f for f in MODEL_FOLDERS if f not in ("configs", "custom_nodes")]
    assert all(len(folder["folders"]) == 1 and os.path.isabs(folder["folders"][0]) for folder in folders)
    models = await get_json(http, f"{kerniegen.url}/api/experiment/models/checkpoints")
    assert [(m["name"], m["pathIndex"], sorted(m)) for m in models] == [
        ("illustriousXL_v01.safetensors", 0, ["created", "modified", "name", "pathIndex", "size"])]
    for path, status in (("/experiment/models/nope", 404), ("/experiment/models/preview/checkpoints/0/x.webp", 404),
                         ("/experiment/models/preview/checkpoints/zero/x.webp", 500)):
        assert (await request(http, "GET", url(kerniegen, path)))[0] == status, path


async def test_internal_routes(kerniegen: KernieGenServer, http: aiohttp.ClientSession) -> None:
    paths = await get_json(http, f"{kerniegen.url}/internal/folder_paths")
    assert list(paths) == list(MODEL_FOLDERS) and all(os.path.isabs(p[0]) for p in paths.values())
    output = kerniegen.state.dirs.output
    for age, name in ((100, "old.png"), (0, "new.png")):
        (output / name).write_bytes(b"x")
        os.utime(output / name, (1_700_000_000 - age, 1_700_000_000 - age))
    (output / "sub").mkdir()
    assert await get_json(http, f"{kerniegen.url}/internal/files/output") == ["new.png", "old.png"]
    assert await get_json(http, f"{kerniegen.url}/internal/files/input") == []
    status, body, _ = await request(http, "GET", url(kerniegen, "/internal/files/models"))
    assert (status, json.loads(body)) == (400, {"error": "Invalid directory type"})
    for path in ("/api/internal/logs", "/api/internal/folder_paths"):  # no /api twin, as in ComfyUI
        assert (await request(http, "GET", url(kerniegen, path)))[0] == 404


async def test_logs_as_text_entries_and_live_messages(kerniegen: KernieGenServer, http: aiohttp.ClientSession,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.kerniegen")
    async with http.ws_connect(f"{kerniegen.url}/ws?clientId=terminal") as ws:
        assert (await next_json(ws))["type"] == "status"
        status, _, _ = await request(http, "PATCH", url(kerniegen, "/internal/logs/subscribe"),
                                     json={"clientId": "terminal", "enabled": True})
        assert status == 200
        logging.getLogger("gateway.kerniegen.test").info("a line for the terminal")
        message = await next_json(ws)
    assert message["type"] == "logs" and message["data"]["size"] == {"cols": 80, "rows": 24}
    assert [entry["m"] for entry in message["data"]["entries"]] == [
        "INFO gateway.kerniegen.test: a line for the terminal\n"]
    raw = await get_json(http, f"{kerniegen.url}/internal/logs/raw")
    assert raw["entries"][-1] == message["data"]["entries"][0] and sorted(raw) == ["entries", "size"]
    text = await get_json(http, f"{kerniegen.url}/internal/logs")
    assert text.endswith(f"{raw['entries'][-1]['t']} - INFO gateway.kerniegen.test: a line for the terminal\n")
    assert (await request(http, "PATCH", url(kerniegen, "/internal/logs/subscribe"), json={"x": 1}))[0] == 500


# -- without the frontend ----------------------------------------------------------------------------
async def test_without_a_frontend_the_api_still_works(start_kg: StartKernieGen, http: aiohttp.ClientSession,
                                                      caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="gateway.kerniegen")
    server = await start_kg(frontend_dir=None)
    status, body, headers = await request(http, "GET", url(server, "/"))
    assert (status, headers["Content-Type"], headers["Cache-Control"]) == (200, "text/html", "no-cache")
    assert b"KernieGen" in body
    assert await get_json(http, f"{server.url}/extensions") == []
    assert (await request(http, "GET", url(server, "/scripts/app.js")))[0] == 404
    assert await get_json(http, f"{server.url}/templates/index.json") == []
    assert await get_json(http, f"{server.url}/api/settings") == {}
    assert await get_json(http, f"{server.url}/prompt") == {"exec_info": {"queue_remaining": 0}}
    assert "web UI off (frontend_dir=None)" in caplog.text

    await start_kg(frontend_dir=tmp_path / "empty")
    assert "has no index.html; serving the API only" in caplog.text
    build = tmp_path / "build"
    build.mkdir()
    (build / "index.html").write_text("<!doctype html><title>dev build</title>")
    custom = await start_kg(frontend_dir=build)
    assert (await request(http, "GET", url(custom, "/api/")))[1] == (build / "index.html").read_bytes()


async def test_a_missing_frontend_package_is_logged_and_the_api_still_works(
    start_kg: StartKernieGen, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.kerniegen")
    monkeypatch.setattr(frontend, "FRONTEND_PACKAGE", "no_such_frontend_package")  # as if not installed
    server = await start_kg()
    assert "web UI off: the no_such_frontend_package package is not installed" in caplog.text
    assert "pip install 'comfy-gateway[frontend]'" in caplog.text
    status, body, _ = await request(http, "GET", url(server, "/api/"))
    assert status == 200 and b"KernieGen" in body
    assert (await request(http, "GET", url(server, "/index.html")))[0] == 404
    assert await get_json(http, f"{server.url}/api/object_info/EmptyImage")


def test_config_and_command_line_choose_the_frontend(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="frontend_dir"):
        KernieGenConfig(data_dir=tmp_path, frontend_dir="somewhere")  # type: ignore[arg-type]
    parser = build_parser()
    assert config_from_args(parser.parse_args([])).frontend_dir == "package"
    assert config_from_args(parser.parse_args(["--no-frontend"])).frontend_dir is None
    chosen = config_from_args(parser.parse_args(["--frontend-dir", "dist", "--user-dir", "u"]))
    assert (chosen.frontend_dir, chosen.user_dir) == (Path("dist"), Path("u"))
    with pytest.raises(SystemExit):
        parser.parse_args(["--no-frontend", "--frontend-dir", "dist"])
