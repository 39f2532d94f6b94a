"""Replaying recorded ComfyUI exchanges (tests/fixtures/comfyui) against a KernieGen and comparing
the answers by shape: same status, same Content-Type and file headers, and the same JSON structure
recursively (keys and value types; ids, timestamps and other values may differ)."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui"
# Keys that are ids rather than field names: uuids, 32-hex sids, node ids, the recorder's chosen ids.
_ID_KEY = re.compile(r"^([0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}|[0-9a-f]{32}|[0-9]+|gwref-[\w-]+)$")
# Headers whose presence (and for some, value) ComfyUI clients can observe.
_COMPARED_VALUES = ("Content-Type", "Content-Disposition")
_COMPARED_PRESENCE = ("Etag", "Last-Modified", "Accept-Ranges", "Content-Range", "Cache-Control")


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def exchanges(transcript: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = transcript["exchanges"] if "exchanges" in transcript else [transcript]
    return found


def exchange(transcript: dict[str, Any], label: str) -> dict[str, Any]:
    return next(item for item in exchanges(transcript) if item.get("label") == label)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    return type(value).__name__


def _id_keyed(value: dict[str, Any]) -> bool:
    return all(_ID_KEY.match(key) for key in value)


def assert_same_shape(expected: Any, actual: Any, path: str = "$") -> None:
    """Same keys and value types, recursively.

    Lists of the same length and objects with the same keys are compared element by element. Maps
    keyed by ids (prompt or node ids) with other keys, lists of objects, and lists of another length
    are collections: each element must have the shape of some recorded element (an empty side has
    nothing to compare)."""
    assert _kind(expected) == _kind(actual), f"{path}: recorded {_kind(expected)}, got {_kind(actual)}: {actual!r:.200}"
    if isinstance(expected, dict):
        if _id_keyed(expected) and _id_keyed(actual) and set(expected) != set(actual):
            _assert_collection(list(expected.values()), list(actual.values()), path)
            return
        assert set(expected) == set(actual), f"{path}: keys {sorted(expected)} != {sorted(actual)}"
        for key in expected:
            assert_same_shape(expected[key], actual[key], f"{path}.{key}")
    elif isinstance(expected, list):
        if all(isinstance(item, dict) for item in expected + actual):
            _assert_collection(expected, actual, path)  # records (errors, refs): ComfyUI's order is a set's
        elif len(expected) == len(actual):
            for index, (recorded, got) in enumerate(zip(expected, actual, strict=True)):
                assert_same_shape(recorded, got, f"{path}[{index}]")
        else:
            _assert_collection(expected, actual, path)


def _assert_collection(expected: list[Any], actual: list[Any], path: str) -> None:
    if not expected:
        return
    for index, got in enumerate(actual):
        failures = []
        for recorded in expected:
            try:
                assert_same_shape(recorded, got, f"{path}[{index}]")
                break
            except AssertionError as failure:
                failures.append(failure)
        else:
            raise failures[0]


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Replayer:
    """Sends recorded requests to one KernieGen, translating recorded prompt ids to its own."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url
        self.ids: dict[str, str] = {}  # recorded value -> value on this KernieGen (ids, file names)

    def translate(self, text: str) -> str:
        for recorded, ours in self.ids.items():
            text = text.replace(recorded, ours)
        return text

    async def send(self, request: dict[str, Any], **extra: Any) -> Reply:
        headers = {name: value for name, value in request.get("headers", {}).items()
                   if name in ("Host", "Origin", "Content-Type", "Range")}
        body = request.get("body") or {}
        data: Any = None
        if "json" in body:
            data = self.translate(json.dumps(body["json"]))
        elif "raw_text" in body:
            data = body["raw_text"]
        if data is None and "Content-Type" in headers and not extra.get("data"):
            data = b""
        url = self.base_url + self.translate(request["url_as_sent"])
        kwargs: dict[str, Any] = {"headers": headers, "data": data, "skip_auto_headers": ("Content-Type",)}
        kwargs.update(extra)
        async with self.session.request(request["method"], url, **kwargs) as response:
            return Reply(response.status, response.headers, await response.read())

    async def replay(self, recorded: dict[str, Any], **extra: Any) -> Reply:
        """Send one recorded exchange, check the answer against the recording, learn new prompt ids."""
        reply = await self.send(recorded["request"], **extra)
        check_reply(recorded["response"], reply, self)
        body = recorded["response"].get("body") or {}
        answer = body.get("json")
        if recorded["request"]["method"] == "POST" and isinstance(answer, dict) and "prompt_id" in answer:
            self.ids.setdefault(answer["prompt_id"], reply.json()["prompt_id"])
        return reply

    async def wait_for_history(self, prompt_id: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            async with self.session.get(f"{self.base_url}/history/{prompt_id}") as response:
                found: dict[str, Any] = await response.json()
            if found:
                return found[prompt_id]
            assert asyncio.get_running_loop().time() < deadline, f"prompt {prompt_id} never finished"
            await asyncio.sleep(0.01)


def check_reply(recorded: dict[str, Any], reply: Reply, replayer: Replayer | None = None) -> None:
    assert reply.status == recorded["status"], (
        f"status {reply.status} != recorded {recorded['status']}: {reply.body[:300]!r}")
    headers = recorded["headers"]
    for name in _COMPARED_VALUES:
        expected = headers.get(name)
        if expected is not None and replayer is not None:
            expected = replayer.translate(expected)
        assert reply.headers.get(name) == expected, f"{name}: {reply.headers.get(name)!r} != recorded {expected!r}"
    for name in _COMPARED_PRESENCE:
        assert (name in reply.headers) == (name in headers), f"header {name} present: {name in reply.headers}"
    body = recorded.get("body")
    if body is None:
        assert reply.body == b"", f"recorded an empty body, got {reply.body[:200]!r}"
    elif "json" in body:
        assert_same_shape(body["json"], reply.json())
    elif "text" in body:
        assert reply.body.decode() == body["text"]
    else:
        assert reply.body, "recorded a body, got none"
