"""Router over 3 real shard processes, topology in the real Postgres: placement by the ring,
search results equal brute force over all items, a dead shard gives partial results naming
it, require_all turns that into an error, and a hung shard cannot hold a search past its
deadline."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.errors import InvalidArgument, NotFound, ShardsUnavailable
from core.spec import CollectionSpec, Metric, make_spec
from core.vectors import Batch, Queries, prepare_batch, prepare_queries
from router.fanout import Router
from router.topology import TopologyStore, make_engine
from testkit.datasets import data_and_queries
from testkit.shardproc import ShardProcess
from testkit.truth import exact_top_k, recall_at_k
from tests.pg import fresh_schema_url

DIM = 32
N = 3_000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[list[ShardProcess], Router]]:
    procs = [ShardProcess(tmp_path / f"shard-{i}") for i in range(3)]
    for proc in procs:
        proc.start()
    store = TopologyStore(make_engine(fresh_schema_url()))
    store.migrate()
    for i, proc in enumerate(procs):
        store.put_shard(f"shard-{i}", proc.address)
    router = Router.connect(store.load())
    yield procs, router
    router.close()
    for proc in procs:
        proc.kill()


def spec(name: str) -> CollectionSpec:
    return make_spec(name, DIM, Metric.L2.value)


def batch(ids: list[str], vectors: np.ndarray) -> Batch:
    return prepare_batch(ids, vectors, spec("c"))


def q(vectors: np.ndarray) -> Queries:
    return prepare_queries(vectors, spec("c"))


def load(router: Router) -> tuple[np.ndarray, np.ndarray, list[str]]:
    data, queries = data_and_queries(N, 100, DIM, seed=5)
    ids = [f"item-{i}" for i in range(N)]
    assert router.create_collection(spec("c"), timeout=10)[0]
    assert not router.create_collection(spec("c"), timeout=10)[0]
    for lo in range(0, N, 500):
        assert router.upsert("c", batch(ids[lo : lo + 500], data[lo : lo + 500]), timeout=10) == 500
    return data, queries, ids


def test_writes_land_on_the_ring_owner_and_search_matches_brute_force(
    cluster: tuple[list[ShardProcess], Router],
) -> None:
    procs, router = cluster
    data, queries, ids = load(router)
    owners = router.ring.owners(ids)
    for i, proc in enumerate(procs):
        assert proc.client is not None
        mine = [x for x, o in zip(ids, owners, strict=True) if o == f"shard-{i}"]
        assert proc.client.stats("c").count == len(mine)
        assert 0.25 * N < len(mine) < 0.42 * N
        assert set(proc.client.get("c", mine[:50])) == set(mine[:50])
    outcome = router.search("c", q(queries), 10, ef=0, timeout=5)
    assert not outcome.partial
    truth = exact_top_k(data, queries, 10, "l2")
    found = [[h.id for h in hits] for hits in outcome.results]
    assert recall_at_k(truth, found, ids) >= 0.97
    for hits in outcome.results:
        assert len({h.id for h in hits}) == 10
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    got = router.get("c", ["item-1", "item-2", "nope"], timeout=5)
    assert set(got) == {"item-1", "item-2"}
    np.testing.assert_array_equal(got["item-1"], data[1])
    assert router.delete("c", ["item-1", "nope"], timeout=5) == 1
    assert all(h.id != "item-1" for h in router.search("c", q(data[1:2]), 5, 0, timeout=5).results[0])


def test_dead_shard_gives_partial_results_naming_it(cluster: tuple[list[ShardProcess], Router]) -> None:
    procs, router = cluster
    data, queries, ids = load(router)
    procs[1].kill(signal.SIGKILL)
    outcome = router.search("c", q(queries[:5]), 10, 0, timeout=3)
    assert outcome.partial and list(outcome.failed) == ["shard-1"]
    survivors = {x for x, o in zip(ids, router.ring.owners(ids), strict=True) if o != "shard-1"}
    for hits in outcome.results:
        assert len(hits) == 10 and {h.id for h in hits} <= survivors
    with pytest.raises(ShardsUnavailable) as info:
        router.search("c", q(queries[:5]), 10, 0, timeout=3, require_all=True)
    assert list(info.value.failed) == ["shard-1"]
    dead_owned = [x for x, o in zip(ids, router.ring.owners(ids), strict=True) if o == "shard-1"]
    with pytest.raises(ShardsUnavailable):
        router.upsert("c", batch(dead_owned[:3], data[:3]), timeout=3)


def test_a_hung_shard_cannot_hold_a_search_past_its_deadline(cluster: tuple[list[ShardProcess], Router]) -> None:
    procs, router = cluster
    _, queries, _ = load(router)
    assert procs[2].proc is not None
    procs[2].proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        outcome = router.search("c", q(queries[:3]), 10, 0, timeout=0.5)
        took = time.monotonic() - started
        assert list(outcome.failed) == ["shard-2"] and "DEADLINE_EXCEEDED" in outcome.failed["shard-2"]
        assert took < 1.5, f"search took {took:.2f}s with a 0.5s deadline"
        assert all(len(h) == 10 for h in outcome.results)
    finally:
        procs[2].proc.send_signal(signal.SIGCONT)


def test_bad_requests_raise_client_errors(cluster: tuple[list[ShardProcess], Router]) -> None:
    _, router = cluster
    with pytest.raises(NotFound):
        router.search("missing", q(np.ones((1, DIM), dtype=np.float32)), 5, 0, timeout=3)
    router.create_collection(spec("c"), timeout=5)
    with pytest.raises(InvalidArgument):  # a wrong-dimension query cannot even be built
        router.search("c", q(np.ones((1, DIM + 1), dtype=np.float32)), 5, 0, timeout=3)
    with pytest.raises(InvalidArgument):  # the shards' own refusal reaches the caller as it is
        router.search("c", q(np.ones((1, DIM), dtype=np.float32)), 20_000, 0, timeout=3)
    with pytest.raises(InvalidArgument):  # a NaN batch cannot even be built: it never reaches a shard
        router.upsert("c", batch(["a"], np.full((1, DIM), np.nan, dtype=np.float32)), timeout=3)
