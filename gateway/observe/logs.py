"""Logging set-up and the one access line per request (JSON or readable text), read from the Exchange.

No secrets in logs: URLs are shown without their user:password part (`shown_url`), and both formatters mask
any that slips through (a password in a URL's userinfo or in a `password=` query parameter).

The access line is on every request's path, so it is cheap by construction: its text (or its JSON fields)
is built once, by the formatter in use, and lines are written in batches, as nginx's `access_log ...
buffer= flush=` does: a line formatted by logging's generic steps and written and flushed on its own is a
visible share of a proxied request; batched and formatted directly it is much cheaper, what remains being
mostly logging's own record and dispatch. A warning or error goes out at once, after every line before it.

Where nothing but the gateway's own batching handler would see it (no other handler or filter on the way),
the access line skips logging's record and dispatch too and is handed to that handler as text: the very
line logging would have written, for far less than through logging's record, in one process and under load
alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from typing import Any, TextIO

from gateway.core.exchange import Exchange
from gateway.core.redact import redact_secrets

access_log = logging.getLogger("comfy_gateway.access")



class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        """As logging's own (local time, `2026-11-25 00:29:21,199`), with the strftime done once a second."""
        second = int(record.created)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return f"{self._second_text},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return redact_secrets(super().format(record))
        # The common line, as the format string above lays it out, without logging's generic steps.
        record.message = record.getMessage()
        return redact_secrets(f"{self.formatTime(record)} {record.levelname} {record.name}: {record.message}")

    def format_access(self, line: AccessLine, created: float) -> str:
        """What format() makes of the access line's record, from the line and its time alone."""
        second = int(created)
        if second != self._second:
            self._second, self._second_text = second, time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        msecs = int((created - second) * 1000)
        return redact_secrets(f"{self._second_text},{msecs:03d} INFO {access_log.name}: {line}")


class JsonFormatter(logging.Formatter):
    """One JSON object per line; structured fields come from `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _json_time(record.created, int(record.msecs)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, AccessLine):
            line.update(access.fields())  # the ones the message was made from, not computed again
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return redact_secrets(json.dumps(line, default=str))

    def format_access(self, line: AccessLine, created: float) -> str:
        """What format() makes of the access line's record, from the line and its time alone."""
        fields = {"time": _json_time(created, int((created - int(created)) * 1000)), "level": "info",
                  "logger": access_log.name, "message": str(line), **line.fields()}
        return redact_secrets(json.dumps(fields, default=str))


def _json_time(created: float, msecs: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{msecs:03d}Z"


class BatchingStreamHandler(logging.StreamHandler[TextIO]):
    """Formatted lines kept in memory and written in one call: when a WARNING or worse arrives (after the lines
    before it), when they pass `max_bytes`, and on flush(), which a periodic task calls (flush_logs) and
    logging.shutdown calls at exit. Bounded: at most max_bytes wait, for at most the flush interval."""

    lock: threading.RLock  # made by Handler.__init__ (createLock), so never None here

    def __init__(self, stream: TextIO, max_bytes: int = 64 * 1024) -> None:
        super().__init__(stream)
        self.max_bytes = max_bytes
        self._lines: list[str] = []
        self._size = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise into the caller
            self.handleError(record)
            return
        self.add_line(line, record.levelno)

    def add_line(self, line: str, levelno: int) -> None:
        """A formatted line, batched (the caller holds the handler's lock, as logging does around emit)."""
        self._lines.append(line)
        self._size += len(line) + 1
        if levelno >= logging.WARNING or self._size >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            lines, self._lines, self._size = self._lines, [], 0
            if lines and self.stream is not None:
                lines.append("")
                self.stream.write("\n".join(lines))
            super().flush()
        except Exception:  # noqa: BLE001 - a closed or broken stream must not take the gateway down
            pass
        finally:
            self.release()


def flush_logs() -> None:
    """Write out every batched line (the periodic flush; also safe to call any time)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


async def flush_logs_periodically(interval_seconds: float) -> None:
    while True:
        await asyncio.sleep(interval_seconds)
        flush_logs()


def configure_logging(level: str = "INFO", fmt: str = "text", *, batch_seconds: float = 0.0) -> None:
    """`batch_seconds` > 0: lines are written in batches (BatchingStreamHandler), which the caller must flush
    at least that often (flush_logs); 0: every line is written as it comes."""
    handler = BatchingStreamHandler(sys.stderr) if batch_seconds > 0 else logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


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


class AccessLine:
    """The access line: its fields made once, when a formatter first asks (JsonFormatter for the fields and the
    message, TextFormatter for the message alone)."""

    __slots__ = ("ex", "_fields")

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self._fields: dict[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        if self._fields is None:
            self._fields = exchange_fields(self.ex)
        return self._fields

    def __str__(self) -> str:
        ex = self.ex
        if self._fields is not None or ex.backend is None or ex.source is None:
            fields = self.fields()
            text = " ".join(f"{k}={v}" for k, v in fields.items() if k not in _IN_HEAD and v is not None)
            return f"{ex.method} {ex.path} {ex.status} {fields['duration_ms']:.1f}ms {text}"
        # The same line without the fields' dict, for a request that went to a backend: the text line (the
        # default) is written for every request, and the dict was most of its cost.
        duration_ms = round(ex.duration_seconds() * 1000, 2)
        line = (
            f"{ex.method} {ex.path} {ex.status} {duration_ms:.1f}ms endpoint={ex.endpoint} backend={ex.backend} "
            f"route={ex.source} bytes_in={ex.bytes_in} bytes_out={ex.bytes_out}"
        )
        if ex.prompt_id:
            line += f" prompt_id={ex.prompt_id}"
        if ex.user:
            line += f" user={ex.user}"
        if ex.unavailable or ex.error or ex.upstream_errors or ex.guardrails:
            rest = exchange_fields(ex)
            line += "".join(f" {k}={v}" for k, v in rest.items() if k in _RARE)
        return line


_IN_HEAD = frozenset(("method", "path", "status", "duration_ms"))
_RARE = ("unavailable", "error", "upstream_errors", "guardrails")  # exchange_fields' last, in its order


def log_exchange(ex: Exchange) -> None:
    """`GET /history/{prompt_id} 200 1.2ms backend=comfyui route=affinity ...`: which backend served what, and why."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    line = AccessLine(ex)
    sole = _sole_batching_handler()
    if sole is not None:
        handler, formatter = sole
        try:
            text = formatter.format_access(line, time.time())
        except Exception:  # noqa: BLE001 - the record path below reports what went wrong, never raises
            pass
        else:
            with handler.lock:
                handler.add_line(text, logging.INFO)
            return
    access_log.info("%s", line, extra={"access": line, "exchange": ex})


def _sole_batching_handler() -> tuple[BatchingStreamHandler, TextFormatter | JsonFormatter] | None:
    """The gateway's own batching handler and its own formatter when it alone would see an access record: no
    other handler and no filter from the access logger up to the root. Otherwise None, and the line goes
    through logging, for whatever else was attached (a test's capture, an operator's filter)."""
    logger: logging.Logger = access_log
    while logger.parent is not None:  # every logger below the root
        if logger.handlers or logger.filters or not logger.propagate:
            return None
        logger = logger.parent
    if logger.filters or len(logger.handlers) != 1:
        return None
    handler = logger.handlers[0]
    if type(handler) is not BatchingStreamHandler or handler.filters or handler.level > logging.INFO:
        return None
    formatter = handler.formatter
    if type(formatter) is not TextFormatter and type(formatter) is not JsonFormatter:
        return None
    return handler, formatter
