"""The in-flight bound behind the embedder's back-pressure."""

from __future__ import annotations

import threading
import time

from server.embedding.limiter import MAX_RETRY_AFTER_S, MIN_RETRY_AFTER_S, InFlightLimiter


def test_at_most_capacity_slots_and_a_short_wait_when_full() -> None:
    limiter = InFlightLimiter(2)
    assert limiter.acquire(0) and limiter.acquire(0)
    assert limiter.in_flight == 2
    assert not limiter.acquire(0)
    started = time.monotonic()
    assert not limiter.acquire(0.05)
    waited = time.monotonic() - started
    assert 0.04 < waited < 2.0, waited  # waited about its timeout, not without bound
    threading.Timer(0.05, limiter.release, args=(0.2,)).start()
    assert limiter.acquire(2.0)  # a slot given back wakes a waiter
    assert limiter.in_flight == 2


def test_the_retry_hint_follows_request_latency_within_bounds() -> None:
    limiter = InFlightLimiter(1)
    for latency in (30.0,) * 50:
        assert limiter.acquire(0)
        limiter.release(latency)
    assert limiter.retry_after_s() == MAX_RETRY_AFTER_S
    for latency in (0.0,) * 50:
        assert limiter.acquire(0)
        limiter.release(latency)
    assert limiter.retry_after_s() == MIN_RETRY_AFTER_S
    assert limiter.acquire(0)
    limiter.release(None)  # a failed request says nothing about latency
    assert limiter.retry_after_s() == MIN_RETRY_AFTER_S
