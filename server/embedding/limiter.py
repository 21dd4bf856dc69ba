"""Back-pressure: a bound on the Triton requests in flight from this process, across callers.

A slot is taken before a request is sent and given back when its answer (or error) arrives.
There is no queue behind it: a caller that finds no free slot within its short admission wait is
told RESOURCE_EXHAUSTED with a retry hint (about the time one request takes, measured), rather
than waiting in line without bound. Thread-safe.
"""

from __future__ import annotations

import threading

MIN_RETRY_AFTER_S = 0.05
MAX_RETRY_AFTER_S = 5.0


class InFlightLimiter:
    """At most ``capacity`` slots taken at once. ``acquire`` waits at most ``timeout`` seconds;
    ``release`` takes the request's latency to keep a moving average for the retry hint."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._slots = threading.BoundedSemaphore(capacity)
        self._lock = threading.Lock()
        self._taken = 0
        self._latency_s = 0.1

    def acquire(self, timeout: float) -> bool:
        """Takes a slot; False if none was free within ``timeout`` seconds (0: do not wait)."""
        ok = self._slots.acquire(timeout=timeout) if timeout > 0 else self._slots.acquire(blocking=False)
        if ok:
            with self._lock:
                self._taken += 1
        return ok

    def release(self, latency_s: float | None = None) -> None:
        with self._lock:
            self._taken -= 1
            if latency_s is not None and latency_s >= 0:
                self._latency_s = 0.8 * self._latency_s + 0.2 * latency_s
        self._slots.release()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._taken

    def retry_after_s(self) -> float:
        """How long a refused caller should wait: about one request's latency, 50 ms to 5 s."""
        with self._lock:
            return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, self._latency_s))
