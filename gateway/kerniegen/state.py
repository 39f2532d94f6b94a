"""The running KernieGen's shared parts, reachable from every handler through one typed app key."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from gateway.kerniegen.config import Directories, KernieGenConfig
from gateway.kerniegen.faults import FaultState
from gateway.kerniegen.history import History
from gateway.kerniegen.prompt_queue import PromptQueue
from gateway.kerniegen.worker import PromptWorker
from gateway.kerniegen.ws_hub import WsHub


@dataclass(frozen=True)
class KernieGenState:
    config: KernieGenConfig
    dirs: Directories
    queue: PromptQueue
    history: History
    hub: WsHub
    worker: PromptWorker
    faults: FaultState


STATE = web.AppKey("kerniegen_state", KernieGenState)
