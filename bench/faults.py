"""The fault bench in one command: `python bench/faults.py [--smoke] [--seconds 90] [--out bench/results]`.

Steady mixed client traffic (submissions, history polls, /view downloads, WebSockets) through a gateway process
while backend `alpha` (a KernieGen process) is killed and restarted twice and backend `beta` (a KernieGen
process behind a fault proxy) is slowed, then hung, then healed. Reports requests served, errors by kind, p99
latency per backend, prompts accepted / completed / lost, affinity mappings lost, the circuit breakers'
transitions, and the gateway's open fds and RSS at start and end.

Every phase (traffic, drain, affinity check, metrics) has a bound; one that runs past it is cut short and named
in the report as stalled, never waited on.

"Lost" is the gateway's loss: a prompt it acknowledged that is not on the backend it named, or whose affinity
mapping is gone or wrong. A prompt still queued inside `alpha` when alpha was killed dies with that process
(ComfyUI keeps its queue in memory too); those are counted apart. Exit status: 0 when nothing was lost and the
gateway stayed up and no phase stalled, 1 otherwise, 2 when nothing started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from entry import run_main, write_report
from processes import ServerProcess, free_port, gateway_process, rss_kib

BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"
REQUEST_SECONDS = 30.0  # one client request at most, answer read
T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    seconds: float  # of traffic, faults included
    drain_seconds: float  # afterwards, for the acknowledged prompts to finish
    submitters: int
    pollers: int
    viewers: int
    sockets: int
    smoke: bool

    def bounds(self) -> dict[str, float]:
        """Each phase's bound in seconds: its planned length plus room for one request in flight to time out
        (and, in the traffic, for alpha's restart); past it the phase counts as stalled."""
        return {"traffic": self.seconds + REQUEST_SECONDS + 30.0, "drain": self.drain_seconds + REQUEST_SECONDS,
                "affinity check": 120.0, "metrics": 15.0}

    def schedule(self) -> list[tuple[float, str]]:
        """(fraction of the run, action): alpha killed and restarted twice; beta slowed, hung, healed."""
        return [(0.15, "kill alpha"), (0.20, "slow beta"), (0.30, "start alpha"), (0.40, "hang beta"),
                (0.50, "kill alpha"), (0.65, "start alpha"), (0.70, "heal beta")]


def prompt_graph(tag: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": tag % 4096}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "faults"}},
    }


class FaultProxy:
    """TCP in front of a backend: `ok` passes bytes, `slow` delays each chunk from the backend, `hang` holds
    them (the gateway's timeouts end such calls)."""

    def __init__(self, target_port: int, *, slow_seconds: float) -> None:
        self.target_port = target_port
        self.slow_seconds = slow_seconds
        self.mode = "ok"
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            backend_r, backend_w = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        up = asyncio.create_task(self._pump(client_r, backend_w, delay=False))
        down = asyncio.create_task(self._pump(backend_r, client_w, delay=True))
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the bench is over: the connection just goes (a handler's cancellation would only be logged)
        finally:
            for task in (up, down):
                task.cancel()
            client_w.transport.abort()
            backend_w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delay: bool) -> None:
        with contextlib.suppress(ConnectionError):
            await self._copy(reader, writer, delay=delay)

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delay: bool) -> None:
        while data := await reader.read(65536):
            while delay and self.mode == "hang":
                await asyncio.sleep(0.05)
            if delay and self.mode == "slow":
                await asyncio.sleep(self.slow_seconds)
            writer.write(data)
            await writer.drain()


@dataclass
class Tally:
    requests: Counter[str] = field(default_factory=Counter)  # kind -> answered
    errors: Counter[str] = field(default_factory=Counter)  # "kind status" or "kind ExceptionName"
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # backend -> seconds
    accepted: dict[str, tuple[str, float]] = field(default_factory=dict)  # prompt id -> (backend, when)
    completed: set[str] = field(default_factory=set)
    outputs: list[dict[str, str]] = field(default_factory=list)
    ws_messages: int = 0
    ws_sessions: int = 0

    def answer(self, kind: str, status: int, backend: str, seconds: float) -> None:
        self.requests[kind] += 1
        self.latencies[backend or "gateway"].append(seconds)
        if status >= 400:
            self.errors[f"{kind} {status}"] += 1

    def fail(self, kind: str, exc: BaseException) -> None:
        self.requests[kind] += 1
        self.errors[f"{kind} {exc.__class__.__name__}"] += 1


