"""Rate limits (issue #18): token buckets per caller, and a cap on calls in flight.

A :class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate`` a second. A request that
needs ``n`` tokens passes when the bucket holds ``min(n, burst)`` of them and then takes all
``n`` (the balance may go below zero: one message larger than the burst still passes once the
bucket is full, and the caller pays for it afterwards, so the long-run rate holds). When it
does not pass, nothing is taken and the answer is how long until enough tokens are due: the
retry hint sent to the client.

A :class:`KeyedLimiter` keeps one bucket per key (an API key's id, ``open`` without keys) and
forgets the least recently used keys beyond ``max_keys``: memory stays bounded however many
keys call. A forgotten key comes back with a full bucket, so eviction can only be lenient, and
only for keys idle long enough to be the oldest of ``max_keys``. Both are thread-safe (one lock,
held for a few arithmetic operations); the clock is injectable for tests.

A :class:`ConcurrencyLimit` bounds the calls a process serves at once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

Clock = Callable[[], float]

DEFAULT_MAX_KEYS = 100_000


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held (a full bucket to start). Not locked:
    :class:`KeyedLimiter` serialises access."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"a token bucket needs rate > 0 and burst > 0, got {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, n: float, now: float) -> float:
        """0.0 when ``n`` tokens were taken; else the seconds until they are due (nothing taken)."""
        self._refill(now)
        need = min(n, self.burst)
        if self.tokens >= need:
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate

    def reconfigure(self, rate: float, burst: float) -> None:
        """New limits for the same caller (its key's limits changed): the balance is kept, capped."""
        self.rate = rate
        self.burst = burst
        self.tokens = min(self.tokens, burst)


def burst_of(rate: float, burst_s: float) -> float:
    """The bucket capacity for ``rate``: ``burst_s`` seconds of it, and at least one token."""
    return max(1.0, rate * burst_s)


class KeyedLimiter:
    """One token bucket per key, at most ``max_keys`` of them (least recently used forgotten)."""

    def __init__(self, max_keys: int = DEFAULT_MAX_KEYS, clock: Clock = time.monotonic) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, n: float, rate: float, burst: float) -> float:
        """Takes ``n`` tokens from ``key``'s bucket (``rate`` a second, ``burst`` at most): 0.0
        when they were taken, else the seconds until they are due. ``rate`` <= 0: unlimited."""
        if rate <= 0 or n <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(rate, burst, now)
                if len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                if bucket.rate != rate or bucket.burst != burst:
                    bucket._refill(now)
                    bucket.reconfigure(rate, burst)
            return bucket.take(n, now)

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)


class ConcurrencyLimit:
    """At most ``limit`` holders at once (0: unlimited). Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        if self.limit <= 0:
            return True
        with self._lock:
            if self._used >= self.limit:
                return False
            self._used += 1
            return True

    def release(self) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            self._used -= 1

    @property
    def in_use(self) -> int:
        return self._used
