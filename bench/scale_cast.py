"""The scale benchmark's processes: the fake upstreams (two processes, each answering as half of the
backends on a port per backend) and one real gateway per case, started on a state store already filled with
that case's affinity entries through the gateway's own store code and settings.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import scale_workload
import targets
import workload
from gateway.config.settings import StoreSettings, load_settings
from gateway.state.store import PromptRecord, open_store
from lineup import Lineup, StartError
from processes import ServerProcess, free_port

BENCH_DIR = Path(__file__).resolve().parent
UPSTREAM_PROCESSES = 2  # like run.py's alpha and beta; with 20 backends each answers on 10 ports


@dataclass(frozen=True)
class Case:
    """One gateway configuration under load: how many affinity entries its store holds, how many backends."""

    store_size: int
    backends: int
    spread: bool  # the load asks for prompts on every backend, else only for those on the first

    @property
    def key(self) -> str:
        return f"entries={self.store_size},backends={self.backends},load={'all' if self.spread else 'first'}"

    @property
    def label(self) -> str:
        return f"gateway-{self.store_size}-{self.backends}-{'all' if self.spread else 'first'}"

    @property
    def backend_names(self) -> tuple[str, ...]:
        return scale_workload.ALL_BACKENDS[:self.backends]


@dataclass(frozen=True)
class GatewayUnderTest:
    """A started gateway and what its load asks for: ids it holds affinity for, and which backend holds each."""

    case: Case
    base_url: str
    process: ServerProcess
    holders: dict[str, str]  # prompt id -> backend, in the order the load asks
    ids_file: Path


class Cast:
    """Owns every process it starts (through a Lineup); `stop()` ends them all."""

    def __init__(self, scratch: Path, server_cpu: int | None) -> None:
        self.scratch = scratch
        self.lineup = Lineup(scratch, server_cpu)
        self.upstreams: list[ServerProcess] = []
        self.backend_urls: dict[str, str] = {}
        self.changing_urls: dict[str, str] = {}  # backends whose GET /history is written otherwise each time

    async def start_upstreams(self, backends: Sequence[str], ids_file: Path, history_entries: int,
                              changing: Sequence[str] = ()) -> None:
        """Every backend of `backends` on its own port, and those of `changing` on one more (scale_upstream.py
        --changing)."""
        ports = {name: free_port() for name in backends}
        changing_ports = {name: free_port() for name in changing}
        for index in range(min(UPSTREAM_PROCESSES, len(backends))):
            mine = list(backends[index::UPSTREAM_PROCESSES])
            command = [sys.executable, str(BENCH_DIR / "scale_upstream.py"), "--host", targets.HOST,
                       "--ids", str(ids_file), "--history-entries", str(history_entries)]
            for name in mine:
                command += ["--listen", f"{name}={ports[name]}"]
            opened = [ports[name] for name in mine]
            for name in (name for name in mine if name in changing_ports):
                command += ["--changing", f"{name}={changing_ports[name]}"]
                opened.append(changing_ports[name])
            # Ports open one after another once their answers are built: the last one open means all are.
            launch = targets.Launch(f"upstream-{index}", command, opened[-1], startup_seconds=60.0)
            process, problem = await self.lineup.start(launch)
            if problem:
                raise StartError(f"upstream {index} ({', '.join(mine)}) {problem}")
            self.upstreams.append(process)
        self.backend_urls = {name: f"http://{targets.HOST}:{port}" for name, port in ports.items()}
        self.changing_urls = {name: f"http://{targets.HOST}:{port}" for name, port in changing_ports.items()}

    def upstream_of(self, backend: str) -> ServerProcess:
        return self.upstreams[scale_workload.ALL_BACKENDS.index(backend) % UPSTREAM_PROCESSES]

    async def start_gateway(self, case: Case, request_ids: Sequence[int], *, label: str | None = None,
                            overrides: Mapping[str, int] | None = None,
                            urls: Mapping[str, str] | None = None) -> GatewayUnderTest | str:
        """The gateway for one case, or why it could not start. `overrides`: top-level settings besides the
        defaults (the merge caches' sizes); `urls`: backends answering elsewhere than their usual port."""
        label = label or case.label
        case_dir = self.scratch / label
        case_dir.mkdir(parents=True, exist_ok=True)
        urls = {name: (urls or {}).get(name, self.backend_urls[name]) for name in case.backend_names}
        # The store on every request's path (no lookup memory in front of it): what this benchmark scales is the
        # store's size and the backend count, not how often clients poll the same prompt.
        launch = targets.gateway_launch(case_dir, urls, settings=overrides, store_settings={"lookup_cache_seconds": 0})
        if isinstance(launch, str):
            return launch
        settings = load_settings(case_dir / "gateway.toml", env={}).settings
        await prefill_store(settings.store, case.store_size, case.backend_names)
        holders = {scale_workload.affinity_prompt_id(i): scale_workload.holder(i, case.backend_names)
                   for i in request_ids}
        ids_file = case_dir / "request-ids.txt"
        ids_file.write_text("\n".join(holders) + "\n")
        process, problem = await self.lineup.start(dataclasses.replace(launch, name=label))
        if problem:
            return f"did not start: {problem}"
        return GatewayUnderTest(case, f"http://{targets.HOST}:{launch.port}", process, holders, ids_file)

    def stop(self) -> None:
        self.lineup.stop()


async def prefill_store(settings: StoreSettings, size: int, backends: Sequence[str]) -> None:
    """`size` affinity entries, spread round robin over `backends`, written as the gateway writes them (one
    record_prompt each, through its own store code), all inside the retention window."""
    store = await open_store(settings)
    now = time.time()
    try:
        for index in range(size):
            await store.record_prompt(PromptRecord(
                prompt_id=scale_workload.affinity_prompt_id(index), backend=scale_workload.holder(index, backends),
                user=None, client_id=workload.WS_CLIENT_ID, submitted_at=now - (size - index) * 1e-3))
        stored = await store.count_prompts()
    finally:
        await store.close()
    if stored != size:
        raise StartError(f"the state store at {settings.path} holds {stored} prompts after filling in {size}")
