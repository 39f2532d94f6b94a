"""Secrets kept out of logs, errors and answers: a URL shown without its user:password part, and any
credential that slips into text masked."""

from __future__ import annotations

import re

from yarl import URL

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
