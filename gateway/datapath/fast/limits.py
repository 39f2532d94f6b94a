"""Every bound of the fast data path in one frozen value: sizes, counts and timeouts, with what a client sees
past each one. Backend timeouts (connect, read, total) are not here: they are per backend, in its settings.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True, slots=True)
class Limits:
    """The defaults are settings.limits' own (serve.limits_for builds one from the settings)."""

    # --- what one request may be (refused with the status in the comment) ---
    max_target_bytes: int = 8 * KIB  # the request-target (path and query): 414
    max_header_count: int = 100  # 431
    max_head_bytes: int = 32 * KIB  # request line and headers together: 431
    max_body_bytes: int = 100 * MIB  # settings.max_body_bytes: 413, before a byte is forwarded when it is declared
    max_ws_message_bytes: int = 4 * MIB  # one WebSocket message from a client: closed with 1009
    # --- what one connection may hold ---
    max_pipelined_requests: int = 16  # parsed ahead of the one being answered; past it the connection is closed
    max_early_body_bytes: int = 256 * KIB  # body read before the backend connection is ready: reading pauses
    max_rewrite_body_bytes: int = 64 * MIB  # a /history answer read whole to rewrite: 502 past it
    max_rewrite_frame_bytes: int = 8 * MIB  # a WebSocket text message held to rewrite; larger ones pass untouched
    write_high_water_bytes: int = 256 * KIB  # a side's unsent bytes past which the other side stops being read
    write_low_water_bytes: int = 64 * KIB
    # --- how many ---
    max_client_connections: int = 10_000  # past it new connections are closed at once
    max_connections_per_backend: int = 100  # pooled HTTP connections (WebSockets are not pooled)
    max_idle_per_backend: int = 32
    max_waiting_per_backend: int = 1_000  # requests queued for a connection past the cap: 502 beyond
    kept_heads: int = 4_096  # heads whose guard verdict and backend request head are kept; 0: none
    max_kept_head_bytes: int = 4 * KIB  # a larger head is judged every time, never kept
    # --- timeouts (seconds) ---
    client_head_seconds: float = 30.0  # from the first byte of a request to the end of its head: closed
    keepalive_seconds: float = 75.0  # an idle client connection between requests: closed
    client_body_seconds: float = 60.0  # silence while a request body is being received: closed
    send_seconds: float = 60.0  # a client that reads nothing while its answer waits: closed
    upstream_idle_seconds: float = 15.0  # a pooled backend connection unused this long is closed (below the
    # 75 s keep-alive of aiohttp servers such as ComfyUI, so the backend practically never closes one first)
    linger_seconds: float = 5.0  # after an early error answer, unread request bytes are drained this long
    drain_seconds: float = 10.0  # graceful shutdown: in-flight requests get this long to finish

    def tick_seconds(self, backend_timeouts: tuple[float, ...] = ()) -> float:
        """How often deadlines are checked: a quarter of the shortest timeout, between 50 ms and 1 s."""
        shortest = min((self.client_head_seconds, self.client_body_seconds, self.send_seconds, *backend_timeouts))
        return min(1.0, max(0.05, shortest / 4))
