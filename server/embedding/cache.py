"""Embedding caches: a finished embedding keyed by (model identity, kind, sha256 of the input).

The key holds the identity of the model that made the vector (architecture + weights checksum),
so a new model never reads an old model's vectors, and the kind (``"text"`` or ``"image"``),
because both towers of one CLIP share one identity. Values are float32 vectors.

``make_cache(url)`` picks the store: an in-process LRU by default (``None`` or ``""``), Redis for
a ``redis://``, ``rediss://`` or ``unix://`` URL (see ``redis_cache``), none at all for ``"off"``.
Every cache is thread-safe, and a cache never fails a request: a store that cannot answer is a
miss.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt

from core.errors import InvalidArgument
from server.embedding import metrics

Vector = npt.NDArray[np.float32]

# A key's share of the LRU's byte bound besides its vector (dict slot, key strings, array header).
ENTRY_OVERHEAD_BYTES = 256


@dataclass(frozen=True)
class CacheKey:
    """``identity``: the model identity; ``kind``: ``"text"`` or ``"image"``; ``digest``: the hex
    sha256 of the input bytes (UTF-8 for a text, the encoded file for an image)."""

    identity: str
    kind: str
    digest: str

    @classmethod
    def of(cls, identity: str, kind: str, data: bytes) -> CacheKey:
        return cls(identity, kind, hashlib.sha256(data).hexdigest())

    def text(self) -> str:
        """The key as one string (Redis keys): ``kind:identity:digest``."""
        return f"{self.kind}:{self.identity}:{self.digest}"


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int


class EmbeddingCache(Protocol):
    """What the embedder needs of a cache. Thread-safe; never raises for a store failure."""

    def get_many(self, keys: Sequence[CacheKey]) -> list[Vector | None]:
        """The cached vector of each key (read-only arrays), None for a miss."""
        ...

    def put_many(self, items: Sequence[tuple[CacheKey, Vector]]) -> None:
        """Stores each vector under its key (best effort: a failed store is dropped)."""
        ...

    def stats(self) -> CacheStats: ...


class NullCache:
    """Caches nothing (``make_cache("off")``; benchmarks of the model itself)."""

    def __init__(self) -> None:
        self._misses = 0
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[CacheKey]) -> list[Vector | None]:
        with self._lock:
            self._misses += len(keys)
        return [None] * len(keys)

    def put_many(self, items: Sequence[tuple[CacheKey, Vector]]) -> None:
        return None

    def stats(self) -> CacheStats:
        return CacheStats(hits=0, misses=self._misses, entries=0)


class LruCache:
    """In-process LRU bounded by ``max_entries`` and by ``max_bytes`` (vector bytes plus
    ``ENTRY_OVERHEAD_BYTES`` per entry); the least recently read or written entry goes first.
    Stored vectors are read-only copies, so no caller can change another's result."""

    def __init__(self, max_entries: int = 100_000, max_bytes: int = 128 * 2**20) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[CacheKey, Vector] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._lock = threading.Lock()
        metrics.cache_lookups("memory", 0, 0)

    @staticmethod
    def _size(vector: Vector) -> int:
        return int(vector.nbytes) + ENTRY_OVERHEAD_BYTES

    def get_many(self, keys: Sequence[CacheKey]) -> list[Vector | None]:
        out: list[Vector | None] = []
        hits = 0
        with self._lock:
            for key in keys:
                vector = self._entries.get(key)
                if vector is not None:
                    hits += 1
                    self._entries.move_to_end(key)
                out.append(vector)
            self._hits += hits
            self._misses += len(keys) - hits
        metrics.cache_lookups("memory", hits, len(keys) - hits)
        return out

    def put_many(self, items: Sequence[tuple[CacheKey, Vector]]) -> None:
        for key, vector in items:
            stored = np.array(vector, dtype=np.float32, copy=True).reshape(-1)
            stored.flags.writeable = False
            size = self._size(stored)
            if size > self.max_bytes:
                continue
            with self._lock:
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= self._size(old)
                self._entries[key] = stored
                self._bytes += size
                while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                    _, evicted = self._entries.popitem(last=False)
                    self._bytes -= self._size(evicted)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(hits=self._hits, misses=self._misses, entries=len(self._entries))

    @property
    def bytes_used(self) -> int:
        with self._lock:
            return self._bytes


def _options(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without the query parameters that are ours (``prefix``, ``ttl_s``), and those."""
    parts = urlsplit(url)
    ours = {"prefix", "ttl_s"}
    query = parse_qsl(parts.query, keep_blank_values=True)
    options = {k: v for k, v in query if k in ours}
    rest = urlencode([(k, v) for k, v in query if k not in ours])
    return urlunsplit(parts._replace(query=rest)), options


def make_cache(url: str | None, *, lru_entries: int = 100_000, lru_bytes: int = 128 * 2**20) -> EmbeddingCache:
    """The cache a URL names: ``None`` or ``""``: an in-process ``LruCache``; ``"off"``: no cache;
    ``redis://HOST:PORT/DB``, ``rediss://...`` or ``unix://PATH``: a ``RedisCache``, with optional
    query parameters ``prefix`` (key prefix, default ``vs:emb:``) and ``ttl_s`` (seconds an entry
    lives; 0: forever; default 7 days). Connecting is lazy: a Redis that is down is a miss."""
    if not url:
        return LruCache(lru_entries, lru_bytes)
    if url == "off":
        return NullCache()
    scheme = urlsplit(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise InvalidArgument(f"embedding cache URL must be redis://, rediss://, unix:// or 'off', not {url[:40]!r}")
    from server.embedding.redis_cache import DEFAULT_PREFIX, DEFAULT_TTL_S, RedisCache

    redis_url, options = _options(url)
    try:
        ttl_s = float(options.get("ttl_s", DEFAULT_TTL_S))
    except ValueError:
        raise InvalidArgument(
            f"embedding cache URL: ttl_s must be a number of seconds, not {options['ttl_s']!r}"
        ) from None
    return RedisCache(redis_url, prefix=options.get("prefix", DEFAULT_PREFIX), ttl_s=ttl_s or None)
