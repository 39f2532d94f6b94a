"""The access line of one request, read from its Exchange: which backend served what, and why.

It is written for every request, so it is built directly: the readable text without a dict of fields, the
duration without float formatting, the time stamp's date and clock formatted once a second. The compiled build
compiles this module; logs.py's formatters and batching handler take its text.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gateway.core.exchange import Exchange
from gateway.core.redact import redact_secrets

Converter = Callable[[float | None], time.struct_time]

# "000" to "999": a time stamp's milliseconds, as logging's default format writes them (`%03d`).
_MILLISECONDS = tuple(f"{value:03d}" for value in range(1000))
_IN_HEAD = frozenset(("method", "path", "status", "duration_ms"))
_RARE = ("unavailable", "error", "upstream_errors", "guardrails")  # exchange_fields' last, in its order


def exchange_fields(ex: Exchange) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "method": ex.method,
        "path": ex.path,
        "endpoint": ex.endpoint,
        "status": ex.status,
        "duration_ms": round(ex.duration_seconds() * 1000, 2),
        "backend": ex.backend,
        "route": ex.source,
        "bytes_in": ex.bytes_in,
        "bytes_out": ex.bytes_out,
    }
    if ex.prompt_id:
        fields["prompt_id"] = ex.prompt_id
    if ex.user:
        fields["user"] = ex.user
    if ex.unavailable:
        fields["unavailable"] = ",".join(ex.unavailable)
    if ex.error:
        fields["error"] = ex.error
    if ex.upstream_errors:
        fields["upstream_errors"] = ",".join(f"{backend}:{kind}" for backend, kind in ex.upstream_errors)
    if ex.guardrails:
        fields["guardrails"] = ",".join(ex.guardrails)
    return fields


def milliseconds_text(seconds: float) -> str:
    """A duration in milliseconds to one decimal (`1.2`), from whole tenths: no float formatting."""
    tenths = int(seconds * 10_000.0 + 0.5) if seconds > 0 else 0
    return f"{tenths // 10}.{tenths % 10}"


class AccessLine:
    """The access line: its fields made once, when a formatter first asks (JsonFormatter for the fields and the
    message, TextFormatter for the message alone)."""

    __slots__ = ("ex", "_fields")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self._fields: dict[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        fields = self._fields
        if fields is None:
            fields = self._fields = exchange_fields(self.ex)
        return fields

    def __str__(self) -> str:
        return self.text()

    def text(self) -> str:
        """`GET /history/{id} 200 1.2ms endpoint=... backend=... route=... bytes_in=0 bytes_out=2048 ...`"""
        ex = self.ex
        duration = milliseconds_text(ex.duration_seconds())
        if self._fields is not None or ex.backend is None or ex.source is None:
            fields = self.fields()
            rest = " ".join(f"{k}={v}" for k, v in fields.items() if k not in _IN_HEAD and v is not None)
            return f"{ex.method} {ex.path} {ex.status} {duration}ms {rest}"
        # The same line without the fields' dict, for a request that went to a backend: every request but the
        # gateway's own answers.
        line = (
            f"{ex.method} {ex.path} {ex.status} {duration}ms endpoint={ex.endpoint} backend={ex.backend} "
            f"route={ex.source} bytes_in={ex.bytes_in} bytes_out={ex.bytes_out}"
        )
        if ex.prompt_id:
            line += f" prompt_id={ex.prompt_id}"
        if ex.user:
            line += f" user={ex.user}"
        if ex.unavailable or ex.error or ex.upstream_errors or ex.guardrails:
            more = exchange_fields(ex)
            line += "".join(f" {k}={more[k]}" for k in _RARE if k in more)
        return line


class TimeStamps:
    """`2026-11-25 00:29:21,199`: a time as logging's default `asctime` writes it, the date and clock
    formatted once a second."""

    __slots__ = ("_second", "_second_text")

    def __init__(self) -> None:
        self._second = -1
        self._second_text = ""

    def text(self, created: float, milliseconds: int, converter: Converter) -> str:
        """`converter`: the formatter's (time.localtime unless it was given another)."""
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", converter(second))
            self._second = second
        if 0 <= milliseconds < 1000:
            return f"{self._second_text},{_MILLISECONDS[milliseconds]}"
        return f"{self._second_text},{milliseconds:03d}"  # a record made by hand may say anything


def access_text(stamps: TimeStamps, converter: Converter, logger_name: str, line: AccessLine, created: float) -> str:
    """The text line logging's TextFormatter writes for the access line's record made at `created`."""
    milliseconds = int((created - int(created)) * 1000)
    stamp = stamps.text(created, milliseconds, converter)
    return redact_secrets(f"{stamp} INFO {logger_name}: {line.text()}")
