"""Logging set-up and the one access line per request (JSON or readable text), read from the Exchange.

No secrets in logs: URLs are shown without their user:password part (`shown_url`), and both formatters mask
any that slips through (a password in a URL's userinfo or in a `password=` query parameter).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from yarl import URL

from gateway.exchange import Exchange

access_log = logging.getLogger("comfy_gateway.access")

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@\"']+@")
_SECRET_PARAM = re.compile(r"(?P<key>[?&](?:password|passwd|pwd|token|secret|access_token)=)[^&\s\"']+", re.IGNORECASE)
MASK = "***"


def shown_url(url: URL | str) -> str:
    """A URL as logs and error messages may show it: credentials masked, everything else kept."""
    parsed = URL(url) if isinstance(url, str) else url
    if parsed.raw_user is not None or parsed.raw_password is not None:
        parsed = parsed.with_user(MASK)
    return redact_secrets(str(parsed))


def redact_secrets(text: str) -> str:
    if "://" not in text:  # the common case (every access line) costs one substring test
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}{MASK}", text)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact_secrets(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; structured fields come from `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return redact_secrets(json.dumps(line, default=str))


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
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
    if ex.guardrail_actions:
        fields["guardrails"] = ",".join(ex.guardrail_actions)
    return fields


def log_exchange(ex: Exchange) -> None:
    """`GET /history/{prompt_id} 200 1.2ms backend=comfyui route=affinity ...`: which backend served what, and why."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields = exchange_fields(ex)
    text = " ".join(
        f"{k}={v}" for k, v in fields.items() if k not in ("method", "path", "status", "duration_ms") and v is not None
    )
    access_log.info(
        "%s %s %s %.1fms %s", ex.method, ex.path, ex.status, fields["duration_ms"], text, extra={"fields": fields}
    )