class Bench:
    def __init__(self, plan: Plan, scratch: Path) -> None:
        self.plan, self.scratch = plan, scratch
        self.ports = {"alpha": free_port(), "beta": free_port(), "gateway": free_port()}
        self.url = f"http://{HOST}:{self.ports['gateway']}"
        self.processes: dict[str, ServerProcess] = {}
        self.proxy = FaultProxy(self.ports["beta"], slow_seconds=0.3 if plan.smoke else 0.5)
        self.tally = Tally()
        self.kills: list[float] = []  # when alpha was killed
        self.faults: list[tuple[float, str]] = []
        self.phases: dict[str, float] = {}  # phase -> seconds it took
        self.stalled: list[str] = []  # phases cut short at their bound
        self.placed: dict[str, bool] = {}  # acknowledged prompt -> still placed on its backend (as checked)

    # --- processes ----------------------------------------------------------------------------------------------

    def start_backend(self, name: str) -> str | None:
        process = ServerProcess(name, [sys.executable, "-m", "gateway.kerniegen", "--port", str(self.ports[name]),
                                       "--data-dir", str(self.scratch / name), "--no-frontend",
                                       "--step-delay-ms", "5"], self.scratch / f"{name}.log")
        self.processes[name] = process
        return process.wait_listening(HOST, self.ports[name], 30)

    def kill_backend(self, name: str) -> None:
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.popen.wait(10)

    def start_gateway(self) -> str | None:
        timeouts = "connect_seconds = 1.0\nfirst_byte_seconds = 2.0\ntransfer_first_byte_seconds = 4.0\n"
        process = gateway_process(self.scratch, (
            f'listen_port = {self.ports["gateway"]}\ndefault_backend = "alpha"\nlog_level = "WARNING"\n'
            f'health_check_interval_seconds = 1.0\nhealth_check_timeout_seconds = 1.0\n'
            f'[store]\npath = "{self.scratch / "gateway.sqlite3"}"\n'
            f'[resilience]\nbase_ejection_seconds = 1.0\nmax_ejection_seconds = 4.0\n'
            f'[backends.alpha]\nurl = "http://{HOST}:{self.ports["alpha"]}"\n[backends.alpha.timeouts]\n{timeouts}'
            f'[backends.beta]\nurl = "http://{HOST}:{self.proxy.port}"\n[backends.beta.timeouts]\n{timeouts}'
        ))
        self.processes["gateway"] = process
        return process.wait_listening(HOST, self.ports["gateway"], 30)

    def gateway_costs(self) -> dict[str, int]:
        pid = self.processes["gateway"].pid
        return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "rss_kib": rss_kib([pid])}

    # --- traffic ------------------------------------------------------------------------------------------------

    async def timed(self, http: aiohttp.ClientSession, kind: str, method: str, path: str,
                    **kwargs: Any) -> tuple[int, str, Any] | None:
        started = time.monotonic()
        try:
            async with http.request(method, self.url + path, **kwargs) as r:
                body = await r.read()
                backend = r.headers.get("X-Comfy-Backend", "")
                self.tally.answer(kind, r.status, backend, time.monotonic() - started)
                return r.status, backend, body
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.tally.fail(kind, exc)
            return None

    async def submitter(self, http: aiohttp.ClientSession, backend: str, until: float) -> None:
        tag = 0
        while time.monotonic() < until:
            tag += 1
            answer = await self.timed(http, "submit", "POST", "/prompt", headers={"X-Comfy-Backend": backend},
                                      json={"prompt": prompt_graph(tag), "client_id": f"faults-{backend}"})
            if answer is not None and answer[0] == 200:
                self.tally.accepted[json.loads(answer[2])["prompt_id"]] = (answer[1], time.monotonic())
            await asyncio.sleep(0.05)

    async def poll(self, http: aiohttp.ClientSession, prompt_id: str) -> None:
        answer = await self.timed(http, "poll", "GET", f"/history/{prompt_id}")
        if answer is None or answer[0] != 200:
            return
        entry = json.loads(answer[2]).get(prompt_id)
        if entry and entry.get("status", {}).get("completed"):
            self.tally.completed.add(prompt_id)
            for output in entry.get("outputs", {}).values():
                self.tally.outputs.extend(output.get("images", [])[:1])

    async def poller(self, http: aiohttp.ClientSession, until: float) -> None:
        while time.monotonic() < until:
            waiting = [p for p in self.tally.accepted if p not in self.tally.completed]
            if waiting:
                await self.poll(http, random.choice(waiting))
            await asyncio.sleep(0.05)

    async def viewer(self, http: aiohttp.ClientSession, until: float) -> None:
        while time.monotonic() < until:
            if self.tally.outputs:
                ref = random.choice(self.tally.outputs)
                await self.timed(http, "view", "GET", "/view", params=ref)
            await asyncio.sleep(0.1)

    async def socket(self, http: aiohttp.ClientSession, index: int, until: float) -> None:
        """Half the sockets share clientId faults-alpha, half faults-beta (a page opened in several tabs): as in
        ComfyUI, a backend sends a clientId's events to its newest socket only, so the others get little but
        their connect-time status and the gateway's pings."""
        backend = ("alpha", "beta")[index % 2]
        while time.monotonic() < until:
            try:
                async with http.ws_connect(f"{self.url}/ws?clientId=faults-{backend}&backend={backend}",
                                           timeout=aiohttp.ClientWSTimeout(ws_close=2.0)) as ws:
                    self.tally.ws_sessions += 1
                    await self.read_until(ws, until)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.tally.fail("ws", exc)
            await asyncio.sleep(0.2)

    async def read_until(self, ws: aiohttp.ClientWebSocketResponse, until: float) -> None:
        """Count messages until the socket ends or `until`. One deadline for the whole read: receive(timeout=)
        starts its timeout again after every ping it answers, and the gateway pings every 20 s, so a socket
        that gets nothing else would never time out."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, until - time.monotonic())):
                while True:
                    message = await ws.receive()
                    if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                        aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return
                    self.tally.ws_messages += 1

    async def faults_on_schedule(self, started: float) -> None:
        for fraction, action in self.plan.schedule():
            await asyncio.sleep(max(0.0, started + fraction * self.plan.seconds - time.monotonic()))
            verb, name = action.split()
            if verb == "kill":
                self.kills.append(time.monotonic())
                await asyncio.to_thread(self.kill_backend, name)
            elif verb == "start":
                problem = await asyncio.to_thread(self.start_backend, name)
                if problem:
                    raise RuntimeError(f"alpha did not come back: {problem}")
            else:
                self.proxy.mode = {"slow": "slow", "hang": "hang", "heal": "ok"}[verb]
            self.faults.append((round(time.monotonic() - started, 2), action))

    # --- the run ------------------------------------------------------------------------------------------------

    async def bounded(self, phase: str, work: Awaitable[T]) -> T | None:
        """`work`'s result, or None once it ran past the phase's bound (then cancelled, and the phase stalled)."""
        bound = self.plan.bounds()[phase]
        started = time.monotonic()
        print(f"faults: {phase} (at most {bound:.0f} s)", file=sys.stderr, flush=True)
        deadline = asyncio.timeout(bound)
        try:
            async with deadline:
                return await work
        except TimeoutError:
            if not deadline.expired():
                raise
            self.stalled.append(phase)
            print(f"faults: {phase} STALLED: cut short after {bound:.0f} s", file=sys.stderr, flush=True)
            return None
        finally:
            self.phases[phase] = round(time.monotonic() - started, 1)

    async def traffic(self, http: aiohttp.ClientSession) -> None:
        plan = self.plan
        started = time.monotonic()
        until = started + plan.seconds
        work = [self.submitter(http, ("alpha", "beta")[i % 2], until) for i in range(plan.submitters)]
        work += [self.poller(http, until) for _ in range(plan.pollers)]
        work += [self.viewer(http, until) for _ in range(plan.viewers)]
        work += [self.socket(http, i, until) for i in range(plan.sockets)]
        await asyncio.gather(self.faults_on_schedule(started), *work)

    async def drain(self, http: aiohttp.ClientSession) -> None:
        """Poll the acknowledged prompts not seen completed until they are, or drain_seconds pass: every one of
        them in each round, 50 at a time (the ones that died with alpha never complete, and must not keep the
        others from being asked). Over early once a round completes none and only those may be left."""
        drain_until = time.monotonic() + self.plan.drain_seconds
        while time.monotonic() < drain_until:
            waiting = [p for p in self.tally.accepted if p not in self.tally.completed]
            if not waiting:
                return
            before = len(self.tally.completed)
            for first in range(0, len(waiting), 50):
                if time.monotonic() >= drain_until:
                    return
                await asyncio.gather(*(self.poll(http, p) for p in waiting[first:first + 50]))
            if len(self.tally.completed) == before and all(self.may_have_died(p) for p in waiting):
                return
            await asyncio.sleep(0.2)

    async def metrics(self, http: aiohttp.ClientSession) -> str:
        try:
            async with http.get(self.url + "/metrics") as r:
                return await r.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.tally.fail("metrics", exc)
            return ""

    async def run(self) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=REQUEST_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
            start_costs = self.gateway_costs()
            await self.bounded("traffic", self.traffic(http))
            await self.bounded("drain", self.drain(http))
            await self.bounded("affinity check", self.check_affinity(http))
            metrics = await self.bounded("metrics", self.metrics(http)) or ""
        await asyncio.sleep(0.5)  # the clients' connections closed, so the end counts what the gateway keeps
        end_costs = self.gateway_costs()
        if not self.plan.smoke:  # past the pools' idle expiry (15 s): what is left open then is not pooled
            await asyncio.sleep(16)
            end_costs = {**end_costs, **{f"{k}_after_16s_idle": v for k, v in self.gateway_costs().items()}}
        return self.result(start_costs, end_costs, metrics)

    async def check_affinity(self, http: aiohttp.ClientSession) -> None:
        """Whether the gateway still places each acknowledged prompt on its backend, into self.placed (so a
        check cut short still reports what it saw). Asked 32 at a time: each answer asks the backend for the
        prompt's live state, and a full run acknowledges thousands."""
        gate = asyncio.Semaphore(32)

        async def check(prompt_id: str, backend: str) -> None:
            try:
                async with gate, http.get(f"{self.url}/gateway/prompts/{prompt_id}") as r:
                    body = await r.json() if r.status == 200 else {}
            except (aiohttp.ClientError, TimeoutError) as exc:  # left unchecked, which the report counts
                self.tally.fail("affinity", exc)
                return
            self.placed[prompt_id] = body.get("backend") == backend

        await asyncio.gather(*(check(p, backend) for p, (backend, _) in list(self.tally.accepted.items())))

    def may_have_died(self, prompt_id: str) -> bool:
        """Accepted by alpha before a kill: it may have died with alpha's in-memory queue."""
        backend, accepted_at = self.tally.accepted[prompt_id]
        return backend == "alpha" and any(k > accepted_at for k in self.kills)

    def result(self, start: dict[str, int], end: dict[str, int], metrics: str) -> dict[str, Any]:
        tally = self.tally
        mappings_lost = [p for p, right in self.placed.items() if not right]
        not_completed = [p for p in tally.accepted if p not in tally.completed]
        died_with_alpha = [p for p in not_completed if self.may_have_died(p)]
        lost = sorted(set(not_completed) - set(died_with_alpha))
        lost_by_backend = Counter(tally.accepted[p][0] for p in lost)
        family = "comfy_gateway_backend_circuit_transitions_total{"
        transitions = [line for line in metrics.splitlines() if line.startswith(family) and not line.endswith(" 0.0")]
        return {
            "plan": {**self.plan.__dict__},
            "faults": self.faults,
            "requests": dict(tally.requests),
            "errors": dict(tally.errors.most_common()),
            "p99_seconds": {backend: round(sorted(s)[max(0, int(len(s) * 0.99) - 1)], 4)
                            for backend, s in tally.latencies.items() if s},
            "prompts": {"accepted": len(tally.accepted), "completed": len(tally.completed),
                        "died_with_killed_backend": len(died_with_alpha), "lost": len(lost),
                        "lost_by_backend": dict(lost_by_backend), "lost_ids": lost[:20]},
            "affinity_mappings_lost": len(mappings_lost),
            "affinity_mappings_unchecked": len(tally.accepted) - len(self.placed),
            "phases_seconds": self.phases,
            "stalled": self.stalled,
            "breaker_transitions": transitions,
            "websockets": {"sessions": tally.ws_sessions, "messages": tally.ws_messages},
            "gateway": {"start": start, "end": end, "exit": self.processes["gateway"].exited()},
        }


