"""How many WebSockets each client holds open through this process, against a cap per client."""

from __future__ import annotations


class OpenSockets:
    def __init__(self, max_per_client: int) -> None:
        self.max_per_client = max_per_client  # 0: no cap
        self._open: dict[str, int] = {}

    def open(self, key: str) -> bool:
        """Count one more socket of `key`; False (and nothing counted) if it holds its cap already."""
        held = self._open.get(key, 0)
        if self.max_per_client and held >= self.max_per_client:
            return False
        self._open[key] = held + 1
        return True

    def close(self, key: str) -> None:
        held = self._open.get(key, 0) - 1
        if held > 0:
            self._open[key] = held
        else:
            self._open.pop(key, None)

    def held(self, key: str) -> int:
        return self._open.get(key, 0)
