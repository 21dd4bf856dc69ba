"""core/ratelimit.py with a fake clock: token buckets, keyed buckets with bounded memory, the
concurrency cap; and server/ratelimit.py's item counting."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from core.ratelimit import ConcurrencyLimit, KeyedLimiter, TokenBucket, burst_of
from server.ratelimit import items_of
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import types_pb2


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_full_refills_at_its_rate_and_says_when_the_next_token_is_due() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(1, 0.0) == pytest.approx(0.5)  # one token every 0.5 s
    assert bucket.take(1, 0.25) == pytest.approx(0.25)  # nothing was taken by the refusals
    assert bucket.take(1, 0.5) == 0.0
    assert bucket.take(1, 100.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # capped at the burst


def test_a_take_larger_than_the_burst_passes_on_a_full_bucket_and_is_paid_for_afterwards() -> None:
    bucket = TokenBucket(rate=10.0, burst=10.0, now=0.0)
    assert bucket.take(25, 0.0) == 0.0  # never refused for ever
    assert bucket.tokens == pytest.approx(-15.0)
    assert bucket.take(1, 0.0) == pytest.approx(1.6)  # 16 tokens to earn back at 10 a second
    assert bucket.take(25, 1.0) == pytest.approx(1.5)  # needs a full bucket again (-5 -> 10)
    assert bucket.take(25, 2.5) == 0.0


def test_bucket_rejects_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0.0, 1.0, 0.0)
    with pytest.raises(ValueError):
        TokenBucket(1.0, 0.0, 0.0)
    assert burst_of(0.5, 1.0) == 1.0 and burst_of(100.0, 2.0) == 200.0


def test_keyed_limiter_keeps_one_bucket_per_key() -> None:
    clock = FakeClock()
    limiter = KeyedLimiter(clock=clock)
    assert limiter.take("a", 1, rate=1.0, burst=1.0) == 0.0
    assert limiter.take("a", 1, rate=1.0, burst=1.0) == pytest.approx(1.0)
    assert limiter.take("b", 1, rate=1.0, burst=1.0) == 0.0  # another caller is unaffected
    clock.now += 1.0
    assert limiter.take("a", 1, rate=1.0, burst=1.0) == 0.0
    assert limiter.take("a", 0, rate=1.0, burst=1.0) == 0.0  # a call carrying no items takes nothing
    assert limiter.take("c", 10**9, rate=0.0, burst=1.0) == 0.0  # rate 0: unlimited, no bucket kept
    assert len(limiter) == 2


def test_keyed_limiter_forgets_the_least_recently_used_keys_beyond_its_bound() -> None:
    clock = FakeClock()
    limiter = KeyedLimiter(max_keys=100, clock=clock)
    assert limiter.take("hot", 1, 1.0, 1.0) == 0.0
    for i in range(10_000):
        limiter.take(f"k{i}", 1, 1.0, 1.0)
        if i % 50 == 0:
            limiter.take("hot", 1, 1.0, 1.0)  # stays recent, so stays remembered (and empty)
    assert len(limiter) == 100
    assert limiter.take("hot", 1, 1.0, 1.0) > 0
    assert limiter.take("k0", 1, 1.0, 1.0) == 0.0  # forgotten: back with a full bucket
    with pytest.raises(ValueError):
        KeyedLimiter(max_keys=0)


def test_a_keys_new_limits_apply_at_once_keeping_its_balance() -> None:
    clock = FakeClock()
    limiter = KeyedLimiter(clock=clock)
    for _ in range(10):
        assert limiter.take("a", 1, rate=10.0, burst=10.0) == 0.0
    assert limiter.take("a", 1, rate=1.0, burst=1.0) == pytest.approx(1.0)  # empty, and now slower
    clock.now += 1.0
    assert limiter.take("a", 1, rate=1.0, burst=1.0) == 0.0


def test_keyed_limiter_is_thread_safe() -> None:
    clock = FakeClock()
    limiter = KeyedLimiter(clock=clock)
    passed: list[int] = []

    def worker() -> None:
        passed.append(sum(limiter.take("a", 1, rate=1.0, burst=1000.0) == 0.0 for _ in range(500)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(passed) == 1000  # exactly the burst, however the threads interleave


def test_concurrency_limit() -> None:
    limit = ConcurrencyLimit(2)
    assert limit.try_acquire() and limit.try_acquire() and not limit.try_acquire()
    limit.release()
    assert limit.try_acquire() and limit.in_use == 2
    unlimited = ConcurrencyLimit(0)
    assert all(unlimited.try_acquire() for _ in range(1000))


def test_items_of_counts_what_each_request_carries() -> None:
    upsert = pb.UpsertRequest(collection="c")
    for i in range(7):
        upsert.items.add(id=str(i))
    assert items_of(upsert) == 7
    assert items_of(pb.DeleteRequest(ids=["a", "b"])) == 2
    assert items_of(pb.GetRequest(ids=["a"])) == 1
    queries = np.zeros((5, 4), dtype="<f4")
    packed = types_pb2.Vectors(dimension=4, packed=queries.tobytes())
    assert items_of(pb.SearchRequest(queries=packed)) == 5
    assert items_of(pb.SearchRequest(queries=types_pb2.Vectors(dimension=4, values=[0.0] * 8))) == 2
    assert items_of(pb.SearchRequest(queries=types_pb2.Vectors(dimension=4, rows=3))) == 3
    assert items_of(pb.SearchRequest()) == 1  # an empty query is one (refused as INVALID_ARGUMENT later)
    assert items_of(pb.SearchByIdRequest(id="x")) == 1
    assert items_of(pb.SearchByTextRequest(texts=["a", "b", "c"])) == 3
    assert items_of(pb.SearchByImageRequest(images=[b"x"])) == 1
    ingest = pb.IngestTextsRequest()
    ingest.items.add(text="a")
    assert items_of(ingest) == 1
    assert items_of(pb.ListCollectionsRequest()) == 0
    assert items_of(admin_pb.CompactRequest(collection="c")) == 0
    assert items_of(object()) == 0  # a request that did not parse (core.status.MalformedRequest)
