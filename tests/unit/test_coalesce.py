"""shard/coalesce.py: concurrent searches to one shard share a call only under load, each caller
gets its own rows' hits, deadlines and errors stay per caller."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from core.errors import DeadlineExceeded, InvalidArgument, Unavailable
from core.vectors import Queries
from shard.coalesce import Coalescer
from shard.types import QueryHits, SearchReply


def rows(*values: float) -> Queries:
    return Queries(np.array([[v, 0.0] for v in values], dtype=np.float32))


def echo(queries: Queries) -> SearchReply:
    """One hit per row whose id is the row's first value: shows which rows came back where."""
    return SearchReply([QueryHits([str(int(v))], np.zeros(1, dtype=np.float32)) for v in queries.vectors[:, 0]])


class GatedShard:
    """A fake shard call that blocks until released, recording each call's rows and timeout."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], float | None]] = []
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.fail: Exception | None = None

    def send(self, queries: Queries, timeout: float | None) -> SearchReply:
        self.calls.append(([int(v) for v in queries.vectors[:, 0]], timeout))
        self.started.release()
        self.release.wait(5)
        if self.fail is not None and len(queries) > 1:
            raise self.fail
        if self.fail is not None and isinstance(self.fail, Unavailable):
            raise self.fail
        if self.fail is not None and int(queries.vectors[0, 0]) == 13:
            raise self.fail
        return echo(queries)


def test_a_lone_search_goes_out_alone_at_once() -> None:
    coalescer = Coalescer(max_in_flight=1)
    calls: list[int] = []

    def send(queries: Queries, timeout: float | None) -> SearchReply:
        calls.append(len(queries))
        return echo(queries)

    for value in (1, 2, 3):
        assert coalescer.search("k", rows(value), 1.0, send).hits[0].ids == [str(value)]
    assert calls == [1, 1, 1]
    assert coalescer.batches == 0


def queue_behind_one(coalescer: Coalescer, shard: GatedShard, queued: list[tuple[str, Queries]]) -> list:
    """Starts one search that blocks in flight, then ``queued`` behind it; returns the futures
    (the first is the blocked one)."""
    pool = ThreadPoolExecutor(len(queued) + 1)
    futures = [pool.submit(coalescer.search, "k", rows(100), 5.0, shard.send)]
    assert shard.started.acquire(timeout=5)
    for key, queries in queued:
        futures.append(pool.submit(coalescer.search, key, queries, 5.0, shard.send))
    deadline = time.monotonic() + 5
    while len(coalescer._queue) < len(queued) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert len(coalescer._queue) == len(queued)
    return futures


def test_searches_queued_behind_a_call_share_the_next_one_and_get_their_own_rows() -> None:
    coalescer = Coalescer(max_in_flight=1)
    shard = GatedShard()
    futures = queue_behind_one(coalescer, shard, [("k", rows(1)), ("k", rows(2, 3)), ("k", rows(5))])
    shard.release.set()
    replies = [f.result(timeout=5) for f in futures]
    assert [[h.ids[0] for h in r.hits] for r in replies] == [["100"], ["1"], ["2", "3"], ["5"]]
    # the first in flight alone; then the queued ones batched in arrival order
    assert [c[0] for c in shard.calls] == [[100], [1, 2, 3, 5]]
    assert coalescer.batches == 1
    assert coalescer._in_flight == {}


def test_another_key_never_waits_for_a_keys_calls() -> None:
    coalescer = Coalescer(max_in_flight=1)
    shard = GatedShard()
    futures = queue_behind_one(coalescer, shard, [("k", rows(1))])
    pool = ThreadPoolExecutor(1)
    other = pool.submit(coalescer.search, "other", rows(4), 5.0, shard.send)
    assert shard.started.acquire(timeout=5)  # sent while "k" is still in flight and queued
    assert [c[0] for c in shard.calls] == [[100], [4]]
    shard.release.set()
    assert other.result(timeout=5).hits[0].ids == ["4"]
    assert [f.result(timeout=5).hits[0].ids for f in futures] == [["100"], ["1"]]
    assert coalescer._in_flight == {}


def test_max_rows_caps_a_batch() -> None:
    coalescer = Coalescer(max_in_flight=1, max_rows=2)
    shard = GatedShard()
    futures = queue_behind_one(coalescer, shard, [("k", rows(1)), ("k", rows(2)), ("k", rows(3))])
    shard.release.set()
    assert [f.result(timeout=5).hits[0].ids for f in futures] == [["100"], ["1"], ["2"], ["3"]]
    assert [c[0] for c in shard.calls] == [[100], [1, 2], [3]]


def test_a_batch_carries_the_latest_deadline_and_none_wins() -> None:
    coalescer = Coalescer(max_in_flight=1)
    shard = GatedShard()
    futures = queue_behind_one(coalescer, shard, [("k", rows(1)), ("k", rows(2))])
    shard.release.set()
    [f.result(timeout=5) for f in futures]
    assert 4.0 < shard.calls[1][1] <= 5.0  # type: ignore[operator]

    pool = ThreadPoolExecutor(2)
    shard = GatedShard()
    first = pool.submit(coalescer.search, "k", rows(100), 5.0, shard.send)
    assert shard.started.acquire(timeout=5)
    a = pool.submit(coalescer.search, "k", rows(1), None, shard.send)
    while len(coalescer._queue) < 1:
        time.sleep(0.001)
    shard.release.set()
    first.result(timeout=5)
    a.result(timeout=5)
    assert shard.calls[1][1] is None


def test_a_queued_search_past_its_deadline_is_withdrawn() -> None:
    coalescer = Coalescer(max_in_flight=1)
    shard = GatedShard()
    pool = ThreadPoolExecutor(2)
    first = pool.submit(coalescer.search, "k", rows(100), 5.0, shard.send)
    assert shard.started.acquire(timeout=5)
    with pytest.raises(DeadlineExceeded):
        coalescer.search("k", rows(1), 0.05, shard.send)
    assert coalescer._queue == []
    shard.release.set()
    first.result(timeout=5)
    assert [c[0] for c in shard.calls] == [[100]]
    assert coalescer._in_flight == {}


def test_a_shard_failure_is_every_members_error() -> None:
    coalescer = Coalescer(max_in_flight=1)
    shard = GatedShard()
    shard.fail = Unavailable("shard down")
    futures = queue_behind_one(coalescer, shard, [("k", rows(1)), ("k", rows(2))])
    shard.release.set()
    for future in futures:
        with pytest.raises(Unavailable):
            future.result(timeout=5)
    assert len(shard.calls) == 2  # no retries one by one
    assert coalescer._in_flight == {}


def test_an_invalid_argument_of_a_batch_is_retried_alone_per_member() -> None:
    coalescer = Coalescer(max_in_flight=1)
    shard = GatedShard()
    shard.fail = InvalidArgument("row 13 is bad")
    futures = queue_behind_one(coalescer, shard, [("k", rows(1)), ("k", rows(13)), ("k", rows(3))])
    shard.release.set()
    assert futures[0].result(timeout=5).hits[0].ids == ["100"]
    assert futures[1].result(timeout=5).hits[0].ids == ["1"]
    with pytest.raises(InvalidArgument):
        futures[2].result(timeout=5)
    assert futures[3].result(timeout=5).hits[0].ids == ["3"]
    assert [c[0] for c in shard.calls] == [[100], [1, 13, 3], [1], [13], [3]]


def test_many_threads_each_get_their_own_answer() -> None:
    coalescer = Coalescer(max_in_flight=2, max_rows=8)

    def send(queries: Queries, timeout: float | None) -> SearchReply:
        time.sleep(0.001)
        return echo(queries)

    def one(value: int) -> list[str]:
        return coalescer.search("k", rows(value), 5.0, send).hits[0].ids

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(2000))) == [[str(v)] for v in range(2000)]
    assert coalescer._in_flight == {}
    assert coalescer.batches > 0
