"""One client socket on /ws, following its prompts on every backend they run on.

The socket opens to the backend the client selected first (before the 101, so a backend that is down gives the
client an HTTP error), and to any other backend as soon as POST /prompt routes there a prompt whose client_id
is this socket's clientId (state/followers.py): every backend knows the client by the same clientId. What the
backends send is merged into the client's one stream, in arrival order:

  - prompt events pass unchanged, but `executed` gets its output refs prefixed as /history does (outputs/refs);
    the events of a prompt whose POST /prompt answer is not written yet wait for it (at most hold_seconds and
    hold_max_messages), so no event ever overtakes the answer naming its prompt;
  - `status` carries the summed queue_remaining of the backends followed; a backend's connect-time status is
    shown only for the first, so the client sees one `sid`; `feature_flags` answers only once;
  - binary frames (previews, SaveImageWebsocket images) pass byte for byte; from a backend where one of the
    client's prompts is held, they wait with its events.

What the client sends goes to every backend socket; its `feature_flags` is replayed to one opened later. A
backend socket that drops (its connection lost, or the backend going away) is opened again with backoff while
the client stays; one the backend closes with any other code ends the client's socket with that code. Every
message for the client goes through a bounded queue: a client that reads slowly loses previews and progress
first, never `executed`, `execution_*` or the final `executing`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from aiohttp import WebSocketError, WSCloseCode, WSMsgType
from multidict import CIMultiDict

from gateway.backends.table import Backend, BackendTable
from gateway.config.settings import WebSocketSettings
from gateway.core.errors import GatewayError, UpstreamError, UpstreamRefused, UpstreamTimeout
from gateway.core.redact import shown_url
from gateway.datapath.aio.backend_socket import BackendSocket, FrameSink
from gateway.datapath.aio.client_socket import ClientSocket, Frame
from gateway.observe.metrics import FanInMeter
from gateway.outputs import refs
from gateway.state.followers import Followers

log = logging.getLogger("comfy_gateway.websocket")

# The handshake headers aiohttp generates itself for a backend socket.
_HANDSHAKE_HEADERS = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol"}
)
# Binary frames from SaveImageWebsocket are full-resolution images: no message-size limit from a backend.
_NO_SIZE_LIMIT = 0
# How a backend socket ends when it should be opened again: connection lost (1006, or no code), the backend
# going away or restarting (1001, 1012), failing (1011) or overloaded (1013, 1014). Any other code the backend
# chose for this client: the client's socket ends with it.
_REOPEN_CODES = frozenset({None, 1001, 1006, 1011, 1012, 1013, 1014})
BINARY = "binary"
_CLOSE_SECONDS = 10.0  # a client's socket a backend ended: what it was sent before, and the close handshake
_FIRST_TO_DROP = frozenset({BINARY, "progress", "progress_state"})
_TEXT, _BINARY, _ERROR = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.ERROR
_ENDED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED)
# The sender counts what it sent in its own tally and adds it to the metrics when its queue is empty, or after
# this many messages when it never is: a counter per message was a visible share of relaying one.
_COUNTS_EVERY_MESSAGES = 256
# What the sender writes to the client at once, at most, when a burst is queued (the queue's own bounds,
# websocket.send_queue_*, bound what waits; this, what one write copies).
_BATCH_BYTES = 64 * 1024

HeadersFor = Callable[[Backend], CIMultiDict[str]]


class Outgoing:
    """A message for the client. Made for every message relayed: a plain class, which the compiled build makes
    without a call into the interpreter (a dataclass's __init__ is interpreted)."""

    __slots__ = ("kind", "data", "origin", "essential")

    def __init__(self, kind: str, data: str | bytes | Frame, origin: str, essential: bool = False) -> None:
        self.kind = kind  # the message type, or "binary"
        self.data = data  # text, binary, or a text message as the backend framed it
        self.origin = origin  # the backend it came from
        self.essential = essential  # never dropped: executed, execution_*, the final executing


def _essential(kind: str, data: object) -> bool:
    if kind == "executed" or kind.startswith("execution_"):
        return True
    return kind == "executing" and isinstance(data, dict) and data.get("node") is None


def _first_to_drop(item: Outgoing) -> bool:
    return item.kind in _FIRST_TO_DROP


def _droppable(item: Outgoing) -> bool:
    return not item.essential


class SendQueue:
    """Messages for one client, in order, bounded in count (`limit`) and size (`max_bytes`; one message alone
    may pass it). When full, previews and progress go first (a new one, else the oldest queued), then anything
    not essential; an essential message always gets in.

    A sender (send_queued) runs only while there is something to send: `start_sender` is called when a message
    or the close comes and none runs, and the sender stops when it finds the queue empty. An idle socket, what
    a web UI holds for hours, keeps no task for it."""

    def __init__(
        self, limit: int, max_bytes: int, dropped: Callable[[str], None], start_sender: Callable[[], None]
    ) -> None:
        self._items: deque[Outgoing] = deque()
        self._limit = limit
        self._max_bytes = max_bytes
        self._bytes = 0
        self._dropped = dropped
        self._start_sender = start_sender
        self._sending = False  # a sender runs, or is started: it takes what is put before it stops
        # The backend reader waiting for room: what resumes it, and when the wait runs out.
        self._resume: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._lagging = False  # a wait for room ran out: no more waits until the client catches up
        self.close_code: int | None = None  # set: the client's socket is closed with it once the queue is sent

    def __len__(self) -> int:
        return len(self._items)

    @property
    def size(self) -> int:
        """What the queued messages hold, in bytes (characters for text)."""
        return self._bytes

    def put(self, item: Outgoing) -> None:
        size = len(item.data)
        while self._items and (len(self._items) >= self._limit or self._bytes + size > self._max_bytes):
            victim = self._victim(item)
            if victim is None:
                if item.essential:
                    break
                self._dropped(item.kind)
                return
            self._items.remove(victim)
            self._bytes -= len(victim.data)
            self._dropped(victim.kind)
        self._items.append(item)
        self._bytes += size
        self._to_send()

    def put_held(self, items: list[Outgoing]) -> None:
        """A held prompt's messages, let go at once: queued past the count bound if need be (they were counted
        as they were held, hold_max_messages at most), never past the bytes bound (put() chooses what drops);
        the backend's socket is not read again until there is room."""
        for item in items:
            if self._bytes + len(item.data) > self._max_bytes:
                self.put(item)
                continue
            self._items.append(item)
            self._bytes += len(item.data)
        if items:
            self._to_send()

    def full(self) -> bool:
        return len(self._items) >= self._limit or self._bytes >= self._max_bytes

    def needs_room(self, seconds: float) -> bool:
        """Whether a wait for room (wait_for_room, room) would wait."""
        return not self._lagging and seconds > 0 and self.full()

    def wait_for_room(self, seconds: float, resume: Callable[[], None]) -> bool:
        """When the queue is full: True, and `resume` is called (soon after, from the loop) once it is below its
        bounds, or once `seconds` have passed: the client is reading, only not as fast as a burst arrives. A
        client that lets the wait run out is lagging: no more waits (its messages drop, as put() chooses) until it
        has sent half its queue. False: no wait (there is room, or the client is lagging). One wait at a time:
        the backend's reader."""
        if not self.needs_room(seconds):
            return False
        loop = asyncio.get_running_loop()
        self._resume = resume
        self._timer = loop.call_later(seconds, self._waited_too_long)
        return True

    async def room(self, seconds: float) -> None:
        """wait_for_room, awaited."""
        waiter = asyncio.get_running_loop().create_future()
        if self.wait_for_room(seconds, lambda: _settle(waiter)):
            try:
                await waiter
            except asyncio.CancelledError:  # nothing is left to resume
                self.stop_waiting()
                raise

    def stop_waiting(self) -> None:
        """The reader is gone: whatever it waited for is not resumed."""
        self._resume = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _waited_too_long(self) -> None:
        self._timer = None
        self._lagging = True
        self._wake_reader()

    def _wake_reader(self) -> None:
        resume = self._resume
        self.stop_waiting()
        if resume is not None:
            asyncio.get_running_loop().call_soon(resume)  # not within take(), where the sender is

    def close_with(self, code: int) -> None:
        self.close_code = code
        self._to_send()

    def sender_done(self) -> bool:
        """Asked by the sender when it found nothing to take: True, it stops (and the next message starts
        another); False, the socket is to be closed first (close_code)."""
        if self.close_code is not None:
            return False
        self._sending = False
        return True

    def _to_send(self) -> None:
        if not self._sending:
            self._sending = True
            self._start_sender()

    def _victim(self, item: Outgoing) -> Outgoing | None:
        """The queued message to drop for `item`; None: drop `item` itself (or, essential, let it in)."""
        if item.kind in _FIRST_TO_DROP:
            return None
        for tier in (_first_to_drop, _droppable):
            for queued in self._items:
                if tier(queued):
                    return queued
            if not item.essential:
                return None
        return None

    def take(self, budget: int) -> list[Outgoing]:
        """The queued messages, in order, while what is taken holds fewer than `budget` bytes (the last may
        pass it; none when `budget` is not above 0); no wait."""
        items = self._items
        taken: list[Outgoing] = []
        size = 0
        while items and size < budget:
            item = items.popleft()
            taken.append(item)
            size += len(item.data)
        if taken:
            self._bytes -= size
            self._made_room()
        return taken

    def _made_room(self) -> None:
        if (self._resume is not None or self._lagging) and not self.full():
            self._wake_reader()  # once, however many are taken before it runs
            if self._lagging and len(self._items) <= self._limit // 2:
                self._lagging = False


@dataclass(slots=True)
class _Hold:
    backend: str  # where the prompt runs
    messages: list[Outgoing]
    timer: asyncio.TimerHandle


@dataclass(slots=True)
class _Upstream:
    backend: Backend
    ws: aiohttp.ClientWebSocketResponse | None = None
    task: asyncio.Task[None] | None = None
    queue_remaining: int = 0
    status_seen: bool = False  # its connect-time status came (the next one is not its first)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)  # follow() waiting for it to open

    def tried(self) -> None:
        """Opened, or failed to: whoever waits for it goes on."""
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.waiters.clear()


async def open_upstream(
    session: aiohttp.ClientSession,
    backend: Backend,
    target: str,
    headers: CIMultiDict[str],
    protocols: tuple[str, ...],
    heartbeat: float | None,
) -> aiohttp.ClientWebSocketResponse:
    """A backend socket, or the gateway error saying why there is none."""
    send_headers = CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in _HANDSHAKE_HEADERS)
    try:
        # The upgrade is an API call (connect, then its answer's first byte); once switched, a socket may stay
        # silent as long as nothing runs.
        timeouts = backend.timeouts
        return await asyncio.wait_for(
            session.ws_connect(
                backend.target(target),
                headers=send_headers,
                protocols=protocols,
                max_msg_size=_NO_SIZE_LIMIT,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
                autoping=True,
                heartbeat=heartbeat,
            ),
            timeouts.connect_seconds + timeouts.first_byte("api"),
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamRefused(
            f"backend {backend.name!r} refused the WebSocket upgrade on {target} with {exc.status}",
            status=exc.status,
            backend=backend.name,
        ) from exc
    except TimeoutError as exc:
        raise UpstreamTimeout(
            f"backend {backend.name!r} did not accept the WebSocket in time", backend=backend.name
        ) from exc
    except (aiohttp.ClientError, OSError) as exc:
        connect = isinstance(exc, (aiohttp.ClientConnectorError, ConnectionRefusedError))
        raise UpstreamError(
            f"backend {backend.name!r} at {shown_url(backend.url)} is unreachable for WebSocket: {exc}",
            backend=backend.name,
            kind="connect" if connect else "protocol",
        ) from exc


class _FromBackend(FrameSink):
    """Where one backend socket's frames go: the fan-in's steps for that backend."""

    def __init__(self, fan_in: FanIn, up: _Upstream) -> None:
        self._fan_in = fan_in
        self._up = up
        self._name = up.backend.name
        self._queue = fan_in._queue
        self._seconds = fan_in._settings.backpressure_seconds

    def skims(self) -> bool:
        return not self._fan_in._holds

    def framed(self, kind: str, frame: Frame) -> None:
        self._queue.put(Outgoing(kind, frame, self._name))

    def text(self, text: str) -> None:
        self._fan_in._from_backend_text(self._up, text)

    def binary(self, data: bytes) -> None:
        self._fan_in._from_backend_binary(self._name, data)

    def wait_for_room(self, resume: Callable[[], None]) -> bool:
        return self._queue.wait_for_room(self._seconds, resume)


class FanIn:
    """One client socket and its backend sockets: a Follower (state/followers.py) while it is open."""

    def __init__(
        self,
        client: ClientSocket,
        first: aiohttp.ClientWebSocketResponse,
        *,
        client_id: str,
        primary: Backend,
        backends: BackendTable,
        session: aiohttp.ClientSession,
        target: str,
        headers_for: HeadersFor,
        protocols: tuple[str, ...],
        settings: WebSocketSettings,
        followers: Followers,
        meter: FanInMeter,
        peer: str | None,
        also_follow: tuple[str, ...] = (),
    ) -> None:
        self.client = client
        self._also_follow = also_follow
        self.client_id = client_id
        self.primary = primary
        self._backends = backends
        self._session = session
        self._target = target
        self._headers_for = headers_for
        self._protocols = protocols
        self._settings = settings
        self._followers = followers
        self._meter = meter
        self._peer = peer
        self._heartbeat = settings.heartbeat_seconds or None
        self._queue = SendQueue(
            settings.send_queue_messages, settings.send_queue_bytes, self._queue_dropped, self._start_sender
        )
        self._sender: asyncio.Task[None] | None = None
        self._holds: dict[str, _Hold] = {}
        self._upstreams: dict[str, _Upstream] = {primary.name: _Upstream(primary, first)}
        self._feature_flags: str | None = None  # the client's, replayed to a backend socket opened later
        self._flags_answered = False
        self._status_sent = False
        self._ended = False
        self._closed_by = "client"

    # --- the session -------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Relay until the client's socket ends, or a backend ends it; then close every backend socket."""
        self._followers.add(self.client_id, self)
        first = self._upstreams[self.primary.name]
        self._connected(first)
        first.task = asyncio.create_task(self._follow_upstream(first), name=f"ws<-{self.primary.name}")
        for name in self._also_follow:
            self._upstream(name)
        closed_with: int | None = None
        try:
            closed_with = await self._from_client()
        finally:
            self._ended = True
            self._followers.remove(self.client_id, self)
            for hold in self._holds.values():
                hold.timer.cancel()
            self._holds.clear()
            sender = self._sender
            if sender is not None and self._queue.close_code is not None:
                await asyncio.wait({sender}, timeout=_CLOSE_SECONDS)  # a backend ended it: what came before first
            tasks = [up.task for up in self._upstreams.values() if up.task is not None]
            if sender is not None:
                tasks.append(sender)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            code = closed_with or self.client.close_code or WSCloseCode.OK
            for up in self._upstreams.values():
                await self._close_upstream(up, code)
            relay = self._meter.relay(self.primary.name)
            (relay.closed_by_backend if self._closed_by == "backend" else relay.closed_by_client).inc()

    async def _close_upstream(self, up: _Upstream, code: int) -> None:
        ws, up.ws = up.ws, None
        if ws is None:
            return
        self._meter.relay(up.backend.name).upstream_sockets.dec()
        if not ws.closed:
            try:
                await ws.close(code=code)
            except (aiohttp.ClientError, OSError) as exc:
                log.debug("closing the socket to backend %s: %r", up.backend.name, exc)

    async def _from_client(self) -> int | None:
        """Relay the client's messages to every backend socket until it ends; the code it closed with, or was
        failed with if it broke a rule (size 1009, protocol 1002)."""
        client = self.client
        while True:
            msg = await client.receive()
            if msg.type == WSMsgType.CLOSE:
                # Its code as sent: answering it may fail (the client gone), and aiohttp then says 1006.
                return int(msg.data) if isinstance(msg.data, int) and msg.data >= 1000 else None
            if msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            if msg.type == WSMsgType.TEXT:
                data: str | bytes = msg.data
                kind = _message_type(msg.data) or "other"
                if kind == "feature_flags":
                    self._feature_flags = msg.data
            elif msg.type == WSMsgType.BINARY:
                data, kind = msg.data, BINARY
            elif msg.type == WSMsgType.ERROR:
                # aiohttp has closed the client's socket with the error's code; the backends' get it too.
                if isinstance(msg.data, WebSocketError):
                    log.info("closing a WebSocket from %s with %d: %s", self._peer or "?", msg.data.code, msg.data)
                    return int(msg.data.code)
                break
            else:
                continue
            self._meter.message("to_backend", kind, 1)
            for up in list(self._upstreams.values()):
                await self._send_upstream(up, data)
        return None

    async def _send_upstream(self, up: _Upstream, data: str | bytes) -> None:
        relay = self._meter.relay(up.backend.name)
        ws = up.ws
        if ws is None or ws.closed:
            relay.dropped_to_backend.inc()
            return
        try:
            if isinstance(data, str):
                await ws.send_str(data)
            else:
                await ws.send_bytes(data)
        except (ConnectionResetError, aiohttp.ClientError):  # that socket is closing: it is opened again
            relay.dropped_to_backend.inc()
            return
        relay.to_backend.inc()

    def _queue_dropped(self, kind: str) -> None:
        self._meter.queue_dropped(kind)

    def _start_sender(self) -> None:
        if not self._ended:  # once the client has gone, nothing more is sent to it
            self._sender = asyncio.create_task(send_queued(self._queue, self.client, self._meter), name="ws->client")

    # --- backend sockets ---------------------------------------------------------------------------------------

    def _connected(self, up: _Upstream) -> None:
        self._meter.relay(up.backend.name).upstream_sockets.inc()
        up.tried()

    async def _follow_upstream(self, up: _Upstream) -> None:
        """Read one backend socket for as long as the client stays, opening it again when it drops."""
        settings = self._settings
        delay = settings.reconnect_initial_seconds
        dropped = False
        while not self._over():
            if up.ws is None:
                try:
                    opened = await self._open(up.backend)
                except GatewayError as exc:
                    # Said once per outage, not at every try.
                    level = logging.WARNING if delay == settings.reconnect_initial_seconds else logging.DEBUG
                    log.log(level, "WebSocket of client %s to backend %s: %s", self.client_id, up.backend.name, exc)
                    up.tried()  # a POST /prompt waiting for it goes on: the backend will likely refuse it too
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, settings.reconnect_max_seconds)
                    continue
                if self._over():
                    await opened.close()
                    return
                up.ws = opened
                self._connected(up)
                if dropped:
                    self._meter.upstream_event(up.backend.name, "reopened")
                    log.info("WebSocket of client %s to backend %s open again", self.client_id, up.backend.name)
                if self._feature_flags is not None:
                    await self._send_upstream(up, self._feature_flags)
            delay = settings.reconnect_initial_seconds
            ws = up.ws
            await self._read_upstream(up, ws)
            code = ws.close_code
            up.ws = None
            self._meter.relay(up.backend.name).upstream_sockets.dec()
            up.queue_remaining, up.status_seen = 0, False
            if self._over():
                return
            if code not in _REOPEN_CODES:
                log.info("backend %s closed the WebSocket of client %s with %s", up.backend.name, self.client_id, code)
                self._closed_by = "backend"
                self._queue.close_with(code or WSCloseCode.GOING_AWAY)
                return
            dropped = True
            self._meter.upstream_event(up.backend.name, "dropped")
            log.warning(
                "WebSocket of client %s to backend %s dropped (%s); opening it again",
                self.client_id,
                up.backend.name,
                code,
            )
            await asyncio.sleep(delay)

    def _over(self) -> bool:
        return self._ended

    async def _open(self, backend: Backend) -> aiohttp.ClientWebSocketResponse:
        return await open_upstream(
            self._session, backend, self._target, self._headers_for(backend), self._protocols, self._heartbeat
        )

    async def _read_upstream(self, up: _Upstream, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Its frames go to the client's queue as they arrive (backend_socket.py); this loop waits for the
        socket's end. Where they could not be split, every message comes through it."""
        name = up.backend.name
        frames = ws.frames if isinstance(ws, BackendSocket) else None
        if frames is not None:
            frames.attach(_FromBackend(self, up))
        queue, from_text = self._queue, self._from_backend_text  # looked up once: this loop runs per message
        receive = ws.receive
        try:
            while True:  # `async for msg in ws`, without its step per message
                msg = await receive()
                kind = msg.type
                if kind is _TEXT:
                    from_text(up, msg.data)
                elif kind is _BINARY:
                    self._from_backend_binary(name, msg.data)
                elif kind is _ERROR or kind in _ENDED:
                    break
                if queue.full():
                    await queue.room(self._settings.backpressure_seconds)
        except (aiohttp.ClientError, OSError) as exc:
            log.debug("reading the socket of backend %s: %r", name, exc)
        finally:
            if frames is not None:  # its wait for room ends with it; aiohttp reads what is left, the close
                self._queue.stop_waiting()
                frames.detach()

    def _from_backend_text(self, up: _Upstream, text: str) -> None:
        name = up.backend.name
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self._queue.put(Outgoing("other", text, name))
            return
        kind = message.get("type")
        kind = kind if isinstance(kind, str) else "other"
        data = message.get("data")
        if kind == "status":
            self._status(up, message, text)
            return
        if kind == "feature_flags":
            if self._flags_answered:
                return  # each backend answers the client's flags; the client asked once
            self._flags_answered = True
        if kind == "executed":
            text = refs.rewrite_ws_text(text, name)
        item = Outgoing(kind, text, name, _essential(kind, data))
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        hold = self._holds.get(prompt_id) if isinstance(prompt_id, str) else None
        if hold is None or not isinstance(prompt_id, str):
            self._queue.put(item)
            return
        self._hold(prompt_id, hold, item)

    def _from_backend_binary(self, name: str, data: bytes) -> None:
        """A binary frame names no prompt, but a backend runs one prompt at a time: while one of this client's
        is held there, its previews wait with its events, in the order they came."""
        item = Outgoing(BINARY, data, name)
        for prompt_id, hold in self._holds.items():
            if hold.backend == name:
                self._hold(prompt_id, hold, item)
                return
        self._queue.put(item)

    def _hold(self, prompt_id: str, hold: _Hold, item: Outgoing) -> None:
        hold.messages.append(item)
        self._meter.held.inc()
        if len(hold.messages) >= self._settings.hold_max_messages:
            self._release(prompt_id, "overflow")

    def _status(self, up: _Upstream, message: dict[str, object], text: str) -> None:
        """One status for the client, whichever backend's queue changed: the sum of every queue followed."""
        data = message.get("data")
        status = data.get("status") if isinstance(data, dict) else None
        info = status.get("exec_info") if isinstance(status, dict) else None
        remaining = info.get("queue_remaining") if isinstance(info, dict) else None
        if not isinstance(remaining, int) or isinstance(remaining, bool):
            self._queue.put(Outgoing("status", text, up.backend.name))
            return
        first, up.status_seen = not up.status_seen, True
        up.queue_remaining = remaining
        if first and self._status_sent:
            return  # a later backend socket's connect-time status: its count is in the next status
        self._status_sent = True
        total = sum(u.queue_remaining for u in self._upstreams.values())
        if total != remaining:
            assert isinstance(info, dict)
            info["queue_remaining"] = total
            text = json.dumps(message)
        self._queue.put(Outgoing("status", text, up.backend.name))

    # --- Follower: what POST /prompt tells this socket ---------------------------------------------------------

    async def follow(self, backend: str, prompt_id: str) -> None:
        if self._ended:
            return
        loop = asyncio.get_running_loop()
        if prompt_id not in self._holds:
            timer = loop.call_later(self._settings.hold_seconds, self._release, prompt_id, "timeout")
            self._holds[prompt_id] = _Hold(backend, [], timer)
        up = self._upstream(backend)
        if up.ws is not None:
            return
        # Wait for it to open (its first try at most, the backend's connect timeout): a prompt's events go only
        # to the sockets open when they are sent.
        waiter: asyncio.Future[None] = loop.create_future()
        up.waiters.append(waiter)
        timer = loop.call_later(up.backend.timeouts.connect_seconds, _settle, waiter)
        try:
            await waiter
        finally:
            timer.cancel()

    def _upstream(self, backend: str) -> _Upstream:
        """The socket on `backend`, opened (and followed) now if there is none yet."""
        up = self._upstreams.get(backend)
        if up is None:
            up = self._upstreams[backend] = _Upstream(self._backends[backend])
            up.task = asyncio.create_task(self._follow_upstream(up), name=f"ws<-{backend}")
            log.info("WebSocket of client %s follows backend %s too", self.client_id, backend)
        return up

    def answered(self, prompt_id: str) -> None:
        self._release(prompt_id, "answered")

    def _release(self, prompt_id: str, reason: str) -> None:
        hold = self._holds.pop(prompt_id, None)
        if hold is None:
            return
        hold.timer.cancel()
        if reason != "answered":
            self._followers.released(prompt_id)
            log.info("events of prompt %s released to client %s without its answer (%s)", prompt_id, self.client_id,
                     reason)
        self._meter.released(reason).inc()
        self._queue.put_held(hold.messages)


class MessageSink(Protocol):
    """What send_queued writes to: the client's socket (ClientSocket)."""

    async def send_many(self, messages: Sequence[str | bytes | Frame]) -> None: ...

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"") -> bool: ...


