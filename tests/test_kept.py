"""core/kept.py: a mapping bounded in entries, the oldest out first, whatever keys come."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.core.kept import Kept


@given(st.lists(st.integers(0, 20), max_size=80), st.integers(0, 6))
def test_it_keeps_the_last_distinct_keys_up_to_its_size(keys: list[int], size: int) -> None:
    kept: Kept[int, str] = Kept(size)
    for key in keys:
        assert kept.keep(key, f"v{key}") == f"v{key}"
        assert len(kept) <= size
    expected: list[int] = []  # the same rule, written out: a new key pushes out the oldest once full
    for key in keys:
        if size and key not in expected:
            if len(expected) >= size:
                expected.pop(0)
            expected.append(key)
    assert list(kept) == expected
    assert all(kept[key] == f"v{key}" for key in expected)
