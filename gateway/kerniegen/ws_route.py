"""GET /ws: the WebSocket handshake as ComfyUI does it: a generated sid when no clientId is given,
the connect-time `status` (with sid), `executing` for a client reconnecting mid-run, and the
`feature_flags` exchange on the first message."""

from __future__ import annotations

import json
import logging
import uuid

from aiohttp import WSCloseCode, WSMsgType, web

from gateway.kerniegen.routes_info import server_features
from gateway.kerniegen.state import STATE
from gateway.kerniegen.ws_frames import encode_message

log = logging.getLogger(__name__)

# The close handshake on shutdown waits at most this long for a client's answer.
_CLOSE_TIMEOUT_SECONDS = 2.0


async def websocket(request: web.Request) -> web.WebSocketResponse:
    state = request.app[STATE]
    ws = web.WebSocketResponse(timeout=_CLOSE_TIMEOUT_SECONDS)
    await ws.prepare(request)
    sid = request.query.get("clientId", "") or uuid.uuid4().hex
    status = encode_message("status", {"status": _queue_info(state.queue.remaining()), "sid": sid})
    if state.faults.drop_websockets:
        await ws.send_str(status)
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"KernieGen fault injection: dropped")
        return ws
    hub = state.hub
    client = hub.connect(sid, ws, request.transport)
    try:
        hub.send_to(client, status)
        if hub.running_client_id == sid and hub.running_node_id is not None:
            hub.send_to(client, encode_message("executing", {"node": hub.running_node_id}))
        first_message = True
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(message.data)
            except ValueError:
                log.debug("kerniegen: ignoring a non-JSON ws message from %s", sid)
                continue
            if not isinstance(data, dict):
                continue  # ComfyUI fails on it before it notes that the first message went by
            if first_message and data.get("type") == "feature_flags":
                flags = data.get("data", {})
                client.feature_flags = flags if isinstance(flags, dict) else {}
                hub.send_to(client, encode_message("feature_flags", server_features(state.config.max_upload_bytes)))
            first_message = False
    finally:
        await hub.disconnect(client)
    return ws


def _queue_info(queue_remaining: int) -> dict[str, dict[str, int]]:
    return {"exec_info": {"queue_remaining": queue_remaining}}
