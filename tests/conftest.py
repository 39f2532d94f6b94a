"""Shared fixtures: real servers on 127.0.0.1 (recording backends, KernieGen instances, the gateway itself)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.recording_backend import RecordingBackend

# Tests must not pick up a developer's or CI's own gateway configuration.
for _name in [n for n in os.environ if n.startswith("COMFY_GATEWAY_")]:
    del os.environ[_name]


async def serve_app(app: web.Application, port: int = 0) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, real_port = runner.addresses[0][:2]
    return runner, f"http://{host}:{real_port}"


@pytest.fixture
async def start_backend() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Start a test backend on a free port: a RecordingBackend, or `kind(name)` for any class with .app()/.url."""
    runners: list[web.AppRunner] = []

    async def start(name: str, kind: type = RecordingBackend) -> Any:
        backend = kind(name)
        runner, backend.url = await serve_app(backend.app())
        runners.append(runner)
        return backend

    yield start
    for runner in runners:
        await runner.cleanup()


# The data paths a gateway test can run on. Every test that starts a gateway runs on each of them (ids `[fast]`,
# `[aiohttp]`) unless GATEWAY_TEST_DATA_PATH names one; a test parametrized on `data_path` itself (indirect,
# e.g. `both_data_paths` or `pytest.mark.parametrize("data_path", ["fast"], indirect=True)`) gets exactly that.
DATA_PATHS = ("fast", "aiohttp")
both_data_paths = pytest.mark.parametrize("data_path", DATA_PATHS, indirect=True)


def _data_paths_to_run() -> tuple[str, ...]:
    chosen = os.environ.get("GATEWAY_TEST_DATA_PATH", "").strip()
    if not chosen:
        return DATA_PATHS
    if chosen not in DATA_PATHS:
        raise pytest.UsageError(f"GATEWAY_TEST_DATA_PATH={chosen!r}: expected one of {', '.join(DATA_PATHS)}")
    return (chosen,)


@dataclass
class RunningGateway:
    url: str
    app: web.Application
    runner: web.AppRunner
    data_path: str = "aiohttp"
    stop: Callable[[], Awaitable[None]] | None = None  # the fast path's drain-and-stop
    closed: bool = False

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.stop is not None:
                await self.stop()
            else:
                await self.runner.cleanup()


@pytest.fixture(params=_data_paths_to_run())
def data_path(request: pytest.FixtureRequest) -> str:
    """The data path of the gateways `start_gateway` starts: each of DATA_PATHS in turn, or the one
    GATEWAY_TEST_DATA_PATH names. A test's own (indirect) parametrization of `data_path` takes precedence over
    these params (pytest does not add a fixture's params for an argname the test parametrizes), so
    `both_data_paths` tests run once per path, not twice."""
    return request.param


@pytest.fixture
async def start_gateway(tmp_path: Path, data_path: str) -> AsyncIterator[Callable[..., Awaitable[RunningGateway]]]:
    """Start the real gateway app from its factory, on a free port, with the backends given as name → URL, on
    the data path the `data_path` fixture names."""
    from gateway.app import create_app
    from gateway.config.settings import BackendSettings, Settings, StoreSettings

    gateways: list[RunningGateway] = []

    async def start(
        backends: dict[str, str | dict[str, Any]],
        *,
        default: str | None = None,
        state_file: Path | None = None,
        store: Any = None,
        port: int = 0,
        **overrides: Any,
    ) -> RunningGateway:
        table = {
            name: BackendSettings(**(spec if isinstance(spec, dict) else {"url": spec}))
            for name, spec in backends.items()
        }
        settings = Settings(
            backends=table,
            default_backend=default or next(iter(backends)),
            state_dir=tmp_path / "state",
            store=StoreSettings(path=state_file or tmp_path / "state" / "gateway.sqlite3"),
            **{"data_path": data_path, **overrides},
        )
        app = create_app(settings, store=store)
        if settings.data_path == "fast":
            from gateway.serve import start_fast_gateway

            fast = await start_fast_gateway(app, settings, host="127.0.0.1", port=port)
            gateway = RunningGateway(fast.url, app, fast.runner, "fast", fast.close)
        else:
            runner, url = await serve_app(app, port)
            gateway = RunningGateway(url, app, runner)
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in gateways:
        await gateway.close()