def markdown(result: dict[str, Any]) -> str:
    prompts = result["prompts"]
    lines = [
        "## comfy-gateway fault bench", "",
        f"faults: {', '.join(f'{at}s {action}' for at, action in result['faults'])}", "",
        f"- requests served: {sum(result['requests'].values())} ({result['requests']})",
        f"- errors by kind: {result['errors'] or 'none'}",
        f"- p99 per backend: {result['p99_seconds']}",
        f"- prompts: accepted {prompts['accepted']}, completed {prompts['completed']}, died with the killed "
        f"backend {prompts['died_with_killed_backend']}, lost {prompts['lost']}",
        f"- affinity mappings lost: {result['affinity_mappings_lost']} (unchecked: "
        f"{result['affinity_mappings_unchecked']})",
        f"- breaker transitions: {len(result['breaker_transitions'])} series "
        + "; ".join(t.split("{", 1)[1] for t in result["breaker_transitions"]),
        f"- websockets: {result['websockets']}",
        f"- gateway fds / RSS: start {result['gateway']['start']}, end {result['gateway']['end']}",
        f"- phases (s): {', '.join(f'{name} {seconds}' for name, seconds in result['phases_seconds'].items())}; "
        f"stalled: {', '.join(result['stalled']) or 'none'}",
    ]
    return "\n".join(lines) + "\n"


