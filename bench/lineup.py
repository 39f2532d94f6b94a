"""Brings the benchmark's cast up: the two upstreams, then every wanted target, then checks each target's
answers. What comes out is the targets fit to measure and a status for every target, with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import targets
from processes import ServerProcess
from verify import verify_target


@dataclass(frozen=True)
class TargetStatus:
    status: str  # "ok" | "not available" (cannot run here) | "failed" (did not start or died) | "refused"
    detail: str = ""
    verified: bool = False  # every checked answer was right


class StartError(Exception):
    """An upstream did not come up: nothing can be measured."""


class Lineup:
    """Owns every process it starts; `stop()` ends them all, upstreams last."""

    def __init__(self, scratch: Path, server_cpu: int | None) -> None:
        self.scratch = scratch
        self.server_cpu = server_cpu
        self.processes: list[ServerProcess] = []
        self.backend_urls: dict[str, str] = {}
        self.upstreams: dict[str, ServerProcess] = {}

    async def start(self, launch: targets.Launch) -> tuple[ServerProcess, str | None]:
        process = ServerProcess(launch.name, launch.command, self.scratch / f"{launch.name}.log",
                                cpu=self.server_cpu, env=launch.env, cwd=launch.cwd)
        self.processes.append(process)
        problem = await asyncio.to_thread(process.wait_listening, targets.HOST, launch.port,
                                          launch.startup_seconds)
        if problem and process.log_tail():
            problem += f"; its log ends:\n{process.log_tail()}"
        return process, problem

    async def start_upstreams(self, data_dir: Path) -> None:
        launches = targets.upstream_launches(data_dir)
        self.backend_urls = {name: f"http://{targets.HOST}:{launch.port}" for name, launch in launches.items()}
        for name, launch in launches.items():
            process, problem = await self.start(launch)
            if problem:
                raise StartError(f"upstream {name} {problem}")
            self.upstreams[name] = process

    async def start_targets(self, wanted: Sequence[str]) -> tuple[dict[str, targets.Target], dict[str, TargetStatus]]:
        """Starts the wanted proxies side by side; direct needs nothing more than the upstreams."""
        statuses: dict[str, TargetStatus] = {}
        launches: dict[str, targets.Launch] = {}
        for name in wanted:
            if name == "direct":
                continue
            made = await asyncio.to_thread(self._launch_for, name)
            if isinstance(made, str):
                statuses[name] = TargetStatus("not available", made)
            else:
                launches[name] = made
        live: dict[str, targets.Target] = {}
        if "direct" in wanted:
            live["direct"] = targets.direct_target(self.upstreams, self.backend_urls)
        started = await asyncio.gather(*(self.start(launch) for launch in launches.values()))
        for (name, launch), (process, problem) in zip(launches.items(), started, strict=True):
            if problem:
                statuses[name] = TargetStatus("failed", f"did not start: {problem}")
            else:
                live[name] = targets.target_for(name, launch, process, self.backend_urls, self.upstreams)
        return live, statuses

    def _launch_for(self, name: str) -> targets.Launch | str:
        if name == "nginx":
            return targets.nginx_launch(self.scratch, self.backend_urls)
        if name == "plain":
            return targets.plain_launch(self.backend_urls)
        if name == "gateway-redis":
            return targets.gateway_launch(self.scratch, self.backend_urls, name=name, store="redis")
        if name == "gateway-2w":
            return targets.gateway_launch(self.scratch, self.backend_urls, name=name, workers=2)
        return targets.gateway_launch(self.scratch, self.backend_urls)

    @asynccontextmanager
    async def fresh(self, name: str) -> AsyncIterator[targets.Target]:
        """A new process of target `name` (its own port), stopped when the context ends."""
        made = await asyncio.to_thread(self._launch_for, name)
        if isinstance(made, str):
            raise StartError(f"a fresh {name}: {made}")
        process, problem = await self.start(made)
        try:
            if problem:
                raise StartError(f"a fresh {name} {problem}")
            yield targets.target_for(name, made, process, self.backend_urls, self.upstreams)
        finally:
            process.stop()
            self.processes.remove(process)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


async def verify_all(live: dict[str, targets.Target], statuses: dict[str, TargetStatus], *,
                     files: Mapping[str, tuple[int, str]], prompt_body: bytes) -> None:
    """Checks every live target; a target that answers anything wrong is refused and leaves `live`."""
    verdicts = await asyncio.gather(*(verify_target(target.routes, files=files, prompt_body=prompt_body,
                                                    unknown_backend_url=target.unknown_backend_url)
                                      for target in live.values()))
    for name, problems in zip(list(live), verdicts, strict=True):
        if problems:
            statuses[name] = TargetStatus("refused", "answered wrong: " + "; ".join(problems))
            del live[name]
        else:
            statuses[name] = TargetStatus("ok", verified=True)


def note_exits(live: dict[str, targets.Target], statuses: dict[str, TargetStatus]) -> list[str]:
    """Marks targets whose server died during the run as failed; returns their names."""
    died = [name for name, target in live.items() if target.process.exited() is not None]
    for name in died:
        statuses[name] = TargetStatus("failed", "exited during the run; its log ends:\n"
                                      + live[name].process.log_tail(), verified=True)
    return died
