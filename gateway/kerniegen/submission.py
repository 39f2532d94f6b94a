"""POST /prompt, body to decision: ComfyUI's rules for `number` and `front`, `prompt_id`,
`extra_data` and `client_id`, validation, and the answer (accepted, rejected or a 500)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.kerniegen.prompt_queue import SENSITIVE_EXTRA_DATA_KEYS, PromptQueue, QueueItem
from gateway.kerniegen.validation import ValidationResult

NO_PROMPT = {
    "error": {"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}},
    "node_errors": {},
}


@dataclass(frozen=True)
class Accepted:
    item: QueueItem
    node_errors: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {"prompt_id": self.item.prompt_id, "number": self.item.number, "node_errors": self.node_errors}


@dataclass(frozen=True)
class Rejected:
    status: int
    body: dict[str, Any] | None  # None: ComfyUI's handler raised, so aiohttp's plain-text 500


SERVER_FAILURE = Rejected(500, None)
Validate = Callable[[Any, Any], ValidationResult]  # (prompt, partial_execution_targets) -> result


def decide(body: Any, queue: PromptQueue, validate: Validate) -> Accepted | Rejected:
    """What ComfyUI's post_prompt does with an already parsed JSON body."""
    if not isinstance(body, dict):
        return _decide_not_a_dict(body, queue)
    if "number" in body:
        try:
            number: int | float = float(body["number"])
        except (TypeError, ValueError, OverflowError):
            return SERVER_FAILURE
    else:
        number = queue.take_number(front=bool(body.get("front")))
    if "prompt" not in body:
        return Rejected(400, NO_PROMPT)
    prompt = body["prompt"]
    prompt_id = str(body.get("prompt_id", uuid.uuid4()))  # accepted verbatim, str() of whatever was sent
    result = validate(prompt, body.get("partial_execution_targets"))
    extra_data = body.get("extra_data", {})
    if not isinstance(extra_data, dict):
        return SERVER_FAILURE  # ComfyUI fails here or later in its worker; a 500 now is the clearer answer
    if "client_id" in body:
        extra_data["client_id"] = body["client_id"]
    if result.status == 400:
        return Rejected(400, {"error": result.error, "node_errors": result.node_errors})
    if result.status != 200:
        return SERVER_FAILURE
    sensitive = {key: extra_data.pop(key) for key in SENSITIVE_EXTRA_DATA_KEYS if key in extra_data}
    item = QueueItem(number, prompt_id, prompt, extra_data, list(result.outputs_to_execute), sensitive)
    return Accepted(item, result.node_errors)


def _decide_not_a_dict(body: Any, queue: PromptQueue) -> Rejected:
    # ComfyUI runs `"number" in body`, `"front" in body` and `"prompt" in body` on whatever the JSON
    # was: a list or string survives the membership test but not the indexing that follows.
    if not isinstance(body, (list, str)):
        return SERVER_FAILURE
    if "number" in body or "front" in body:
        return SERVER_FAILURE
    queue.take_number(front=False)
    if "prompt" in body:
        return SERVER_FAILURE
    return Rejected(400, NO_PROMPT)
