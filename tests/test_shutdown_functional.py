"""SIGTERM under load, on a real gateway process and both data paths: the requests in flight are answered, the
process exits cleanly, and every prompt the gateway acknowledged is on its backend and in the state store."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from gateway.config.settings import StoreSettings
from gateway.state.sqlite_store import SqliteStateStore
from tests.conftest import both_data_paths
from tests.faulty_backend import FaultyBackend
from tests.ports import free_port

pytestmark = both_data_paths

CLIENTS = 8
PROMPT = {"prompt": {"1": {"class_type": "Noop", "inputs": {}}}, "client_id": "c"}


def write_config(directory: Path, backend_url: str, port: int, data_path: str) -> Path:
    path = directory / "gateway.toml"
    path.write_text(
        f'listen_port = {port}\ndata_path = "{data_path}"\ndefault_backend = "worker"\n'
        f'health_check_interval_seconds = 60.0\nlog_level = "WARNING"\n'
        f'[store]\npath = "{directory / "gateway.sqlite3"}"\n'
        f'[limits]\ndrain_seconds = 5.0\n'
        f'[backends.worker]\nurl = "{backend_url}"\n'
    )
    return path


async def wait_until_serving(http: aiohttp.ClientSession, url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, "the gateway exited before serving"
        try:
            async with http.get(url + "/gateway/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, "the gateway never served"
        await asyncio.sleep(0.05)


async def test_sigterm_under_load_loses_no_acknowledged_prompt(tmp_path: Path, data_path: str) -> None:
    worker = await FaultyBackend("worker", mode="slow", delay_seconds=0.15).start()
    port = free_port()
    config = write_config(tmp_path, worker.url, port, data_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFY_GATEWAY_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
        stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    acknowledged: list[str] = []
    after_signal: list[str] = []
    signalled = asyncio.Event()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            await wait_until_serving(http, url, process)

            async def client() -> None:
                while True:
                    try:
                        async with http.post(url + "/prompt", json=PROMPT) as r:
                            if r.status != 200:
                                return
                            prompt_id = (await r.json())["prompt_id"]
                    except aiohttp.ClientError:
                        return  # the gateway stopped taking requests
                    acknowledged.append(prompt_id)
                    if signalled.is_set():
                        after_signal.append(prompt_id)
                        return

            clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
            await asyncio.sleep(0.6)
            process.send_signal(signal.SIGTERM)
            signalled.set()
            await asyncio.gather(*clients)
        returncode = await asyncio.to_thread(process.wait, 20)
    finally:
        if process.poll() is None:
            process.kill()
        stderr = process.communicate()[1]
        await worker.stop()

    assert returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert len(acknowledged) >= CLIENTS and after_signal, (len(acknowledged), after_signal)  # in flight, answered
    assert set(acknowledged) <= set(worker.prompts)  # every acknowledged prompt reached its backend
    store = SqliteStateStore.open(StoreSettings(path=tmp_path / "gateway.sqlite3"))
    try:
        records = [await store.lookup_prompt(prompt_id) for prompt_id in acknowledged]
    finally:
        await store.close()
    assert all(record is not None and record.backend == "worker" for record in records)  # affinity kept
