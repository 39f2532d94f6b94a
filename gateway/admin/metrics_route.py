"""GET /metrics: the Prometheus exposition, in the format the scraper asks for."""

from __future__ import annotations

from aiohttp import web

from gateway.datapath.aio.keys import METRICS
from gateway.observe.metrics import METRICS_PATH


async def serve_metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].exposition(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_metrics_route(app: web.Application) -> None:
    app.router.add_get(METRICS_PATH, serve_metrics)
