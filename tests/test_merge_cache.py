"""MergeCache: an answer comes back only for the very replies it was made from, and the cache stays bounded."""

from __future__ import annotations

from gateway.merge.cache import MergeCache, Merged

REPLIES = [("alpha", b'{"a": 1}'), ("beta", b'{"b": 2}')]
ANSWER = Merged(("alpha", "beta"), b'{"a":1,"b":2}')


def test_the_same_replies_give_the_kept_answer() -> None:
    cache = MergeCache(1024)
    cache.put("/history", REPLIES, ANSWER)

    assert cache.get("/history", [("alpha", b'{"a": 1}'), ("beta", b'{"b": 2}')]) is ANSWER


def test_any_difference_in_the_replies_or_the_key_misses() -> None:
    cache = MergeCache(1024)
    cache.put("/history", REPLIES, ANSWER)

    assert cache.get("/history", [("alpha", b'{"a": 1}'), ("beta", b'{"b": 3}')]) is None  # a changed body
    assert cache.get("/history", [("alpha", b'{"a": 1}')]) is None  # a backend missing (down)
    assert cache.get("/history", [("beta", b'{"b": 2}'), ("alpha", b'{"a": 1}')]) is None  # another order
    assert cache.get("/history", [("alpha", b'{"a": 1}'), ("gamma", b'{"b": 2}')]) is None  # another backend
    assert cache.get("/queue", REPLIES) is None


def test_a_newer_answer_replaces_the_kept_one() -> None:
    cache = MergeCache(1024)
    cache.put("/history", REPLIES, ANSWER)
    changed = [("alpha", b'{"a": 1}'), ("beta", b'{"b": 3}')]
    newer = Merged(("alpha", "beta"), b'{"a":1,"b":3}')
    cache.put("/history", changed, newer)

    assert cache.get("/history", changed) is newer
    assert cache.get("/history", REPLIES) is None
    assert cache.size_bytes == 8 + 8 + len(newer.body)


def test_it_stays_under_its_bound_dropping_the_least_recently_used() -> None:
    size = 8 + 8 + len(ANSWER.body)  # replies and answer of one entry
    cache = MergeCache(2 * size)
    cache.put("one", REPLIES, ANSWER)
    cache.put("two", REPLIES, ANSWER)
    assert cache.get("one", REPLIES) is ANSWER  # "two" is now the least recently used

    cache.put("three", REPLIES, ANSWER)

    assert cache.size_bytes == 2 * size
    assert cache.get("two", REPLIES) is None
    assert cache.get("one", REPLIES) is ANSWER and cache.get("three", REPLIES) is ANSWER


def test_an_answer_larger_than_the_cache_is_never_kept() -> None:
    cache = MergeCache(10)
    cache.put("/history", REPLIES, ANSWER)

    assert cache.get("/history", REPLIES) is None and cache.size_bytes == 0
