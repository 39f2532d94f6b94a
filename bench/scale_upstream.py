"""A fake ComfyUI for the scale benchmark that answers as several backends, one port each, in one process:
GET /history/{id} for every prompt id in --ids (the body names the backend that answered), the whole
GET /history of --history-entries entries for the backends in scale_workload.MERGE_BACKENDS (pre-serialised,
paged like ComfyUI; with `serialise=per_request` in the query, dumped from objects on every request as
ComfyUI 0.3.64 does), and the tiny /prompt and /queue the gateway's health checks and pollers read.
`--changing NAME=PORT` answers as backend NAME on one more port, where every GET /history is written
otherwise than the one before (json's spaces, then none): the same entries, so every check still holds, in
bytes that changed, as a history that is not merely added to does (ComfyUI at its maximum of 10,000 entries
drops the oldest as it adds one).

Run: `python bench/scale_upstream.py --listen alpha=8301 --listen beta=8302 --ids FILE [--history-entries N]
[--changing beta=8303]`.
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

    def __init__(self, name: str, prompt_ids: Sequence[str], history_entries: int, changing: bool = False) -> None:
        self.name = name
        self.changing = changing
        self.answered = 0  # GET /history answers so far: which writing the next one of a changing backend takes
        # Every backend answers every id, each with a body naming itself: which backend answered shows in the
        # output refs, so a request the gateway routed wrong is seen.
        self.bodies = {prompt_id: workload.history_body(prompt_id, name) for prompt_id in prompt_ids}
        self.fragments = scale_workload.history_fragments(name, history_entries) if history_entries else []
        # The other writing of a changing backend's history: no spaces after separators.
        self.compact_fragments = [json.dumps(json.loads(b"{" + fragment + b"}"), separators=(",", ":")).encode()[1:-1]
                                  for fragment in self.fragments] if changing else []
        # What ComfyUI holds: the entries as objects, dumped whole on every GET /history (web.json_response).
        self.entries = [(scale_workload.merge_prompt_id(name, i), scale_workload.merge_entry(name, i))
                        for i in range(history_entries)]
        self.pages: dict[tuple[str, bool], bytes] = {}
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
        compact = self.changing and self.answered % 2 == 1
        self.answered += 1
        body = self.pages.get((query_string, compact))
        if body is None:
            try:
                max_items = int(query["max_items"]) if "max_items" in query else None
                offset = int(query["offset"]) if "offset" in query else None
            except ValueError:
                return web.Response(status=500, text="500 Internal Server Error")  # as ComfyUI does
            chosen = scale_workload.page(len(self.fragments), max_items, offset)
            if query.get("serialise") == "per_request":
                return json_response(json.dumps(dict(self.entries[chosen.start:chosen.stop])).encode())
            fragments, separator = (self.compact_fragments, b",") if compact else (self.fragments, b", ")
            body = b"{" + separator.join(fragments[chosen.start:chosen.stop]) + b"}"
            if len(self.pages) < MAX_CACHED_PAGES:
                self.pages[(query_string, compact)] = body
        return json_response(body)


async def serve(host: str, listens: Sequence[tuple[str, int, bool]], prompt_ids: Sequence[str],
                history_entries: int) -> None:
    """`listens`: (backend name, port, changing) for each port to answer on."""
    loop = asyncio.get_running_loop()
    servers, listeners = [], []
    for name, port, changing in listens:
        entries = history_entries if name in scale_workload.MERGE_BACKENDS else 0
        server = web.Server(ScaleComfy(name, prompt_ids, entries, changing).handle, access_log=None)
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
    parser.add_argument("--changing", type=parse_listen, action="append", default=[],
                        help="NAME=PORT: answer as backend NAME on PORT, each GET /history written otherwise")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ids", type=Path, required=True, help="file of prompt ids, one a line")
    parser.add_argument("--history-entries", type=int, default=0,
                        help="entries in the GET /history of the merge backends")
    args = parser.parse_args()
    prompt_ids = args.ids.read_text().split()
    listens = [(name, port, False) for name, port in args.listen] + [(name, port, True) for name, port in args.changing]
    asyncio.run(serve(args.host, listens, prompt_ids, args.history_entries))


if __name__ == "__main__":
    main()
