"""What the tests know of a JSON value's shape, computed from the parsed value (the reference the gateway's
byte-level checks are held to)."""

from __future__ import annotations

from typing import Any


def json_depth(value: Any) -> int:
    """How deep arrays and objects nest in a parsed JSON value: `[]` is 1 deep, `{"a": [1]}` 2, a scalar 0."""
    if isinstance(value, dict):
        return 1 + max(map(json_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(json_depth, value), default=0)
    return 0
