"""Embedding caches without Triton: the LRU's bounds and order, what the key holds, and which
store a URL names."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InvalidArgument
from server.embedding import CacheKey, LruCache, NullCache, make_cache
from server.embedding.cache import ENTRY_OVERHEAD_BYTES
from server.embedding.redis_cache import RedisCache

ID_A = "clip-vit/p32-test@sha256:" + "a" * 64
ID_B = "clip-vit/p32-test@sha256:" + "b" * 64


def vec(seed: int, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def key(i: int, identity: str = ID_A, kind: str = "text") -> CacheKey:
    return CacheKey.of(identity, kind, f"input {i}".encode())


def test_lru_evicts_the_least_recently_used_entry_past_max_entries() -> None:
    cache = LruCache(max_entries=3)
    cache.put_many([(key(i), vec(i)) for i in range(3)])
    assert cache.get_many([key(0)])[0] is not None  # 0 is now the most recent
    cache.put_many([(key(3), vec(3))])
    got = cache.get_many([key(i) for i in range(4)])
    assert [g is not None for g in got] == [True, False, True, True]
    assert got[3] is not None
    np.testing.assert_array_equal(got[3], vec(3))
    assert cache.stats().entries == 3


def test_lru_is_bounded_by_bytes() -> None:
    per_entry = 8 * 4 + ENTRY_OVERHEAD_BYTES
    cache = LruCache(max_entries=1000, max_bytes=5 * per_entry)
    cache.put_many([(key(i), vec(i)) for i in range(20)])
    assert cache.stats().entries == 5 and cache.bytes_used == 5 * per_entry
    assert [g is not None for g in cache.get_many([key(i) for i in range(20)])] == [False] * 15 + [True] * 5
    cache.put_many([(key(99), vec(0, dim=10_000))])  # larger than the whole cache: not stored
    assert cache.get_many([key(99)]) == [None] and cache.stats().entries == 5


def test_key_holds_identity_kind_and_input_hash() -> None:
    cache = LruCache()
    cache.put_many([(key(1), vec(1))])
    assert cache.get_many([key(1, identity=ID_B)]) == [None]  # another model never reads it
    assert cache.get_many([key(1, kind="image")]) == [None]  # both towers share one identity
    assert cache.get_many([key(2)]) == [None]
    assert cache.get_many([key(1)])[0] is not None
    k = key(1)
    assert k.digest == __import__("hashlib").sha256(b"input 1").hexdigest()
    assert k.text() == f"text:{ID_A}:{k.digest}"


def test_cached_vectors_are_read_only_copies() -> None:
    cache = LruCache()
    original = vec(7)
    cache.put_many([(key(7), original)])
    original[:] = 0  # the caller's array changing later does not change the cache
    got = cache.get_many([key(7)])[0]
    assert got is not None and not np.all(got == 0)
    with pytest.raises(ValueError):
        got[0] = 1.0


def test_stats_count_hits_and_misses() -> None:
    cache = LruCache()
    cache.put_many([(key(1), vec(1))])
    cache.get_many([key(1), key(2), key(1)])
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (2, 1, 1)


def test_make_cache_picks_the_store_from_the_url() -> None:
    assert isinstance(make_cache(None), LruCache) and isinstance(make_cache(""), LruCache)
    assert isinstance(make_cache("off"), NullCache)
    redis_cache = make_cache("redis://127.0.0.1:1/3?prefix=t:&ttl_s=60")  # connects lazily
    assert isinstance(redis_cache, RedisCache)
    assert redis_cache.prefix == "t:" and redis_cache.ttl_ms == 60_000
    assert redis_cache._client.connection_pool.connection_kwargs["db"] == 3
    forever = make_cache("redis://127.0.0.1:1/0?ttl_s=0")
    assert isinstance(forever, RedisCache) and forever.ttl_ms is None
    with pytest.raises(InvalidArgument, match="redis://"):
        make_cache("memcached://127.0.0.1:11211")
    with pytest.raises(InvalidArgument, match="ttl_s"):
        make_cache("redis://127.0.0.1:1/0?ttl_s=soon")


def test_null_cache_never_hits() -> None:
    cache = NullCache()
    cache.put_many([(key(1), vec(1))])
    assert cache.get_many([key(1)]) == [None]
