"""The rebalance coordinator driven one state at a time over in-process shards (real registries,
logs and snapshots on disk; SQLite and Postgres topology), with writes, deletes and searches
between every step: nothing lost, duplicated or stale at any state; aborts at every state
before the write switch return to the old ring; after it they roll forward; a truncated source
log restarts the copy; a second coordinator takes over an expired lease.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from core.errors import FailedPrecondition, WrongRoute
from core.spec import CollectionSpec, Metric
from core.vectors import Queries, prepare_batch, prepare_queries
from router.fanout import Router
from router.moves import State
from router.rebalance import RebalanceOptions, Rebalancer
from router.topology import ACTIVE, DRAINED, Topology, TopologyStore, make_engine
from shard.collection import CollectionOptions
from shard.local import LocalShard
from shard.registry import Registry
from tests.pg import fresh_schema_url

DIM = 8
SPEC = CollectionSpec("c", DIM, Metric.COSINE)


@dataclass
class Cluster:
    tmp: Path
    store: TopologyStore
    registries: dict[str, Registry] = field(default_factory=dict)
    local: dict[str, LocalShard] = field(default_factory=dict)
    model: dict[str, np.ndarray] = field(default_factory=dict)  # acknowledged live items
    deleted: set[str] = field(default_factory=set)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))
    next_id: int = 0

    def open_shard(self, shard_id: str) -> None:
        registry = Registry(self.tmp / shard_id, CollectionOptions(compact_age_s=3600, snapshots_kept=1))
        registry.open()
        self.registries[shard_id] = registry
        self.local[shard_id] = LocalShard(registry)

    def handles(self, topology: Topology) -> dict[str, LocalShard]:
        return {s.shard_id: self.local[s.shard_id] for s in topology.shards}

    def router(self, reroute: bool = True) -> Router:
        return Router.connect(self.store.load(), self.local, (lambda: self.router()) if reroute else None)

    def coordinator(self, owner: str = "test", lease_ttl_s: float = 30.0) -> Rebalancer:
        options = RebalanceOptions(lease_ttl_s=lease_ttl_s, catch_up_records=1000, call_timeout_s=30)
        return Rebalancer(self.store, self.handles, owner, options)

    # ------------------------------------------------------------------ workload
    def vectors(self, n: int) -> np.ndarray:
        return self.rng.standard_normal((n, DIM)).astype(np.float32)

    def write_some(self, new: int = 40, update: int = 20, delete: int = 10) -> None:
        router = self.router()
        ids = [f"id{self.next_id + i}" for i in range(new)]
        self.next_id += new
        live = sorted(self.model)
        if live:
            ids += [str(x) for x in self.rng.choice(live, size=min(update, len(live)), replace=False)]
        ids = list(dict.fromkeys(ids))
        vectors = self.vectors(len(ids))
        batch = prepare_batch(ids, vectors, SPEC)
        router.upsert("c", batch, 10.0)
        for item, row in zip(batch.ids, batch.vectors, strict=True):
            self.model[item] = row.copy()
            self.deleted.discard(item)
        live = sorted(self.model)
        doomed = [str(x) for x in self.rng.choice(live, size=min(delete, len(live)), replace=False)]
        if doomed:
            router.delete("c", doomed, 10.0)
        for item in doomed:
            del self.model[item]
            self.deleted.add(item)

    def work(self, coordinator: Rebalancer) -> None:
        """Writes and searches between two steps. Not at SWITCHED: between the commit of the new
        ring and the targets opening their arcs (the coordinator's very next step, moments in a
        live cluster), writes to moving ids are refused and retried, and here nothing would
        take that next step while the write retries."""
        status = coordinator.status()
        if status is None or status.state is not State.SWITCHED:
            self.write_some()
        self.check_searches()

    def check_searches(self, samples: int = 15) -> None:
        """Every sampled live item is found by its own vector, once; no deleted id comes back."""
        router = self.router()
        live = sorted(self.model)
        picks = [str(x) for x in self.rng.choice(live, size=min(samples, len(live)), replace=False)]
        queries = prepare_queries(np.stack([self.model[i] for i in picks]), SPEC)
        outcome = router.search("c", queries, 5, 64, 10.0, require_all=True)
        for item, hits in zip(picks, outcome.results, strict=True):
            ids = [h.id for h in hits]
            assert len(ids) == len(set(ids)), f"duplicate ids in {ids}"
            assert item in ids, f"{item} not found by its own vector: {ids}"
            assert not set(ids) & self.deleted, f"deleted ids returned: {set(ids) & self.deleted}"

    def check_final(self) -> None:
        """Every live id stored exactly once, on its owner, with its latest vector; every
        deleted id nowhere."""
        topology = self.store.load()
        ring = topology.ring()
        where: dict[str, list[str]] = {}
        for shard_id, shard in self.local.items():
            if shard_id not in {s.shard_id for s in topology.shards}:
                continue
            if "c" not in {s.name for s in shard.list_collections()}:
                continue
            for batch in shard.scan("c", (), 1024):
                for item, vector in zip(batch.ids, batch.vectors, strict=True):
                    where.setdefault(item, []).append(shard_id)
                    if item in self.model:
                        np.testing.assert_allclose(vector, self.model[item], atol=1e-5)
        assert set(where) == set(self.model), (
            f"missing {sorted(set(self.model) - set(where))[:5]}, extra {sorted(set(where) - set(self.model))[:5]}"
        )
        owners = dict(zip(self.model, ring.owners(list(self.model)), strict=True))
        wrong = {i: (w, owners[i]) for i, w in where.items() if w != [owners[i]]}
        assert not wrong, f"ids not exactly once on their owner: {list(wrong.items())[:5]}"
        fetched = self.router().fetch("c", sorted(self.model), 10.0)
        assert set(fetched) == set(self.model)


@pytest.fixture(params=["sqlite", "postgres"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    url = f"sqlite:///{tmp_path / 'meta.db'}" if request.param == "sqlite" else fresh_schema_url()
    store = TopologyStore(make_engine(url))
    store.migrate()
    result = Cluster(tmp_path, store)
    for i in range(4):
        result.open_shard(f"s{i}")
    for i in range(3):
        store.put_shard(f"s{i}", f"local:{tmp_path / f's{i}'}")
    router = result.router()
    router.create_collection(SPEC, 10.0)
    for _ in range(5):
        result.write_some(new=120, update=0, delete=0)
    yield result
    for registry in result.registries.values():
        registry.close()


def run_until(coordinator: Rebalancer, cluster: Cluster, state: State | None, work: bool = True) -> State:
    """Steps the coordinator until the rebalance is in ``state`` (None: finished), writing,
    deleting and searching between steps."""
    for _ in range(50):
        status = coordinator.status()
        assert status is not None
        if status.state is state or (state is None and status.state.finished):
            return status.state
        coordinator.run_once()
        if work:
            cluster.work(coordinator)
    raise AssertionError(f"rebalance stuck in {coordinator.status()}")


def test_add_a_shard_with_writes_between_every_step(cluster: Cluster) -> None:
    coordinator = cluster.coordinator()
    started = coordinator.add_shard("s3", f"local:{cluster.tmp / 's3'}", 1.0)
    assert started is not None and started.state is State.PLANNED
    seen = []
    for _ in range(50):
        status = coordinator.status()
        assert status is not None
        seen.append(status.state)
        if status.state.finished:
            break
        coordinator.run_once()
        cluster.work(coordinator)
    assert seen[-1] is State.DONE
    assert [s for s in dict.fromkeys(seen)] == [
        State.PLANNED,
        State.COPYING,
        State.CATCHING_UP,
        State.FENCING,
        State.SWITCHED,
        State.CLEANUP,
        State.DONE,
    ]
    topology = cluster.store.load()
    assert topology.rebalance is None and {s.state for s in topology.shards} == {ACTIVE}
    assert sorted(topology.ring().shards) == ["s0", "s1", "s2", "s3"]
    cluster.check_final()
    counts = {s: cluster.local[s].stats("c").count for s in ("s0", "s1", "s2", "s3")}
    assert min(counts.values()) > 0.15 * sum(counts.values()), counts
    for shard in cluster.local.values():
        control = shard.control()
        assert not control.fences and not control.pins, control
    final = coordinator.status()
    assert final is not None and sum(m.items_copied for m in final.moves) >= counts["s3"]


def test_drain_then_remove(cluster: Cluster) -> None:
    coordinator = cluster.coordinator()
    with pytest.raises(FailedPrecondition):
        coordinator.remove_shard("s1")  # on the ring: may hold data
    coordinator.drain_shard("s1")
    assert run_until(coordinator, cluster, None) is State.DONE
    topology = cluster.store.load()
    assert {s.shard_id: s.state for s in topology.shards}["s1"] == DRAINED
    assert sorted(topology.ring().shards) == ["s0", "s2"]
    assert cluster.local["s1"].stats("c").count == 0
    cluster.check_final()
    coordinator.remove_shard("s1")
    assert "s1" not in {s.shard_id for s in cluster.store.load().shards}


@pytest.mark.parametrize("state", [State.PLANNED, State.COPYING, State.CATCHING_UP, State.FENCING])
def test_abort_before_the_switch_returns_to_the_old_ring(cluster: Cluster, state: State) -> None:
    coordinator = cluster.coordinator()
    coordinator.add_shard("s3", f"local:{cluster.tmp / 's3'}", 1.0)
    run_until(coordinator, cluster, state)
    coordinator.abort()
    cluster.write_some()
    assert run_until(coordinator, cluster, None) is State.ABORTED
    topology = cluster.store.load()
    assert sorted(s.shard_id for s in topology.shards) == ["s0", "s1", "s2"]
    assert topology.rebalance is None
    cluster.write_some()
    cluster.check_searches()
    cluster.check_final()
    for shard_id in ("s0", "s1", "s2"):
        control = cluster.local[shard_id].control()
        assert not control.fences and not control.pins, (shard_id, control)
    assert not cluster.local["s3"].list_collections()  # the forgotten joiner keeps nothing


def test_abort_after_the_switch_rolls_forward(cluster: Cluster) -> None:
    coordinator = cluster.coordinator()
    coordinator.add_shard("s3", f"local:{cluster.tmp / 's3'}", 1.0)
    run_until(coordinator, cluster, State.SWITCHED)
    coordinator.abort()
    assert run_until(coordinator, cluster, None) is State.DONE
    cluster.check_final()


def test_a_stale_router_is_refused_and_a_rerouting_one_retries(cluster: Cluster) -> None:
    coordinator = cluster.coordinator()
    coordinator.add_shard("s3", f"local:{cluster.tmp / 's3'}", 1.0)
    run_until(coordinator, cluster, State.FENCING, work=False)
    stale = cluster.router(reroute=False)
    run_until(coordinator, cluster, State.CLEANUP, work=False)
    moved = [i for i in cluster.model if cluster.store.load().ring().owner(i) == "s3"][:3]
    batch = prepare_batch(moved, cluster.vectors(len(moved)), SPEC)
    with pytest.raises(WrongRoute):
        stale.upsert("c", batch, 5.0)
    with pytest.raises(WrongRoute):
        stale.search("c", Queries(batch.vectors[:1]), 3, 32, 5.0)
    cluster.router().upsert("c", batch, 5.0)
    for item, row in zip(batch.ids, batch.vectors, strict=True):
        cluster.model[item] = row.copy()
    run_until(coordinator, cluster, None)
    cluster.check_final()


def test_a_truncated_source_log_restarts_the_copy(cluster: Cluster) -> None:
    coordinator = cluster.coordinator()
    coordinator.add_shard("s3", f"local:{cluster.tmp / 's3'}", 1.0)
    run_until(coordinator, cluster, State.CATCHING_UP)
    for shard_id in ("s0", "s1", "s2"):  # lose the pins, then let compaction truncate the logs
        shard = cluster.local[shard_id]
        for key in list(shard.control().pins):
            shard.unpin_wal(key)
    for _ in range(3):
        cluster.write_some()
        for shard_id in ("s0", "s1", "s2"):
            cluster.local[shard_id].compact("c", True)
    assert run_until(coordinator, cluster, None) is State.DONE
    cluster.check_final()


def test_another_coordinator_takes_over_an_expired_lease(cluster: Cluster) -> None:
    first = cluster.coordinator("first", lease_ttl_s=0.3)
    second = cluster.coordinator("second", lease_ttl_s=0.3)
    first.add_shard("s3", f"local:{cluster.tmp / 's3'}", 1.0)
    run_until(first, cluster, State.CATCHING_UP)
    assert not second.run_once()  # the lease is first's
    # first stalls in the middle of a step, holding handles of the ring version of that moment
    stalled = cluster.local["s3"].with_epoch(cluster.store.load().ring_version)
    time.sleep(0.4)  # its lease expires
    second.run_once()  # second takes over and fences the shards of the move against older versions
    late = prepare_batch(["late"], cluster.vectors(1), SPEC)
    with pytest.raises(WrongRoute):  # first wakes up: its late copy cannot land
        stalled.upsert("c", late, replicate=True)
    assert run_until(second, cluster, None) is State.DONE
    cluster.check_final()
