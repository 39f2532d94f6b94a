"""A backend that can be taken down mid-test: a plain TCP relay on 127.0.0.1 in front of a real server. `stop()`
closes its listener and cuts every connection, as a backend that dies does; the server behind it keeps running,
so nothing of that server's own shutdown races the gateway's health checks."""

from __future__ import annotations

import asyncio
import contextlib

from yarl import URL


class SwitchableBackend:
    def __init__(self, target_url: str) -> None:
        target = URL(target_url)
        self._host, self._port = target.host or "127.0.0.1", target.port or 80
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopped = False
        self.url = ""

    async def start(self) -> SwitchableBackend:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._stopped:
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self._host, self._port)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, upstream_writer))

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))
        self._writers.difference_update((client_writer, upstream_writer))

    async def stop(self) -> None:
        self._stopped = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        await asyncio.sleep(0)
