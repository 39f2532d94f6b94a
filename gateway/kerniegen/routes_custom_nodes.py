"""What ComfyUI's custom-node manager answers for the UI: GET /i18n (translations custom nodes
add) and GET /workflow_templates (their example workflows). KernieGen loads no custom nodes, so
both are empty objects, exactly as recorded from a ComfyUI without any."""

from __future__ import annotations

from aiohttp import web


async def get_i18n(request: web.Request) -> web.Response:
    return web.json_response({})


async def get_workflow_templates(request: web.Request) -> web.Response:
    return web.json_response({})
