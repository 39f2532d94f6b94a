"""Updates of prometheus children bound once per label set, for what every request records.

prometheus_client's inc() and observe() check on every call what a labelled child settles once (that it has
its labels; that a counter's amount is not negative: ours are counts and sizes), and a histogram finds its
bucket by a loop in Python. These call the child's value holders directly (its `_value`, or `_sum`, `_buckets`
and `_upper_bounds`), the same ones its methods update, in one process or in several (multiprocess values
have the same `inc`); a child without them is updated through its public method.

An in-process value (prometheus_client's MutexValue) is added to without its lock: every update bound here is
made on the event loop's thread, and so is every read (GET /metrics is served there), so the lock guards
against nothing, and taking it was most of an update's cost.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.values import MutexValue

from gateway.observe.metric_families import Children

Update = Callable[[float], None]
M = TypeVar("M", Counter, Gauge, Histogram)


def counter_add(child: Counter) -> Update:
    """child.inc(amount) for amounts never negative."""
    add = _adder(getattr(child, "_value", None))
    return add if add is not None else child.inc


def gauge_add(child: Gauge) -> Update:
    """child.inc(amount) (a negative amount: child.dec) for a gauge not in the "mostrecent" mode."""
    add = _adder(getattr(child, "_value", None))
    return add if add is not None and not getattr(child, "_is_most_recent", True) else child.inc


def histogram_observe(child: Histogram) -> Update:
    """child.observe(amount) for amounts that are numbers (never NaN)."""
    total, buckets, bounds = (getattr(child, name, None) for name in ("_sum", "_buckets", "_upper_bounds"))
    if total is None or buckets is None or bounds is None or len(buckets) != len(bounds):
        return child.observe
    adders = [_adder(value) for value in (total, *buckets)]
    known = [add for add in adders if add is not None]
    if len(known) != len(adders):
        return child.observe
    add_to_sum, *to_buckets = known
    add_to_bucket = tuple(to_buckets)
    upper_bounds = tuple(bounds)  # ends with +Inf: every amount has its bucket

    def observe(amount: float) -> None:
        add_to_sum(amount)
        add_to_bucket[bisect_left(upper_bounds, amount)](1)

    return observe


def _adder(value: object) -> Update | None:
    """What adds to a child's value holder: without the lock for an in-process value, else its own `inc`."""
    if type(value) is MutexValue:
        holder: Any = value

        def add(amount: float) -> None:
            holder._value += amount

        return add
    inc = getattr(value, "inc", None)
    return inc if callable(inc) else None


class BoundUpdates(dict[tuple[Any, ...], Update], Generic[M]):
    """A family's children's updates by label tuple, bound on first use (the label sets are bounded)."""

    __slots__ = ("_children", "_bind")
    _children: Children[M]
    _bind: Callable[[M], Update]

    def __init__(self, children: Children[M], bind: Callable[[M], Update]) -> None:
        super().__init__()
        self._children = children
        self._bind = bind

    def __missing__(self, key: tuple[Any, ...]) -> Update:
        update: Update = self._bind(self._children[key])
        self[key] = update
        return update
