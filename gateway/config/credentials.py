"""The gateway's credentials, read once at start-up: the admin token (inline or from a file, for Docker and
Kubernetes secrets) and the API tokens (inline and from a TOML file of `user = "token"` lines), checked for
strength and for clashes so that a token always names exactly one principal."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

MIN_TOKEN_CHARS = 16
# URL-unreserved characters only: a token must travel unchanged in a header, a query string and a cookie
# (what `secrets.token_urlsafe` makes).
_TOKEN = re.compile(r"^[A-Za-z0-9._~-]+$")
MAX_USER_CHARS = 256


@dataclass(frozen=True, slots=True)
class Credentials:
    admin_token: str | None = field(default=None, repr=False)
    # A plain dict (settings are copied deeply, and a mappingproxy cannot be): nothing writes to it.
    users_by_token: Mapping[str, str] = field(default_factory=dict, repr=False)


TokenValue = SecretStr | tuple[SecretStr, ...]


def resolve_credentials(
    admin_token: SecretStr | None,
    admin_token_file: Path | None,
    api_tokens: Mapping[str, TokenValue],
    api_tokens_file: Path | None,
) -> Credentials:
    """Raise ValueError naming the key at fault; never with a token's value in the message."""
    if admin_token is not None and admin_token_file is not None:
        raise ValueError("set security.admin_token or security.admin_token_file, not both")
    admin = admin_token.get_secret_value() if admin_token is not None else None
    if admin_token_file is not None:
        admin = _read_token_file(admin_token_file)
    if admin is not None:
        _check_token(admin, "security.admin_token")
    users_by_token: dict[str, str] = {}
    tables: list[tuple[str, Mapping[str, TokenValue]]] = [("security.api_tokens", api_tokens)]
    if api_tokens_file is not None:
        tables.append((str(api_tokens_file), _read_tokens_file(api_tokens_file)))
    for where, table in tables:
        for user, value in table.items():
            _check_user(user, where)
            for token in _tokens_of(value):
                _check_token(token, f"{where} entry {user!r}")
                if token == admin:
                    raise ValueError(f"{where} entry {user!r} uses the admin token; give each its own")
                owner = users_by_token.setdefault(token, user)
                if owner != user:
                    raise ValueError(f"{where}: users {owner!r} and {user!r} share a token; give each its own")
    return Credentials(admin, users_by_token)


def _tokens_of(value: TokenValue) -> Iterable[str]:
    if isinstance(value, SecretStr):
        return (value.get_secret_value(),)
    return (item.get_secret_value() for item in value)


def _check_token(token: str, where: str) -> None:
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"{where} is shorter than {MIN_TOKEN_CHARS} characters; make one with "
                         "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    if not _TOKEN.match(token):
        raise ValueError(f"{where} may hold only letters, digits and . _ ~ - (it travels in headers, queries "
                         "and cookies)")


def _check_user(user: str, where: str) -> None:
    if not 1 <= len(user) <= MAX_USER_CHARS or any(ord(c) < 0x20 or ord(c) == 0x7F for c in user):
        raise ValueError(f"{where}: user name {user!r} must be 1 to {MAX_USER_CHARS} characters, none of them "
                         "control characters")


def _read_token_file(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"security.admin_token_file {path} cannot be read: {exc.__class__.__name__}") from None
    if not token:
        raise ValueError(f"security.admin_token_file {path} is empty")
    return token


def _read_tokens_file(path: Path) -> Mapping[str, TokenValue]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"security.api_tokens_file {path} cannot be read: {exc.__class__.__name__}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"security.api_tokens_file {path} is not TOML: {exc}") from None
    table: dict[str, TokenValue] = {}
    for user, value in data.items():
        if isinstance(value, str):
            table[user] = SecretStr(value)
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            table[user] = tuple(SecretStr(v) for v in value)
        else:
            raise ValueError(f"security.api_tokens_file {path}: entry {user!r} must be a token or a list of tokens")
    return table
