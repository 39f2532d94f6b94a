"""`comfy-gateway serve --workers 2`: two worker processes serve one port (SO_REUSEPORT) on both data paths, GET
/metrics from either reports the requests both served, the embedded KernieGen runs once, a worker killed is
reported and started again, and SIGTERM to the parent drains every worker and exits 0."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway_process import REFUSAL, GatewayProcess, refusal_of, run_serve
from tests.ports import free_port

REQUESTS = 40


def queue_requests_in(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "comfy_gateway_requests"
        for sample in family.samples
        if sample.name == "comfy_gateway_requests_total" and sample.labels["endpoint"] == "/queue"
    )


def counted_by(directory: Path, pid: int, scratch: Path) -> float:
    """The /queue requests one worker counted: its own files of the shared directory, merged alone."""
    scratch.mkdir()
    for path in directory.glob(f"*_{pid}.db"):
        shutil.copy(path, scratch / path.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(scratch))
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == "comfy_gateway_requests_total" and sample.labels.get("endpoint") == "/queue"
    )


def worker_pids(log: str) -> dict[int, int]:
    """worker number -> its latest pid, from the parent's log."""
    return {int(n): int(pid) for n, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", log)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and " Z " not in Path(f"/proc/{pid}/stat").read_text()


async def until(condition, seconds: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def scrape(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        assert r.status == 200
        return await r.text()


@pytest.mark.parametrize("data_path", ["fast", "aiohttp"])
async def test_two_workers_serve_one_port_with_merged_metrics_and_stop_cleanly_on_sigterm(
    tmp_path: Path, data_path: str
) -> None:
    port, kerniegen_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\nlog_batch_seconds = 0.1\noutput_root = "{tmp_path / "outputs"}"\n'
        f'[store]\npath = "{tmp_path / "g.sqlite3"}"\n'
        f'[backends.kerniegen]\nurl = "http://127.0.0.1:{kerniegen_port}"\nembedded = true\n'
    )
    gateway = GatewayProcess(
        ["--config", str(config), "--port", str(port), "--workers", "2"], tmp_path, COMFY_GATEWAY_DATA_PATH=data_path
    )
    try:
        await gateway.wait_listening(url)
        await until(lambda: gateway.log.count("comfy_gateway.serve: listening on") == 2, 30,
                    "two workers did not start listening")
        (directory,) = re.findall(r"merged from (\S+)\)", gateway.log)
        directory_path = Path(directory)

        for _ in range(REQUESTS):  # one connection each: the kernel spreads new connections over the workers
            async with aiohttp.ClientSession() as http, http.get(f"{url}/queue") as r:
                assert r.status == 200
        for _ in range(4):  # whichever worker answers the scrape reports both workers' requests
            for _ in range(50):
                if queue_requests_in(await scrape(url)) == REQUESTS:
                    break
                await asyncio.sleep(0.05)
            assert queue_requests_in(await scrape(url)) == REQUESTS
        pids = worker_pids(gateway.log)
        shares = [counted_by(directory_path, pid, tmp_path / f"scratch-{pid}") for pid in pids.values()]
        assert sum(shares) == REQUESTS and all(share > 0 for share in shares), shares

        assert gateway.log.count("embedded KernieGen 'kerniegen' listening") == 1  # in the parent alone
        assert gateway.log.count("worker (pid") == 2
        assert gateway.log.count("output root: linked") == 1  # by the parent, before the workers could race
        assert (tmp_path / "outputs" / "kerniegen").is_symlink()

        killed = pids[1]
        os.kill(killed, signal.SIGKILL)
        await until(lambda: worker_pids(gateway.log)[1] != killed, 30, "the killed worker was not started again")
        assert f"worker 1 (pid {killed}) was killed by SIGKILL; starting it again" in gateway.log
        await until(lambda: gateway.log.count("worker (pid") == 3, 30, "the new worker did not start")
        async with aiohttp.ClientSession() as http, http.get(f"{url}/queue") as r:
            assert r.status == 200

        pids = worker_pids(gateway.log)
        assert await gateway.stop() == 0
        assert not any(alive(pid) for pid in pids.values())
        assert not directory_path.exists()  # made by the gateway, removed by it
        assert "Traceback" not in gateway.log
    finally:
        gateway.kill()


def test_a_port_another_program_holds_is_refused_once_by_the_parent(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "gateway.toml"
        config.write_text(
            f'default_backend = "remote"\nstate_dir = "{tmp_path / "state"}"\n'
            f'[store]\npath = "{tmp_path / "g.sqlite3"}"\n[backends.remote]\nurl = "http://127.0.0.1:{free_port()}"\n'
        )
        result = run_serve(["--config", str(config), "--port", str(port), "--workers", "2"], tmp_path)

    refusal = refusal_of(result)
    assert refusal.startswith(f"{REFUSAL}the gateway cannot listen on 127.0.0.1:{port}: the address is already in use")
    assert "(listen_port from --port)" in refusal
    assert "started (pid" not in result.stderr  # no worker was started
