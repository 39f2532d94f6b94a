"""KernieGen's start-up configuration: where files live, how slow nodes are, what models it has and
which faults it injects. Values are frozen and checked once; the running server keeps its own
mutable copy of the faults (see faults.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from gateway.kerniegen.inventory import Inventory

DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
# ComfyUI keeps at most 10,000 history entries in memory (MAXIMUM_HISTORY_SIZE).
DEFAULT_MAX_HISTORY_ITEMS = 10_000
# Unsent bytes one WebSocket may hold: its queued frames plus what its transport has not yet written.
# A busy run sends a few KiB per node and a 2048x2048 image frame is under 1 MiB, so only a client
# that has stopped reading gets near it.
DEFAULT_WS_OUTBOX_BYTES = 4 * 1024 * 1024
# Where the web UI comes from: the installed comfyui-frontend-package, a directory, or nothing.
FRONTEND_FROM_PACKAGE: Literal["package"] = "package"


@dataclass(frozen=True)
class Faults:
    """Failures other tests ask for when they create a KernieGen."""

    fail_next_prompts: int = 0  # the next N prompts fail at run time with execution_error
    error_endpoints: frozenset[str] = frozenset()  # route templates answered with 500, e.g. "/queue"
    delay_endpoints: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # template -> s
    drop_websockets: bool = False  # close every socket right after its connect-time status frame

    def __post_init__(self) -> None:
        if self.fail_next_prompts < 0:
            raise ValueError("faults.fail_next_prompts must be >= 0")
        for template, seconds in self.delay_endpoints.items():
            if seconds < 0:
                raise ValueError(f"faults.delay_endpoints[{template!r}] must be >= 0 seconds")
        object.__setattr__(self, "error_endpoints", frozenset(self.error_endpoints))
        object.__setattr__(self, "delay_endpoints", MappingProxyType(dict(self.delay_endpoints)))


@dataclass(frozen=True, kw_only=True)
class KernieGenConfig:
    """Everything a KernieGen needs to start; `data_dir` holds output/, input/ and temp/ by default."""

    host: str = "127.0.0.1"
    port: int = 8189  # 0 picks a free port
    data_dir: Path
    output_dir: Path | None = None
    input_dir: Path | None = None
    temp_dir: Path | None = None
    step_delay_ms: float = 20.0  # sleep per executed node, so tests can watch queued/running states
    inventory: Inventory = Inventory()
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES  # every request body, as ComfyUI's --max-upload-size
    max_history_items: int = DEFAULT_MAX_HISTORY_ITEMS
    max_pending_prompts: int = 10_000  # POST /prompt answers 503 beyond this (ComfyUI has no bound)
    # A socket whose unsent bytes would pass this is dropped (its connection aborted), so a client that
    # stops reading costs at most this much and never holds up the run or other sockets. One frame larger
    # than it (a big SaveImageWebsocket image) is still taken when the backlog before it is within the
    # bound; two such frames pending at once drop the socket, so raise the bound for batches of them.
    ws_outbox_bytes: int = DEFAULT_WS_OUTBOX_BYTES
    faults: Faults = Faults()
    # The web UI: "package" serves comfyui-frontend-package when installed (the `frontend` extra),
    # a Path serves that directory (a frontend build), None serves no UI (the API still works).
    frontend_dir: Path | Literal["package"] | None = FRONTEND_FROM_PACKAGE
    user_dir: Path | None = None  # ComfyUI's user/ (settings, saved workflows); default DATA_DIR/user
    max_userdata_bytes: int = 32 * 1024 * 1024  # one POST /userdata/{file} body (a saved workflow)
    max_settings_bytes: int = 1024 * 1024  # the whole settings file, and any one POST /settings body

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.step_delay_ms < 0:
            raise ValueError(f"step_delay_ms must be >= 0, got {self.step_delay_ms}")
        if isinstance(self.frontend_dir, str) and self.frontend_dir != FRONTEND_FROM_PACKAGE:
            raise ValueError(
                f"frontend_dir must be a Path, {FRONTEND_FROM_PACKAGE!r} or None, got {self.frontend_dir!r}")
        for name in ("max_upload_bytes", "max_history_items", "max_pending_prompts", "ws_outbox_bytes",
                     "max_userdata_bytes", "max_settings_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


@dataclass(frozen=True)
class Directories:
    """The three ComfyUI file areas, as absolute normalised paths (ComfyUI's checks compare strings)."""

    output: Path
    input: Path
    temp: Path
    temp_is_owned: bool  # True when temp/ is KernieGen's own default, so wiping it is safe

    @classmethod
    def from_config(cls, config: KernieGenConfig) -> Directories:
        base = Path(config.data_dir).expanduser()

        def absolute(path: Path | None, default: str) -> Path:
            chosen = Path(path).expanduser() if path is not None else base / default
            return Path(os.path.abspath(chosen))

        return cls(
            output=absolute(config.output_dir, "output"),
            input=absolute(config.input_dir, "input"),
            temp=absolute(config.temp_dir, "temp"),
            temp_is_owned=config.temp_dir is None,
        )

    def by_type(self, kind: str) -> Path | None:
        """ComfyUI's get_directory_by_type: output, input or temp, else None."""
        return {"output": self.output, "input": self.input, "temp": self.temp}.get(kind)