async def send_queued(queue: SendQueue, client: MessageSink, meter: FanInMeter) -> None:
    """Send the client what is queued for it, in order, until the queue is empty (the queue starts a sender
    again when more comes), its socket closes, or the queue says to close it: what is queued at once leaves in
    one write (up to _BATCH_BYTES, or one larger message alone)."""
    sent: dict[tuple[str, str], int] = {}  # (backend, message type) -> sent since the metrics were told
    uncounted = 0
    try:
        while True:
            batch = queue.take(_BATCH_BYTES)
            if not batch:  # nothing awaited since take(): nothing was put in between
                if queue.sender_done():
                    return
                await client.close(code=queue.close_code or WSCloseCode.GOING_AWAY, message=b"backend closed")
                return
            if uncounted >= _COUNTS_EVERY_MESSAGES:
                _count_sent(meter, sent)
                uncounted = 0
            try:
                await client.send_many([queued.data for queued in batch])
            except ConnectionResetError:  # the client's socket is closing: nothing more reaches it
                for queued in batch:
                    meter.relay(queued.origin).dropped_to_client.inc()
                return
            _tally(sent, batch)
            uncounted += len(batch)
    finally:
        _count_sent(meter, sent)


def _tally(sent: dict[tuple[str, str], int], batch: list[Outgoing]) -> None:
    """Add a batch's messages to `sent` by (backend, message type): a run of one kind from one backend (a burst
    of progress) is added once."""
    origin, kind, run = "", "", 0
    for queued in batch:
        if queued.kind != kind or queued.origin != origin:
            if run:
                sent[(origin, kind)] = sent.get((origin, kind), 0) + run
            origin, kind, run = queued.origin, queued.kind, 0
        run += 1
    if run:
        sent[(origin, kind)] = sent.get((origin, kind), 0) + run


def _count_sent(meter: FanInMeter, sent: dict[tuple[str, str], int]) -> None:
    for (origin, kind), count in sent.items():
        meter.relay(origin).to_client.inc(count)
        meter.message("to_client", kind, count)
    sent.clear()


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _message_type(text: str) -> str | None:
    try:
        message = json.loads(text)
    except ValueError:
        return None
    kind = message.get("type") if isinstance(message, dict) else None
    return kind if isinstance(kind, str) else None
