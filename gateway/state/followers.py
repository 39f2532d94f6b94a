"""The client sockets open in this process, by clientId, and the prompts whose POST /prompt answer they await.

A client follows its prompts on /ws?clientId=X; a prompt names X as its client_id. When POST /prompt routes a
prompt, the socket open for its client_id is told first (`prompt_routed`: it follows that backend too, and
holds the prompt's events); once the answer is written, or the submission failed, it is told again
(`answered`: the held events go on). The newest socket of one clientId wins, as in ComfyUI's own map.
"""

from __future__ import annotations

from typing import Protocol


class Follower(Protocol):
    """One client socket, as POST /prompt sees it (datapath/aio/fanin.py)."""

    async def follow(self, backend: str, prompt_id: str) -> None:
        """Follow `backend` too (returns once its socket is open, or could not be), and hold `prompt_id`'s events."""

    def answered(self, prompt_id: str) -> None:
        """The POST /prompt answer naming `prompt_id` was written (or failed): its held events go on."""


class Followers:
    def __init__(self) -> None:
        self._by_client: dict[str, Follower] = {}
        self._awaiting: dict[str, Follower] = {}  # prompt id → the socket holding its events

    def __len__(self) -> int:
        return len(self._by_client)

    def add(self, client_id: str, follower: Follower) -> None:
        self._by_client[client_id] = follower

    def remove(self, client_id: str, follower: Follower) -> None:
        if self._by_client.get(client_id) is follower:
            del self._by_client[client_id]
        for prompt_id in [p for p, f in self._awaiting.items() if f is follower]:
            del self._awaiting[prompt_id]

    async def prompt_routed(self, client_id: str, backend: str, prompt_id: str) -> None:
        follower = self._by_client.get(client_id)
        if follower is None:
            return
        self._awaiting[prompt_id] = follower
        await follower.follow(backend, prompt_id)

    def answered(self, prompt_id: str) -> None:
        follower = self._awaiting.pop(prompt_id, None)
        if follower is not None:
            follower.answered(prompt_id)

    def released(self, prompt_id: str) -> None:
        """The socket let `prompt_id`'s events go on by itself (its hold timed out or overflowed)."""
        self._awaiting.pop(prompt_id, None)
