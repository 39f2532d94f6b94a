"""Recorded WebSocket sessions, and ours to compare with them: opening a socket as the recorder
did, reading a number of frames, and describing frames by type ("status", "binary:1", ...)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.kerniegen.transcript_replay import assert_same_shape

RECEIVE_TIMEOUT_SECONDS = 5.0


@dataclass
class Frame:
    kind: str  # "text" | "binary"
    data: Any  # parsed JSON, or the raw bytes

    @property
    def name(self) -> str:
        if self.kind == "text":
            return _text_name(self.data)
        return f"binary:{struct.unpack('>I', self.data[:4])[0]}"


def _text_name(message: dict[str, Any]) -> str:
    # The final `executing` (node null) is the "done" signal, a different thing from a node start.
    if message["type"] == "executing" and message["data"].get("node", "") is None:
        return "executing:null"
    return str(message["type"])


def recorded_frames(session: dict[str, Any]) -> list[dict[str, Any]]:
    return [message for message in session["messages"] if message["direction"] == "server->client"]


def recorded_name(message: dict[str, Any]) -> str:
    if message["kind"] == "text":
        return _text_name(message["data"])
    return f"binary:{message['binary']['event_type']}"


async def connect(
    http: aiohttp.ClientSession, base_url: str, session: dict[str, Any]
) -> aiohttp.ClientWebSocketResponse:
    """Open a socket on the recorded path and send what the recorded client sent first."""
    ws = await http.ws_connect(base_url + session["handshake"]["request_path"], max_msg_size=0)
    for message in session["messages"]:
        if message["direction"] == "client->server":
            await ws.send_str(json.dumps(message["data"]))
    return ws


async def receive(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[Frame]:
    frames = []
    for _ in range(count):
        message = await ws.receive(timeout=RECEIVE_TIMEOUT_SECONDS)
        if message.type == aiohttp.WSMsgType.TEXT:
            frames.append(Frame("text", json.loads(message.data)))
        elif message.type == aiohttp.WSMsgType.BINARY:
            frames.append(Frame("binary", message.data))
        else:
            raise AssertionError(f"socket ended after {len(frames)} frames: {message.type}")
    return frames


async def receive_until(ws: aiohttp.ClientWebSocketResponse, last: str, **data: Any) -> list[Frame]:
    """Frames up to and including the first one named `last` whose data has the given items."""
    frames: list[Frame] = []
    while True:
        frame = (await receive(ws, 1))[0]
        frames.append(frame)
        if frame.name == last and all(frame.data["data"].get(key) == value for key, value in data.items()):
            return frames


async def assert_silent(ws: aiohttp.ClientWebSocketResponse, seconds: float = 0.05) -> None:
    try:
        message = await ws.receive(timeout=seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected extra frame: {message.data!r:.200}")


def assert_frames_like(recorded: list[dict[str, Any]], ours: list[Frame]) -> None:
    """Same frame types in the same order, each text frame shaped like its recorded twin."""
    assert [frame.name for frame in ours] == [recorded_name(message) for message in recorded]
    for index, (message, frame) in enumerate(zip(recorded, ours, strict=True)):
        if frame.kind == "text":
            assert_same_shape(message["data"], frame.data, f"frame[{index}]")
        else:
            assert_binary_like(message["binary"], frame.data)


def assert_binary_like(recorded: dict[str, Any], payload: bytes) -> None:
    assert payload[:4] == bytes.fromhex(recorded["first_8_bytes_hex"])[:4]
    if recorded["event_type"] == 1:
        assert payload[:8] == bytes.fromhex(recorded["first_8_bytes_hex"])  # type 1, format 2 (PNG)
    elif recorded["event_type"] == 3:
        length = struct.unpack(">I", payload[4:8])[0]
        assert payload[8:8 + length].decode() == recorded["node_id"]
        assert payload[8 + length:].decode() == recorded["text"]
    elif recorded["event_type"] == 4:
        length = struct.unpack(">I", payload[4:8])[0]
        metadata = json.loads(payload[8:8 + length])
        assert_same_shape(recorded["metadata"], metadata)
        assert metadata["image_type"] == recorded["metadata"]["image_type"]


def collapse_progress(names: list[str]) -> list[str]:
    """Runs of progress_state/executing (node start) frames as one entry, where timing decides their number."""
    collapsed: list[str] = []
    for name in names:
        if name in ("progress_state", "executing") and collapsed and collapsed[-1] == "progress...":
            continue
        collapsed.append("progress..." if name in ("progress_state", "executing") else name)
    return collapsed