async def main_async(args: argparse.Namespace) -> int:
    plan = (Plan(seconds=8.0, drain_seconds=8.0, submitters=2, pollers=2, viewers=1, sockets=2, smoke=True)
            if args.smoke else
            Plan(seconds=args.seconds, drain_seconds=30.0, submitters=8, pollers=4, viewers=2, sockets=8,
                 smoke=False))
    with tempfile.TemporaryDirectory(prefix="comfy-gateway-faults-") as scratch_name:
        bench = Bench(plan, Path(scratch_name))
        try:
            for name in ("alpha", "beta"):
                problem = bench.start_backend(name)
                if problem:
                    print(f"faults: backend {name} {problem}", file=sys.stderr)
                    return 2
            await bench.proxy.start()
            problem = bench.start_gateway()
            if problem:
                print(f"faults: gateway {problem}\n{bench.processes['gateway'].log_tail()}", file=sys.stderr)
                return 2
            result = await bench.run()
        finally:
            await bench.proxy.stop()
            for process in bench.processes.values():
                process.stop()
    text = markdown(result)
    write_report(args.out, "faults", result, text)
    print(text)
    clean = (result["prompts"]["lost"] == 0 and result["affinity_mappings_lost"] == 0
             and result["affinity_mappings_unchecked"] == 0 and not result["stalled"]
             and result["gateway"]["exit"] is None)
    return 0 if clean else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds, to check the bench itself runs")
    parser.add_argument("--seconds", type=float, default=90.0, help="length of the traffic (default 90)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    return run_main(lambda: main_async(args), "faults")


if __name__ == "__main__":
    sys.exit(main())
