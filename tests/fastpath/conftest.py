"""Fast-path tests run on both event loops the gateway may meet: asyncio's (as in the rest of the suite) and
uvloop (what `comfy-gateway serve` uses); their transports differ in small ways that matter here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import pytest

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on every platform the gateway supports
    uvloop = None


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    if uvloop is not None:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


# --- a gateway on the fast path, with its limits chosen by the test -------------------------------------------


@pytest.fixture
async def start_fast(tmp_path):
    """start_fast({"name": url, ...}, limits=Limits(...), **settings) -> a running FastGateway."""
    from gateway.app import create_app
    from gateway.config.settings import BackendSettings, Settings, StoreSettings
    from gateway.datapath.fast.limits import Limits
    from gateway.serve import FastGateway, limits_for, start_fast_gateway

    gateways: list[FastGateway] = []

    async def start(backends: dict, *, limits: Limits | None = None, **overrides):
        table = {
            name: BackendSettings(**(spec if isinstance(spec, dict) else {"url": spec}))
            for name, spec in backends.items()
        }
        settings = Settings(
            backends=table,
            default_backend=next(iter(backends)),
            state_dir=tmp_path / "state",
            store=StoreSettings(path=tmp_path / "state" / f"gateway{len(gateways)}.sqlite3"),
            data_path="fast",
            **overrides,
        )
        limits = limits or limits_for(settings)
        gateway = await start_fast_gateway(create_app(settings), settings, host="127.0.0.1", port=0, limits=limits)
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in gateways:
        await gateway.close()


# --- a backend speaking raw HTTP, for what a well-behaved server never does -------------------------------------

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawBackend:
    """An asyncio server that runs `handler` per connection and counts what it saw.

    The gateway's own health checks and metrics polls are answered by `read_request` itself and counted
    nowhere, so the counts are those of the requests the test sends.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.url = ""
        self.connections = 0  # connections that carried a request of the test's
        self.open = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self._counted: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> RawBackend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if writer in self._counted:
                self._counted.discard(writer)
                self.open -= 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        """The next request of the test's (head and Content-Length body), recorded; b"" at EOF."""
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return b""
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            request = head + (await reader.readexactly(length) if length else b"")
            if b"health-check" in head:
                writer.write(ok(b'{"exec_info": {"queue_remaining": 0}}'))
            elif b"comfy-gateway/" in head and b" inventory\r\n" in head:  # the gateway's background read
                writer.write(ok(b"{}"))
            else:
                break
        if writer not in self._counted:
            self._counted.add(writer)
            self.connections += 1
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        self.requests.append(request)
        return request

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def raw_backend():
    backends: list[RawBackend] = []

    async def start(handler: Handler) -> RawBackend:
        backend = await RawBackend(handler).start()
        backends.append(backend)
        return backend

    yield start
    for backend in backends:
        await backend.close()


def ok(body: bytes = b"{}", *, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


# --- a client speaking raw HTTP ----------------------------------------------------------------------------------


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


@contextlib.asynccontextmanager
async def raw_connection(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw connection to the gateway, closed at the end whatever happened to it."""
    reader, writer = await connect(url)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1)


async def read_response(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """One response with a Content-Length, head and body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await asyncio.wait_for(reader.readexactly(length), timeout)


async def read_all(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything until the gateway closes the connection."""
    return await asyncio.wait_for(reader.read(-1), timeout)


async def send_raw(url: str, data: bytes, *, timeout: float = 5.0) -> bytes:
    async with raw_connection(url) as (reader, writer):
        writer.write(data)
        return await read_all(reader, timeout)


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done = False

    def header(self, name: str) -> bytes | None:
        return next((v for n, v in self.headers if n.lower() == name.lower().encode()), None)


def parse_responses(data: bytes, *, head_request: bool = False) -> list[Response]:
    """Every complete response in `data` (keep-alive or pipelined), 1xx ones included."""
    import httptools

    responses: list[Response] = []

    class Collector:
        def on_message_begin(self) -> None:
            responses.append(Response())

        def on_header(self, name: bytes, value: bytes) -> None:
            responses[-1].headers.append((name, value))

        def on_headers_complete(self) -> None:
            responses[-1].status = parser.get_status_code()

        def on_body(self, body: bytes) -> None:
            responses[-1].body += body

        def on_message_complete(self) -> None:
            responses[-1].done = True

    parser = httptools.HttpResponseParser(Collector())
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    return [r for r in responses if r.done or r.status]
