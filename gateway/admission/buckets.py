"""Token buckets per client: `rate` tokens a second refill each bucket up to `burst`; a request takes one.

Buckets live in memory, per process: a limit guards this process's own work, and a client spread over
several replicas gets each one's allowance (stated in the README). The table is bounded: past `max_clients`
the client seen least recently is forgotten, which only ever gives that client a full bucket again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBuckets:
    def __init__(
        self, rate_per_second: float, burst: int, max_clients: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate_per_second
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, as of)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> float:
        """0.0 if `key` may go on now (a token taken); else how many seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        buckets = self._buckets
        found = buckets.get(key)
        if found is None:
            tokens = self.burst
            if len(buckets) >= self.max_clients:
                buckets.popitem(last=False)
        else:
            buckets.move_to_end(key)
            tokens = found[0] + (now - found[1]) * self.rate
            if tokens > self.burst:
                tokens = self.burst
        if tokens >= 1.0:
            buckets[key] = (tokens - 1.0, now)
            return 0.0
        buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)
