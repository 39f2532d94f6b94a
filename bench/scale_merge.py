"""The merge part of the scale benchmark: which GET /history answers it times (the gateway merging two
backends: polled, after one backend's history changed, with nothing kept; one backend directly, serialised
per request as ComfyUI does and pre-serialised), the least size each may have, and their check before any load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

import scale_workload
from processes import ServerProcess
from scale_checks import check_history

QUERIES: dict[str, int | None] = {"whole": None, "page64": 64}  # GET /history, GET /history?max_items=64
# How the first merge backend answers alone: from bytes kept ready (the reference the issue sets), or dumped
# from its objects on each request (what ComfyUI 0.3.64's own GET /history costs).
DIRECT_KINDS = {"direct": {}, "direct_dumped": {"serialise": "per_request"}}
# The merging gateways, each with what its answers cost:
GATEWAY_KINDS = {
    # its default configuration on unchanged backends: what repeated polls cost (merge_cache.py);
    "gateway": "polls (default)",
    # its default configuration, the second backend's reply changed at every request (scale_upstream.py
    # --changing) so that it is parsed whole each time, the first's kept (history_parts.py);
    "gateway_changed": "after one backend's history changed",
    # merge_cache_bytes = history_parts_bytes = 0: what the first answer costs when nothing is known yet.
    "gateway_nocache": "nothing kept (first answer)",
}
MERGE_CACHES_OFF = {"merge_cache_bytes": 0, "history_parts_bytes": 0}


@dataclass(frozen=True)
class Answer:
    """One GET /history to time: who answers (`name` is "<who>_<query>"), what it must hold at least."""

    name: str
    query: str  # a key of QUERIES
    url: str
    process: ServerProcess
    least_bytes: int
    max_items: int | None
    merged: bool


def merge_answers(backend_urls: Mapping[str, str], upstream: ServerProcess,
                  gateways: Mapping[str, tuple[str, ServerProcess]], entries: int) -> list[Answer]:
    """`gateways`: kind (GATEWAY_KINDS) -> (base URL, process) of each merging gateway that runs."""
    backends = scale_workload.MERGE_BACKENDS
    fragments = {b: scale_workload.history_fragments(b, entries) for b in backends}
    # The gateway serialises a merged answer itself, without json.dumps' spaces: its least size is the
    # entries written compactly.
    compact = {b: [len(json.dumps({scale_workload.merge_prompt_id(b, i): scale_workload.merge_entry(b, i)},
                                  separators=(",", ":"))) - 2 for i in range(entries)] for b in backends}
    alone = backends[0]
    answers = []
    for query, max_items in QUERIES.items():
        paging = {} if max_items is None else {"max_items": str(max_items)}
        # Sizes without the gateway's ref prefixes (which only lengthen an answer): the least to accept.
        alone_bytes = sum(len(fragments[alone][i]) + 2 for i in scale_workload.page(entries, max_items, None))
        merged_bytes = sum(compact[b][i] + 1 for b, i in scale_workload.merged_order(entries, max_items))
        for who, extra in DIRECT_KINDS.items():
            answers.append(Answer(f"{who}_{query}", query, _url(backend_urls[alone], {**paging, **extra}), upstream,
                                  alone_bytes, max_items, merged=False))
        for kind, (gateway_url, gateway_process) in gateways.items():
            answers.append(Answer(f"{kind}_{query}", query, _url(gateway_url, paging), gateway_process,
                                  merged_bytes, max_items, merged=True))
    return answers


async def check_answers(answers: list[Answer], entries: int) -> list[str]:
    problems = []
    for answer in answers:
        problems += await check_history(answer.url, entries_each=entries, max_items=answer.max_items,
                                        merged=answer.merged)
    return problems


def _url(base: str, query: Mapping[str, str]) -> str:
    return f"{base}/history" + (f"?{urlencode(query)}" if query else "")
