"""What one prompt run tells WebSocket clients, following ComfyUI's rules: which messages go to the
submitting client only, which are broadcast, which are skipped for prompts without client_id, and
the progress_state snapshots. Runs in the executor thread and hands finished events to `post`,
which delivers them on the event loop (see ws_hub.WsHub.apply)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.kerniegen.ws_frames import encode_message, encode_text


@dataclass(frozen=True)
class Frame:
    """A ready frame for one client id, or for every socket when `target` is None."""

    payload: str | bytes
    target: Any


@dataclass(frozen=True)
class NodeRunning:
    """The node a reconnecting client is told about (ComfyUI's server.last_node_id); None when done."""

    node_id: str | None


@dataclass(frozen=True)
class ImageFrame:
    """An image from a node; the hub picks type 1 or type 4 by the target client's feature flags.

    `progress` is the `progress` message that belongs with it: ComfyUI sends it before a type-1
    frame but after a type-4 frame."""

    image_format: str
    image: bytes
    metadata: dict[str, Any]
    target: Any
    progress: str | None


RunEvent = Frame | NodeRunning | ImageFrame

# Without a client_id, ComfyUI sends these to nobody (it only broadcasts progress-type messages).
_CLIENT_ONLY = frozenset(
    {"execution_start", "execution_cached", "execution_success", "execution_error", "executing", "executed"}
)


class RunReporter:
    """Speaks for one prompt run; keeps the status messages that history stores."""

    def __init__(self, prompt_id: str, client_id: Any, post: Callable[[RunEvent], None]) -> None:
        self.prompt_id = prompt_id
        self.client_id = client_id
        self.status_messages: list[tuple[str, dict[str, Any]]] = []
        self._post = post
        self._progress: dict[str, dict[str, Any]] = {}  # node id -> {value, max, state}, in first-seen order
        self._held_progress: str | None = None

    # -- messages history keeps (ComfyUI's PromptExecutor.add_message) --------------------------
    def add_message(self, event: str, data: dict[str, Any], *, broadcast: bool = False) -> None:
        stamped = {**data, "timestamp": int(time.time() * 1000)}
        self.status_messages.append((event, stamped))
        if self.client_id is not None or broadcast:
            self.send(event, stamped)

    def send(self, event: str, data: dict[str, Any]) -> None:
        """A JSON message to the submitting client (or everyone, for broadcastable events)."""
        self._flush_progress()
        if self.client_id is None and event in _CLIENT_ONLY:
            return
        self._post(Frame(encode_message(event, data), self.client_id))

    # -- node lifecycle -----------------------------------------------------------------------------
    def executing(self, node_id: str) -> None:
        if self.client_id is None:
            return
        self._flush_progress()
        self._post(NodeRunning(node_id))
        self.send("executing", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id})

    def start_progress(self, node_id: str) -> None:
        self._progress[node_id] = {"value": 0.0, "max": 1.0, "state": "running"}
        self._send_progress_state()

    def update_progress(self, node_id: str, value: Any, max_value: Any) -> None:
        """progress_state now; the `progress` message waits to see whether an image follows."""
        self._progress[node_id] = {"value": value, "max": max_value, "state": "running"}
        self._send_progress_state()
        self._held_progress = encode_message(
            "progress", {"value": value, "max": max_value, "prompt_id": self.prompt_id, "node": node_id}
        )

    def finish_progress(self, node_id: str) -> None:
        # A node never started (served from cache) gets ComfyUI's fresh entry: value 0, max 1, ints.
        entry = self._progress.setdefault(node_id, {"value": 0, "max": 1, "state": "pending"})
        entry["state"] = "finished"
        entry["value"] = entry["max"]
        self._send_progress_state()

    # -- what nodes send while they run -------------------------------------------------------------
    def image(self, node_id: str, image_format: str, image: bytes) -> None:
        metadata = {
            "node_id": node_id,
            "prompt_id": self.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }
        progress, self._held_progress = self._held_progress, None
        self._post(ImageFrame(image_format, image, metadata, self.client_id, progress))

    def text(self, node_id: str, text: str) -> None:
        """Binary TEXT frames go to every socket, whoever submitted the prompt."""
        self._flush_progress()
        self._post(Frame(encode_text(node_id, text), None))

    def finish_run(self) -> None:
        self._flush_progress()
        self._post(NodeRunning(None))

    # -- internals ----------------------------------------------------------------------------------
    def _send_progress_state(self) -> None:
        self._flush_progress()
        nodes = {
            node_id: {
                "value": entry["value"],
                "max": entry["max"],
                "state": entry["state"],
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, entry in self._progress.items()
            if entry["state"] != "pending"
        }
        message = encode_message("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes})
        self._post(Frame(message, self.client_id))

    def _flush_progress(self) -> None:
        if self._held_progress is not None:
            held, self._held_progress = self._held_progress, None
            self._post(Frame(held, self.client_id))
