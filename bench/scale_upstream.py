"""A fake ComfyUI for the scale benchmark that answers as several backends, one port each, in one process:
GET /history/{id} for every prompt id in --ids (the body names the backend that answered), the whole
GET /history of --history-entries entries for the backends in scale_workload.MERGE_BACKENDS (pre-serialised,
paged like ComfyUI; with `serialise=per_request` in the query, dumped from objects on every request as
ComfyUI 0.3.64 does), and the tiny /prompt and /queue the gateway's health checks and pollers read.

Run: `python bench/scale_upstream.py --listen alpha=8301 --listen beta=8302 --ids FILE [--history-entries N]`.
Every answer is bytes built at start-up, on aiohttp's low-level server, so the upstream is never the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from aiohttp import web

import scale_workload
import workload
from upstream import json_response

MAX_CACHED_PAGES = 16  # distinct GET /history queries whose answer is kept; others are joined per request


class ScaleComfy:
    """One backend: its answers for every known prompt id, and its history as per-entry fragments."""

    def __init__(self, name: str, prompt_ids: Sequence[str], history_entries: int) -> None:
        self.name = name
        # Every backend answers every id, each with a body naming itself: which backend answered shows in the
        # output refs, so a request the gateway routed wrong is seen.
        self.bodies = {prompt_id: workload.history_body(prompt_id, name) for prompt_id in prompt_ids}
        self.fragments = scale_workload.history_fragments(name, history_entries) if history_entries else []
        # What ComfyUI holds: the entries as objects, dumped whole on every GET /history (web.json_response).
        self.entries = [(scale_workload.merge_prompt_id(name, i), scale_workload.merge_entry(name, i))
                        for i in range(history_entries)]
        self.pages: dict[str, bytes] = {}
        self.queue = workload.queue_body()
        self.prompt_info = workload.prompt_info_body()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if request.method != "GET":
            return web.Response(status=405, text="405: Method Not Allowed")
        if path.startswith("/history/"):
            # ComfyUI answers {} for a prompt it does not hold.
            return json_response(self.bodies.get(path[len("/history/"):], b"{}"))
        if path == "/history":
            return self.history(request.query_string, request.query)
        if path == "/prompt":
            return json_response(self.prompt_info)
        if path == "/queue":
            return json_response(self.queue)
        return web.Response(status=404, text="404: Not Found")

    def history(self, query_string: str, query: Mapping[str, str]) -> web.Response:
        body = self.pages.get(query_string)
        if body is None:
            try:
                max_items = int(query["max_items"]) if "max_items" in query else None
                offset = int(query["offset"]) if "offset" in query else None
            except ValueError:
                return web.Response(status=500, text="500 Internal Server Error")  # as ComfyUI does
            chosen = scale_workload.page(len(self.fragments), max_items, offset)
            if query.get("serialise") == "per_request":
                return json_response(json.dumps(dict(self.entries[chosen.start:chosen.stop])).encode())
            body = b"{" + b", ".join(self.fragments[chosen.start:chosen.stop]) + b"}"
            if len(self.pages) < MAX_CACHED_PAGES:
                self.pages[query_string] = body
        return json_response(body)


async def serve(host: str, listens: Mapping[str, int], prompt_ids: Sequence[str], history_entries: int) -> None:
    loop = asyncio.get_running_loop()
    servers, listeners = [], []
    for name, port in listens.items():
        entries = history_entries if name in scale_workload.MERGE_BACKENDS else 0
        server = web.Server(ScaleComfy(name, prompt_ids, entries).handle, access_log=None)
        servers.append(server)
        listeners.append(await loop.create_server(server, host, port, reuse_address=True, backlog=1024))
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    for listener in listeners:
        listener.close()
    await asyncio.gather(*(server.shutdown(1.0) for server in servers))


def parse_listen(value: str) -> tuple[str, int]:
    name, _, port = value.partition("=")
    if not name or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=PORT, got {value!r}")
    return name, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=parse_listen, action="append", required=True,
                        help="NAME=PORT: answer as backend NAME on PORT (repeat for more backends)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ids", type=Path, required=True, help="file of prompt ids, one a line")
    parser.add_argument("--history-entries", type=int, default=0,
                        help="entries in the GET /history of the merge backends")
    args = parser.parse_args()
    prompt_ids = args.ids.read_text().split()
    asyncio.run(serve(args.host, dict(args.listen), prompt_ids, args.history_entries))


if __name__ == "__main__":
    main()
