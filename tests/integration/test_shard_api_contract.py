"""One contract, two implementations: every test runs against ``LocalShard`` (a registry in
this process, direct calls) and ``RemoteShard`` (a real ``python -m shard`` process over a
loopback socket), and both must answer alike — the same results and the same domain errors."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from core.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from core.filters import AllOf, Condition, Eq, In, Range
from core.items import ItemMeta
from core.keyhash import stable_hash64
from core.spec import CollectionSpec, Metric, make_spec
from core.vectors import Batch, Queries, prepare_batch, prepare_queries
from router.ring import HashRing, ShardNode
from shard import records
from shard.api import ShardApi
from shard.collection import CollectionOptions
from shard.local import LocalShard
from shard.registry import Registry
from shard.remote import RemoteShard
from shard.types import KeyRange
from testkit.datasets import clustered
from testkit.shardproc import ShardProcess
from vsproto import payload

DIM = 8


@pytest.fixture(params=["local", "remote"])
def shard(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ShardApi]:
    if request.param == "local":
        registry = Registry(tmp_path / "local", CollectionOptions(compact_age_s=3600))
        registry.open()
        yield LocalShard(registry)
        registry.close()
    else:
        proc = ShardProcess(tmp_path / "remote", "--compact-age-s", "3600")
        proc.start()
        remote = RemoteShard(proc.address)
        yield remote
        remote.close()
        proc.kill()


def spec(name: str = "c", metric: Metric = Metric.L2) -> CollectionSpec:
    return make_spec(name, DIM, metric.value)


def batch(ids: list[str], vectors: np.ndarray, metric: Metric = Metric.L2) -> Batch:
    return prepare_batch(ids, vectors, spec(metric=metric))


def q(vectors: np.ndarray) -> Queries:
    return prepare_queries(vectors, spec())


def test_collections_create_list_drop(shard: ShardApi) -> None:
    created, stored = shard.create_collection(spec())
    assert created and stored == spec() and stored.m == 16  # defaults filled in
    assert shard.create_collection(spec()) == (False, spec())
    with pytest.raises(AlreadyExists):
        shard.create_collection(make_spec("c", DIM + 1, Metric.L2.value))
    shard.create_collection(spec("b", Metric.COSINE))
    assert [s.name for s in shard.list_collections()] == ["b", "c"]
    assert shard.drop_collection("c") is True
    assert shard.drop_collection("c") is False
    assert [s.name for s in shard.list_collections()] == ["b"]


def test_writes_reads_and_search(shard: ShardApi) -> None:
    shard.create_collection(spec())
    data = clustered(300, DIM, seed=3)
    ids = [f"i{n}" for n in range(300)]
    first = shard.upsert("c", batch(ids, data))
    assert (first.seq, first.count) == (1, 300)
    fetched = shard.get("c", ["i5", "nope", "i0"])
    assert fetched.ids == ["i5", "i0"] and fetched.missing == ["nope"]
    np.testing.assert_array_equal(fetched.vectors, data[[5, 0]])
    hits = shard.search("c", q(data[:4]), 3).hits
    assert [h.ids[0] for h in hits] == ["i0", "i1", "i2", "i3"]
    assert all(h.distances[0] == 0 and list(h.distances) == sorted(h.distances) for h in hits)
    allowed = shard.search("c", q(data[:1]), 5, allow_ids=["i7", "i9", "zz"]).hits[0]
    assert sorted(allowed.ids) == ["i7", "i9"]
    deleted = shard.delete("c", ["i0", "i1", "missing"])
    assert (deleted.seq, deleted.count) == (2, 2)
    assert shard.delete("c", ["missing"]).seq == 0
    assert shard.get("c", ["i0"]).missing == ["i0"]
    assert "i0" not in shard.search("c", q(data[:1]), 5).hits[0].ids
    result = shard.compact("c", wait=True)
    assert result is not None and result.snapshot_seq == 2
    stats = shard.stats("c")
    assert (stats.count, stats.graph_elements, stats.delta_size, stats.last_applied_seq) == (298, 298, 0, 2)
    assert shard.compact("c", wait=False) is None


def test_cosine_batches_are_stored_normalised(shard: ShardApi) -> None:
    shard.create_collection(spec("n", Metric.COSINE))
    vectors = np.arange(1, 17, dtype=np.float32).reshape(2, DIM)
    shard.upsert("n", batch(["a", "b"], vectors, Metric.COSINE))
    got = shard.get("n", ["a", "b"]).vectors
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def test_read_wal_streams_domain_entries(shard: ShardApi) -> None:
    shard.create_collection(spec())
    data = clustered(20, DIM, seed=4)
    shard.upsert("c", batch([f"w{n}" for n in range(20)], data))
    shard.delete("c", ["w3"])
    entries = list(shard.read_wal("c", 1))
    assert [e.seq for e in entries] == [1, 2]
    upsert, delete = entries[0].op, entries[1].op
    assert isinstance(upsert, records.UpsertOp) and upsert.ids == [f"w{n}" for n in range(20)]
    np.testing.assert_array_equal(upsert.vectors, data)
    assert isinstance(delete, records.DeleteOp) and delete.ids == ["w3"]
    assert [e.seq for e in shard.read_wal("c", 2)] == [2]


def meta(uri: str) -> bytes:
    return payload.encode(ItemMeta(uri=uri, attributes={"n": 1}))


def test_payloads_are_stored_read_and_streamed_with_their_vectors(shard: ShardApi) -> None:
    shard.create_collection(spec())
    data = clustered(40, DIM, seed=8)
    ids = [f"m{n}" for n in range(40)]
    payloads = [b"" if n % 5 == 0 else meta(f"meta-{n}") for n in range(40)]
    shard.upsert("c", prepare_batch(ids, data, spec(), payloads=payloads))
    fetched = shard.get("c", ["m3", "missing", "m5"])
    assert fetched.ids == ["m3", "m5"] and fetched.payloads == [meta("meta-3"), b""]
    shard.compact("c", wait=True)
    shard.upsert("c", prepare_batch(["m3"], data[:1], spec(), payloads=[meta("meta-3-again")]))
    shard.upsert("c", batch(["m4"], data[:1]))  # rewritten without a payload
    assert shard.get("c", ["m3", "m4", "m6"]).payloads == [meta("meta-3-again"), b"", meta("meta-6")]
    scanned = {i: p for b in shard.scan("c") for i, p in zip(b.ids, b.payloads, strict=True)}
    assert scanned["m3"] == meta("meta-3-again") and scanned["m4"] == b"" and scanned["m7"] == meta("meta-7")
    assert len(scanned) == 40
    assert shard.stats("c").legacy_items == 8 + 1  # m0, m5, ..., m35 and m4
    entries = list(shard.read_wal("c", 1))
    first = entries[0].op
    assert isinstance(first, records.UpsertOp) and first.payloads == payloads
    last = entries[-1].op
    assert isinstance(last, records.UpsertOp) and last.payloads is None
    with pytest.raises(InvalidArgument, match="payloads"):
        shard.upsert("c", Batch(["x", "y"], np.ascontiguousarray(data[:2]), [meta("only one")]))


def test_versions_are_the_seq_of_the_write_and_read_with_the_item(shard: ShardApi) -> None:
    shard.create_collection(spec())
    data = clustered(30, DIM, seed=9)
    ids = [f"r{n}" for n in range(30)]
    first = shard.upsert("c", batch(ids, data))
    assert first.seq > 0
    assert shard.get("c", ["r1", "nope", "r2"]).versions == [first.seq, first.seq]
    shard.compact("c", wait=True)
    second = shard.upsert("c", batch(["r2"], data[:1]))
    assert second.seq > first.seq
    assert shard.get("c", ["r1", "r2"]).versions == [first.seq, second.seq]
    scanned = {i: v for b in shard.scan("c", batch_size=7) for i, v in zip(b.ids, b.versions, strict=True)}
    assert scanned == {**dict.fromkeys(ids, first.seq), "r2": second.seq}
    shard.compact("c", wait=True)  # folded into the graph: the same versions
    assert shard.get("c", ["r1", "r2"]).versions == [first.seq, second.seq]
    assert shard.get("c", ["nope"]).versions == []


def test_read_wal_before_what_is_kept_is_out_of_range(shard: ShardApi) -> None:
    shard.create_collection(spec())
    for n in range(4):  # two snapshots are kept; the log before the older one is truncated
        shard.upsert("c", batch([f"t{n}"], clustered(1, DIM, seed=n)))
        shard.compact("c", wait=True)
    with pytest.raises(OutOfRange, match="first_available_seq"):
        list(shard.read_wal("c", 1))


def test_scan_streams_a_point_in_time_view_by_key_range(shard: ShardApi) -> None:
    shard.create_collection(spec())
    data = clustered(500, DIM, seed=5)
    ids = [f"s{n}" for n in range(500)]
    shard.upsert("c", batch(ids[:300], data[:300]))
    shard.compact("c", wait=True)  # graph items and delta items both scanned
    shard.upsert("c", batch(ids[300:], data[300:]))
    shard.delete("c", ["s1", "s400"])
    live = {i: data[n] for n, i in enumerate(ids) if i not in ("s1", "s400")}
    scanned = list(shard.scan("c", batch_size=64))
    assert all(len(b.ids) <= 64 for b in scanned)
    assert {b.applied_seq for b in scanned} == {3}
    got = {i: v for b in scanned for i, v in zip(b.ids, b.vectors, strict=True)}
    assert got.keys() == live.keys()
    for item, vector in got.items():
        np.testing.assert_array_equal(vector, live[item])
    # The arcs one shard owns on a ring select exactly the ids the ring gives it.
    ring = HashRing([ShardNode("a"), ShardNode("b")], vnodes_per_weight=8)
    points = sorted((stable_hash64(f"{s}#{i}"), s) for s in "ab" for i in range(8))
    # the virtual node at p owns the arc (previous point, p]
    owned_by_a = [KeyRange(points[i - 1][0], p) for i, (p, owner) in enumerate(points) if owner == "a"]
    in_a = {i for b in shard.scan("c", owned_by_a) for i in b.ids}
    assert in_a == {i for i in live if ring.owner(i) == "a"}


def test_unknown_collection_is_not_found_everywhere(shard: ShardApi) -> None:
    one = batch(["x"], np.ones((1, DIM), dtype=np.float32))
    for call in (
        lambda: shard.upsert("nope", one),
        lambda: shard.delete("nope", ["x"]),
        lambda: shard.get("nope", ["x"]),
        lambda: shard.search("nope", q(np.ones((1, DIM), dtype=np.float32)), 1),
        lambda: shard.stats("nope"),
        lambda: shard.compact("nope", wait=True),
        lambda: list(shard.read_wal("nope", 1)),
        lambda: list(shard.scan("nope")),
    ):
        with pytest.raises(NotFound):
            call()


def test_bad_requests_are_invalid_argument_and_change_nothing(shard: ShardApi) -> None:
    shard.create_collection(spec())
    shard.upsert("c", batch(["a"], np.ones((1, DIM), dtype=np.float32)))
    query = q(np.ones((1, DIM), dtype=np.float32))
    for call in (
        lambda: shard.search("c", query, 0),
        lambda: shard.search("c", query, 10_001),
        lambda: shard.search("c", query, 1, ef=10_001),
        lambda: shard.search("c", query, 1, allow_ids=["x" * 257]),
        lambda: shard.get("c", []),
        lambda: shard.get("c", [f"g{n}" for n in range(10_001)]),
        lambda: shard.delete("c", [""]),
        lambda: list(shard.scan("c", batch_size=70_000)),
    ):
        with pytest.raises(InvalidArgument):
            call()
    assert shard.stats("c").last_applied_seq == 1


@pytest.mark.parametrize(
    "rows",
    [np.ones((1, DIM + 1), np.float32), np.full((1, DIM), np.nan, np.float32), np.zeros((0, DIM), np.float32)],
)
def test_queries_are_validated_before_any_shard_sees_them(rows: np.ndarray) -> None:
    with pytest.raises(InvalidArgument):
        q(rows)
    with pytest.raises(InvalidArgument, match="zero vector"):
        prepare_queries(np.zeros((1, DIM), np.float32), spec("z", Metric.COSINE))


def test_remote_errors_are_unavailable_when_the_shard_is_gone(tmp_path: Path) -> None:
    proc = ShardProcess(tmp_path / "gone")
    proc.start()
    remote = RemoteShard(proc.address)
    remote.create_collection(spec())
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(DeadlineExceeded):
            remote.stats("c", timeout=0.3)
    finally:
        proc.proc.send_signal(signal.SIGCONT)
    proc.kill()
    with pytest.raises(Unavailable):
        remote.stats("c", timeout=2)
    remote.close()


def test_filtered_search_with_explain(shard: ShardApi) -> None:
    shard.create_collection(spec())
    data = clustered(60, DIM, seed=21)
    ids = [f"f{n}" for n in range(60)]
    metas = [ItemMeta(uri=f"u{n}", tags=["odd"] if n % 2 else [], attributes={"n": n}) for n in range(60)]
    shard.upsert("c", prepare_batch(ids, data, spec(), payloads=[payload.encode(m) for m in metas]))
    shard.compact("c", wait=True)
    odd_small = AllOf((Condition("tags", Eq("odd")), Condition("attributes.n", Range(lt=10))))
    reply = shard.search("c", q(data[:2]), 10, filter=odd_small, explain=True)
    assert [sorted(h.ids) for h in reply.hits] == [["f1", "f3", "f5", "f7", "f9"]] * 2
    assert reply.stats is not None and reply.stats.plan == "exact" and reply.stats.matched == 5
    assert shard.search("c", q(data[:1]), 3, filter=odd_small).stats is None  # stats only when asked
    nothing = shard.search("c", q(data[:1]), 3, filter=Condition("uri", In(())), explain=True)
    assert nothing.hits[0].ids == [] and nothing.stats is not None and nothing.stats.plan == "empty"
    with pytest.raises(InvalidArgument):
        shard.search("c", q(data[:1]), 3, allow_ids=["f1"], filter=odd_small)
    shard.upsert("c", batch(["bare"], data[:1]))  # an item without a payload: the shard cannot filter it
    assert shard.stats("c").legacy_items == 1
    with pytest.raises(FailedPrecondition):
        shard.search("c", q(data[:1]), 3, filter=odd_small)


def test_concurrent_searches_each_get_their_own_hits(shard: ShardApi) -> None:
    """Many threads searching at once (RemoteShard coalesces them into batched calls) get exactly
    the hits each query gets alone, nearest first."""
    shard.create_collection(spec())
    data = clustered(400, DIM, seed=5)
    shard.upsert("c", batch([f"i{n}" for n in range(400)], data))
    shard.compact("c", wait=True)
    alone = [shard.search("c", q(data[n : n + 1]), 5, 32, timeout=10).hits[0].ids for n in range(400)]

    def one(n: int) -> list[str]:
        return shard.search("c", q(data[n : n + 1]), 5, 32, timeout=10).hits[0].ids

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, list(range(400)) * 3)) == alone * 3
    if isinstance(shard, RemoteShard):
        assert shard._coalescer is not None and shard._coalescer.batches > 0
