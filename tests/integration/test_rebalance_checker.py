"""A checker in the spirit of Jepsen for online rebalancing, on real processes: 4 shard processes,
two public servers sharing the cluster map in the real Postgres, concurrent writers (upserts of
new and existing ids, deletes; every operation and its acknowledgement recorded) and searchers,
while a 4th shard joins 3, while a shard drains, while a move is aborted, and while the
coordinating server or the source shard is SIGKILLed mid-move.

At the end: every acknowledged live id is stored exactly once, on the shard its ring names, with
its latest acknowledged vector and metadata; every acknowledged delete is gone everywhere; no
search returned a duplicate or an id deleted before the search began (and not written since);
a search by the vector of an id acknowledged before the search began (and not written during
it) finds it.

Size: CI runs a few thousand items per scenario; ``VS_REBALANCE_SOAK=N`` multiplies the items and
the writers' run time by N (e.g. ``VS_REBALANCE_SOAK=20 pytest tests/integration/test_rebalance_checker.py``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from cli.common import Connection
from cli.status import status as cli_status
from router.topology import TopologyStore, make_engine
from shard.remote import RemoteShard
from testkit.serverproc import SingleNodeProcess
from testkit.shardproc import ShardProcess
from tests.pg import fresh_schema_url
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import admin_service_pb2_grpc as admin_grpc
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

SOAK = max(1, int(os.environ.get("VS_REBALANCE_SOAK", "1")))
DIM = 16
PRELOAD = 3000 * SOAK
WRITERS = 3
FINISHED: set[admin_pb.RebalanceState] = {admin_pb.REBALANCE_STATE_DONE, admin_pb.REBALANCE_STATE_ABORTED}


def packed(matrix: np.ndarray) -> types_pb2.Vectors:
    return types_pb2.Vectors(dimension=matrix.shape[1], packed=np.ascontiguousarray(matrix, dtype="<f4").tobytes())


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@dataclass
class Op:
    kind: str  # "upsert" | "delete"
    item: str
    start: float
    end: float = 0.0
    ok: bool | None = None  # None: unknown outcome (error or timeout)
    vector: np.ndarray | None = None
    version: int = 0


@dataclass
class History:
    """Operations per id, in the order their (single) writer issued them."""

    ops: dict[str, list[Op]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    violations: list[str] = field(default_factory=list)
    searches: int = 0
    found_checks: int = 0

    def record(self, op: Op) -> None:
        with self.lock:
            self.ops.setdefault(op.item, []).append(op)

    def state_before(self, item: str, t: float) -> tuple[str, Op | None]:
        """("live"|"deleted"|"unknown", last op) as of time ``t``: decided by the last op that
        ended before ``t``, unknown when one started before ``t`` is unfinished or ambiguous."""
        with self.lock:
            ops = list(self.ops.get(item, ()))
        last: Op | None = None
        for op in ops:
            if op.start >= t:
                break
            if op.end == 0.0 or op.end >= t or op.ok is None:
                return "unknown", op
            if op.ok:
                last = op
        if last is None:
            return "unknown", None
        return ("live" if last.kind == "upsert" else "deleted"), last

    def touched_between(self, item: str, t0: float, t1: float) -> bool:
        with self.lock:
            return any(op.start < t1 and (op.end == 0.0 or op.end > t0) for op in self.ops.get(item, ()))

    def final(self) -> tuple[dict[str, Op], set[str], set[str]]:
        """(live id -> its last upsert, deleted ids, ids whose final state is unknown)."""
        live: dict[str, Op] = {}
        deleted: set[str] = set()
        unknown: set[str] = set()
        for item, ops in self.ops.items():
            acked = [i for i, op in enumerate(ops) if op.ok]
            if not acked or any(op.ok is None for op in ops[acked[-1] + 1 :]):
                unknown.add(item)
            elif ops[acked[-1]].kind == "upsert":
                live[item] = ops[acked[-1]]
            else:
                deleted.add(item)
        return live, deleted, unknown


class Workload:
    """Writers (each owning the ids i % WRITERS == w) and searchers against one server."""

    def __init__(self, addresses: list[str], history: History, seed: int) -> None:
        self.channels = [grpc.insecure_channel(a) for a in addresses]
        self.stubs = [pb_grpc.SearchServiceStub(c) for c in self.channels]
        self.current = 0
        self.history = history
        self.seed = seed
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.next_new = [PRELOAD + w for w in range(WRITERS)]
        self.errors: list[str] = []

    def call(self, method: str, request: object, timeout: float = 20.0) -> object:
        """Calls the current server; when it is gone (UNAVAILABLE), the next one (the writes are
        idempotent, so retrying one whose first try may have landed is safe)."""
        for attempt in range(2 * len(self.stubs)):
            stub = self.stubs[self.current]
            try:
                return getattr(stub, method)(request, timeout=timeout)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 2 * len(self.stubs) - 1:
                    raise
                self.current = (self.current + 1) % len(self.stubs)
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def upsert(self, items: list[str], vectors: np.ndarray, versions: list[int], timeout: float = 20.0) -> None:
        request = pb.UpsertRequest(collection="c", vectors=packed(vectors))
        for item, version in zip(items, versions, strict=True):
            entry = request.items.add(id=item)
            entry.metadata.attributes["v"].int_value = version
        self.call("Upsert", request, timeout)

    def writer(self, w: int) -> None:
        rng = np.random.default_rng(self.seed * 100 + w)
        version = 0
        mine = [f"i{i}" for i in range(PRELOAD) if i % WRITERS == w]
        while not self.stop.is_set():
            version += 1
            roll = rng.random()
            if roll < 0.4:
                item = f"i{self.next_new[w]}"
                self.next_new[w] += WRITERS
                mine.append(item)
                kind = "upsert"
            else:
                item = mine[int(rng.integers(len(mine)))]
                kind = "upsert" if roll < 0.8 else "delete"
            op = Op(kind, item, time.monotonic(), version=version)
            if kind == "upsert":
                op.vector = unit(rng.standard_normal((1, DIM)))[0]
            self.history.record(op)
            try:
                if kind == "upsert":
                    assert op.vector is not None
                    self.upsert([item], op.vector[None, :], [version])
                else:
                    self.call("Delete", pb.DeleteRequest(collection="c", ids=[item]))
                op.ok = True
            except grpc.RpcError as exc:
                op.ok = None  # outcome unknown: the id is left out of the strict checks
                self.errors.append(f"{kind} {item}: {exc.code().name} {exc.details()}")
            op.end = time.monotonic()

    def searcher(self, s: int) -> None:
        rng = np.random.default_rng(self.seed * 1000 + s)
        while not self.stop.is_set():
            with self.history.lock:
                items = list(self.history.ops)
            item = items[int(rng.integers(len(items)))]
            t0 = time.monotonic()
            state, last = self.history.state_before(item, t0)
            if state != "live" or last is None or last.vector is None:
                continue
            try:
                request = pb.SearchRequest(collection="c", queries=packed(last.vector[None, :]), k=10, ef=64)
                reply: pb.SearchResponse = self.call("Search", request)  # type: ignore[assignment]
            except grpc.RpcError as exc:
                self.errors.append(f"search: {exc.code().name} {exc.details()}")
                continue
            t1 = time.monotonic()
            ids = [h.id for h in reply.results[0].hits]
            self.history.searches += 1
            if len(ids) != len(set(ids)):
                self.history.violations.append(f"duplicate ids in a search: {ids}")
            for other in ids:
                before, _ = self.history.state_before(other, t0)
                if before == "deleted" and not self.history.touched_between(other, t0, t1):
                    self.history.violations.append(f"{other} was deleted before a search that returned it")
            if not self.history.touched_between(item, t0, t1) and not reply.partial:
                self.history.found_checks += 1
                if item not in ids:
                    self.history.violations.append(f"{item} (acknowledged) not found by its own vector: {ids}")

    def start(self, searchers: int = 2) -> None:
        for w in range(WRITERS):
            self.threads.append(threading.Thread(target=self.writer, args=(w,), daemon=True))
        for s in range(searchers):
            self.threads.append(threading.Thread(target=self.searcher, args=(s,), daemon=True))
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        for channel in self.channels:
            channel.close()


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.url = fresh_schema_url()
        self.shards = {f"s{i}": ShardProcess(tmp / f"s{i}") for i in range(4)}
        self.servers: list[SingleNodeProcess] = []
        self.history = History()

    def start(self) -> None:
        for shard in self.shards.values():
            shard.start()
        registered = [f"--register-shard=s{i}={self.shards[f's{i}'].address}" for i in range(3)]
        for n in range(2):
            server = SingleNodeProcess(
                self.tmp / f"server{n}",
                "--database-url",
                self.url,
                "--topology-refresh-s",
                "0.5",
                "--rebalance-target-dead-s",
                "4",
                "--rebalance-lease-s",
                "2",
                *registered,
                local_shard=False,
            )
            server.start()
            self.servers.append(server)

    def stub(self, n: int = 0) -> pb_grpc.SearchServiceStub:
        """Server ``n``'s SearchService (a killed server is dropped from ``servers``)."""
        return pb_grpc.SearchServiceStub(grpc.insecure_channel(self.servers[n].address))

    def admin(self, n: int = 0) -> admin_grpc.AdminServiceStub:
        return admin_grpc.AdminServiceStub(grpc.insecure_channel(self.servers[n].address))

    def preload(self) -> None:
        stub = self.stub()
        spec = types_pb2.CollectionSpec(name="c", dimension=DIM, metric=types_pb2.METRIC_COSINE)
        stub.CreateCollection(pb.CreateCollectionRequest(spec=spec))
        rng = np.random.default_rng(1)
        workload = Workload([self.servers[0].address], self.history, 0)
        for lo in range(0, PRELOAD, 500):
            items = [f"i{i}" for i in range(lo, min(PRELOAD, lo + 500))]
            vectors = unit(rng.standard_normal((len(items), DIM)))
            now = time.monotonic()
            workload.upsert(items, vectors, [0] * len(items))
            end = time.monotonic()
            for item, vector in zip(items, vectors, strict=True):
                self.history.record(Op("upsert", item, now, end, True, vector, 0))
        workload.finish()

    def status(self, n: int = 0) -> admin_pb.RebalanceStatus:
        return self.admin(n).GetRebalanceStatus(admin_pb.GetRebalanceStatusRequest(), timeout=10).rebalance

    def wait_state(
        self, states: set[admin_pb.RebalanceState], timeout: float = 120.0, n: int = 0
    ) -> admin_pb.RebalanceStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = self.status(n)
                if status.state in states:
                    return status
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"rebalance not in {states} after {timeout} s: {self.status(n)}")

    def run_with_workload(self, action: Callable[[], None], seconds: float = 3.0) -> Workload:
        workload = Workload([s.address for s in self.servers], self.history, seed=len(self.history.ops))
        workload.start()
        time.sleep(seconds * SOAK / 2)
        action()
        time.sleep(1.0)
        workload.finish()
        return workload

    def check(self, workload: Workload) -> None:
        history = self.history
        assert not history.violations, history.violations[:10]
        assert history.searches > 20 and history.found_checks > 10, (history.searches, history.found_checks)
        live, deleted, unknown = history.final()
        assert len(unknown) < 0.05 * (len(live) + len(deleted) + 1), (len(unknown), workload.errors[:5])
        store = TopologyStore(make_engine(self.url))
        topology = store.load()
        assert topology.rebalance is None
        ring = topology.ring()
        where: dict[str, list[str]] = {}
        vectors: dict[str, np.ndarray] = {}
        for info in topology.shards:
            handle = RemoteShard(info.address)
            try:
                if "c" not in {s.name for s in handle.list_collections(10)}:
                    continue
                for batch in handle.scan("c", (), 1024, 60):
                    for item, vector in zip(batch.ids, batch.vectors, strict=True):
                        where.setdefault(item, []).append(info.shard_id)
                        vectors[item] = vector
            finally:
                handle.close()
        lost = [i for i in live if i not in where]
        assert not lost, f"{len(lost)} acknowledged live ids lost: {lost[:5]}"
        revived = [i for i in deleted if i in where]
        assert not revived, f"{len(revived)} acknowledged deletes came back: {revived[:5]}"
        owners = dict(zip(live, ring.owners(list(live)), strict=True))
        misplaced = {i: where[i] for i in live if where[i] != [owners[i]]}
        assert not misplaced, f"{len(misplaced)} ids not exactly once on their owner: {list(misplaced.items())[:5]}"
        stale = [
            i for i, op in live.items() if op.vector is not None and not np.allclose(vectors[i], op.vector, atol=1e-5)
        ]
        assert not stale, f"{len(stale)} ids hold an older vector: {stale[:5]}"
        extra = set(where) - set(live) - unknown
        assert not extra, f"ids stored that no acknowledged write left live: {sorted(extra)[:5]}"
        # metadata: the latest acknowledged version of a sample, through the public Get
        sample = sorted(live)[:: max(1, len(live) // 300)]
        got = self.stub().Get(pb.GetRequest(collection="c", ids=sample), timeout=30)
        versions = {item.id: item.metadata.attributes["v"].int_value for item in got.items}
        wrong = [i for i in sample if versions.get(i) != live[i].version]
        assert not wrong, f"{len(wrong)} ids with older metadata: {wrong[:5]}"

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        for shard in self.shards.values():
            shard.kill(signal.SIGTERM)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    result = Cluster(tmp_path)
    try:
        result.start()
        result.preload()
        yield result
    finally:
        result.stop()


def test_a_fourth_shard_joins_three_under_load(cluster: Cluster) -> None:
    def add() -> None:
        reply = cluster.admin().AddShard(
            admin_pb.AddShardRequest(shard_id="s3", address=cluster.shards["s3"].address, weight=1.0), timeout=30
        )
        assert reply.rebalance.state == admin_pb.REBALANCE_STATE_PLANNED
        shown = cli_status(Connection(cluster.servers[0].address))  # what `vsearch status` shows mid-move
        assert {r.shard_id: r.state for r in shown.shards}["s3"] == "joining"
        assert "(add s3)" in shown.rebalance, shown.rebalance
        status = cluster.wait_state(FINISHED)
        assert status.state == admin_pb.REBALANCE_STATE_DONE, status

    workload = cluster.run_with_workload(add)
    cluster.check(workload)
    ring = TopologyStore(make_engine(cluster.url)).load().ring()
    assert sorted(ring.shards) == ["s0", "s1", "s2", "s3"]


def test_a_shard_drains_under_load(cluster: Cluster) -> None:
    def drain() -> None:
        cluster.admin().DrainShard(admin_pb.DrainShardRequest(shard_id="s1"), timeout=30)
        status = cluster.wait_state(FINISHED)
        assert status.state == admin_pb.REBALANCE_STATE_DONE, status
        cluster.admin().RemoveShard(admin_pb.RemoveShardRequest(shard_id="s1"), timeout=30)

    workload = cluster.run_with_workload(drain)
    cluster.check(workload)
    assert sorted(TopologyStore(make_engine(cluster.url)).load().ring().shards) == ["s0", "s2"]


def test_an_aborted_move_returns_to_the_old_ring_under_load(cluster: Cluster) -> None:
    def add_then_abort() -> None:
        cluster.admin().AddShard(
            admin_pb.AddShardRequest(shard_id="s3", address=cluster.shards["s3"].address, weight=1.0), timeout=30
        )
        cluster.wait_state({admin_pb.REBALANCE_STATE_COPYING, admin_pb.REBALANCE_STATE_CATCHING_UP})
        cluster.admin().AbortRebalance(admin_pb.AbortRebalanceRequest(), timeout=30)
        status = cluster.wait_state(FINISHED)
        assert status.state == admin_pb.REBALANCE_STATE_ABORTED, status

    workload = cluster.run_with_workload(add_then_abort)
    cluster.check(workload)
    assert sorted(TopologyStore(make_engine(cluster.url)).load().ring().shards) == ["s0", "s1", "s2"]


def test_the_coordinating_server_is_killed_mid_move(cluster: Cluster) -> None:
    def add_and_kill_coordinator() -> None:
        cluster.admin(0).AddShard(
            admin_pb.AddShardRequest(shard_id="s3", address=cluster.shards["s3"].address, weight=1.0), timeout=30
        )
        cluster.wait_state({admin_pb.REBALANCE_STATE_COPYING, admin_pb.REBALANCE_STATE_CATCHING_UP}, n=1)
        row = TopologyStore(make_engine(cluster.url)).rebalance(0)
        assert row is not None and row.lease_owner
        pid = int(row.lease_owner.split(":")[1])
        victim = next(s for s in cluster.servers if s.proc is not None and s.proc.pid == pid)
        assert victim is cluster.servers[0] or victim is cluster.servers[1]
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        cluster.servers.remove(victim)
        status = cluster.wait_state(FINISHED)
        assert status.state == admin_pb.REBALANCE_STATE_DONE, status

    workload = cluster.run_with_workload(add_and_kill_coordinator)
    cluster.check(workload)


def test_the_source_shard_is_killed_mid_copy(cluster: Cluster) -> None:
    def add_and_kill_source() -> None:
        cluster.admin().AddShard(
            admin_pb.AddShardRequest(shard_id="s3", address=cluster.shards["s3"].address, weight=1.0), timeout=30
        )
        cluster.wait_state({admin_pb.REBALANCE_STATE_COPYING, admin_pb.REBALANCE_STATE_CATCHING_UP})
        source = cluster.shards["s1"]
        source.kill(signal.SIGKILL)
        time.sleep(1.0)  # the move pauses; the old ring still owns everything
        assert cluster.status().state not in FINISHED
        source.start()  # same data, a new port: registered as a restarted shard re-registers
        TopologyStore(make_engine(cluster.url)).put_shard("s1", source.address)
        status = cluster.wait_state(FINISHED)
        assert status.state == admin_pb.REBALANCE_STATE_DONE, status

    workload = cluster.run_with_workload(add_and_kill_source)
    cluster.check(workload)


def test_the_target_shard_dies_mid_copy_and_the_move_aborts(cluster: Cluster) -> None:
    def add_and_kill_target() -> None:
        target = cluster.shards["s3"]
        cluster.admin().AddShard(
            admin_pb.AddShardRequest(shard_id="s3", address=target.address, weight=1.0), timeout=30
        )
        cluster.wait_state({admin_pb.REBALANCE_STATE_COPYING, admin_pb.REBALANCE_STATE_CATCHING_UP})
        target.kill(signal.SIGKILL)
        status = cluster.wait_state(FINISHED)  # unreachable for --rebalance-target-dead-s: aborted
        assert status.state == admin_pb.REBALANCE_STATE_ABORTED, status
        assert "s3" not in {s.shard_id for s in TopologyStore(make_engine(cluster.url)).load().shards}
        target.start()  # its partial copy is cleared when it joins again
        cluster.admin().AddShard(
            admin_pb.AddShardRequest(shard_id="s3", address=target.address, weight=1.0), timeout=30
        )
        status = cluster.wait_state(FINISHED)
        assert status.state == admin_pb.REBALANCE_STATE_DONE, status

    workload = cluster.run_with_workload(add_and_kill_target)
    cluster.check(workload)
    assert sorted(TopologyStore(make_engine(cluster.url)).load().ring().shards) == ["s0", "s1", "s2", "s3"]


def test_a_shard_registered_into_a_cluster_with_data_joins_through_a_rebalance(tmp_path: Path) -> None:
    """``--register-shard`` of a new shard into a cluster that holds collections registers it as
    joining (it owns no ids it does not hold); Rebalance's dry run shows the moves, and the
    rebalance moves them."""
    url = fresh_schema_url()
    shards = [ShardProcess(tmp_path / f"s{i}") for i in range(2)]
    servers: list[SingleNodeProcess] = []
    try:
        for shard in shards:
            shard.start()
        first = SingleNodeProcess(
            tmp_path / "a", "--database-url", url, f"--register-shard=s0={shards[0].address}", local_shard=False
        )
        servers.append(first)
        first.start()
        stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(first.address))
        spec = types_pb2.CollectionSpec(name="c", dimension=DIM, metric=types_pb2.METRIC_COSINE)
        stub.CreateCollection(pb.CreateCollectionRequest(spec=spec), timeout=30)
        vectors = unit(np.random.default_rng(3).standard_normal((400, DIM)))
        request = pb.UpsertRequest(collection="c", vectors=packed(vectors))
        for i in range(400):
            request.items.add(id=f"i{i}")
        stub.Upsert(request, timeout=30)
        first.stop()
        second = SingleNodeProcess(
            tmp_path / "b",
            "--database-url",
            url,
            f"--register-shard=s0={shards[0].address}",
            f"--register-shard=s1={shards[1].address}",
            local_shard=False,
        )
        servers.append(second)
        second.start()
        admin = admin_grpc.AdminServiceStub(grpc.insecure_channel(second.address))
        cluster = admin.ClusterStatus(admin_pb.ClusterStatusRequest(), timeout=30)
        assert {s.shard_id: s.state for s in cluster.shards} == {"s0": "active", "s1": "joining"}
        plan = admin.Rebalance(admin_pb.RebalanceRequest(dry_run=True), timeout=30)
        assert [(m.source, m.target) for m in plan.moves] == [("s0", "s1")]
        assert 100 < plan.moves[0].total_items < 300 and not plan.HasField("rebalance")
        started = admin.Rebalance(admin_pb.RebalanceRequest(), timeout=30)
        assert started.rebalance.kind == admin_pb.REBALANCE_KIND_REBALANCE
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = admin.GetRebalanceStatus(admin_pb.GetRebalanceStatusRequest(), timeout=10).rebalance
            if status.state in FINISHED:
                break
            time.sleep(0.1)
        assert status.state == admin_pb.REBALANCE_STATE_DONE, status
        stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(second.address))
        got = stub.Get(pb.GetRequest(collection="c", ids=[f"i{i}" for i in range(400)]), timeout=30)
        assert len(got.items) == 400 and not got.missing_ids
        counts = {
            s.shard_id: sum(s.collection_counts.values())
            for s in admin.ClusterStatus(admin_pb.ClusterStatusRequest(), timeout=30).shards
        }
        assert counts["s0"] + counts["s1"] == 400 and min(counts.values()) > 100, counts
    finally:
        for server in servers:
            server.stop()
        for shard in shards:
            shard.kill(signal.SIGTERM)
