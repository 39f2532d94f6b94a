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
from gateway.observe.access import AccessLine, TimeStamps, access_text

access_log = logging.getLogger("comfy_gateway.access")



class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.stamps = TimeStamps()

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        """As logging's own (local time, `2026-11-25 00:29:21,199`), with the strftime done once a second."""
        return self.stamps.text(record.created, int(record.msecs), self.converter)

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return redact_secrets(super().format(record))
        # The common line, as the format string above lays it out, without logging's generic steps.
        record.message = record.getMessage()
        return redact_secrets(f"{self.formatTime(record)} {record.levelname} {record.name}: {record.message}")

    def format_access(self, line: AccessLine, created: float) -> str:
        """What format() makes of the access line's record, from the line and its time alone."""
        return access_text(self.stamps, self.converter, access_log.name, line, created)


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
