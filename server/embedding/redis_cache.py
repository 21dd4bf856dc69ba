"""An embedding cache in Redis, shared by every server that points at it.

Keys are ``prefix + CacheKey.text()``; values are the vector's float32 bytes (little-endian);
each entry lives ``ttl_s`` seconds (None: until Redis evicts it under its own memory policy).
A get is one ``MGET``, a put one pipelined batch of ``SET ... EX``.

A Redis that fails (down, slow past ``timeout_s``, refusing) never fails a request: the get is a
miss and the put is dropped, with one WARNING per outage (an INFO line when it answers again).
After a failure Redis is left alone for ``cooldown_s``, so an outage costs each request nothing
instead of a timeout. Thread-safe (redis-py's client keeps a connection pool).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from server.embedding import metrics
from server.embedding.cache import CacheKey, CacheStats, Vector

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "vs:emb:"
DEFAULT_TTL_S = 7 * 24 * 3600.0


class RedisCache:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl_s: float | None = DEFAULT_TTL_S,
        timeout_s: float = 0.25,
        cooldown_s: float = 5.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.ttl_ms = None if ttl_s is None else max(1, round(ttl_s * 1000))
        self.cooldown_s = cooldown_s
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._failing = False
        self._hits = 0
        self._misses = 0
        metrics.cache_lookups("redis", 0, 0)

    def _key(self, key: CacheKey) -> str:
        return self.prefix + key.text()

    def _usable(self) -> bool:
        with self._lock:
            return time.monotonic() >= self._down_until

    def _failed(self, what: str, exc: Exception) -> None:
        with self._lock:
            self._down_until = time.monotonic() + self.cooldown_s
            first = not self._failing
            self._failing = True
        if first:
            log.warning(
                "embedding cache: Redis at %s failed on %s (%s: %s); serving without it (misses) for now",
                self._safe_url(),
                what,
                type(exc).__name__,
                exc,
            )

    def _answered(self) -> None:
        if self._failing:
            with self._lock:
                was, self._failing = self._failing, False
            if was:
                log.info("embedding cache: Redis at %s answers again", self._safe_url())

    def _safe_url(self) -> str:
        """The URL without a password."""
        kwargs = self._client.connection_pool.connection_kwargs
        if "path" in kwargs:
            return f"unix://{kwargs['path']}"
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    def get_many(self, keys: Sequence[CacheKey]) -> list[Vector | None]:
        if not keys:
            return []
        out: list[Vector | None] = [None] * len(keys)
        if self._usable():
            try:
                values = self._client.mget([self._key(k) for k in keys])
            except (redis.RedisError, OSError) as e:
                self._failed("get", e)
            else:
                self._answered()
                for i, value in enumerate(values):
                    if isinstance(value, bytes) and value and len(value) % 4 == 0:
                        vector = np.frombuffer(value, dtype="<f4").astype(np.float32, copy=False)
                        out[i] = vector
        hits = sum(v is not None for v in out)
        with self._lock:
            self._hits += hits
            self._misses += len(out) - hits
        metrics.cache_lookups("redis", hits, len(out) - hits)
        return out

    def put_many(self, items: Sequence[tuple[CacheKey, Vector]]) -> None:
        if not items or not self._usable():
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, vector in items:
                pipe.set(self._key(key), np.asarray(vector, dtype="<f4").tobytes(), px=self.ttl_ms)
            pipe.execute()
        except (redis.RedisError, OSError) as e:
            self._failed("put", e)
        else:
            self._answered()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(hits=self._hits, misses=self._misses, entries=-1)

    def close(self) -> None:
        self._client.close()
