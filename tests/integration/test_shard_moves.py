"""The shard's side of online rebalancing (issue #16), in-process and over a real socket alike:
ring version refusal, write fences (atomic with writes), WAL pins across compactions, and the
controls surviving a restart of the shard process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from core.errors import InvalidArgument, NotFound, OutOfRange, WrongRoute
from core.keyhash import stable_hash64
from core.keyranges import TOP, KeyRange
from core.spec import CollectionSpec, Metric, make_spec
from core.vectors import Batch, prepare_batch, prepare_queries
from shard import records
from shard.api import ShardApi
from shard.collection import CollectionOptions
from shard.local import LocalShard
from shard.registry import Registry
from shard.remote import RemoteShard
from shard.types import ControlState
from testkit.shardproc import ShardProcess
from vsproto.common import spec_to_proto
from vsproto.v1 import shard_service_pb2 as pb
from vsproto.v1 import shard_service_pb2_grpc as pb_grpc

DIM = 8


class Shard:
    """A shard under test: a handle at epoch 0 and a way to make handles at other epochs."""

    def __init__(self, base: ShardApi, make: object, proc: ShardProcess | None = None) -> None:
        self.base = base
        self._make = make
        self.proc = proc
        self._handles: list[ShardApi] = []

    def at(self, epoch: int) -> ShardApi:
        handle: ShardApi = self._make(epoch)  # type: ignore[operator]
        self._handles.append(handle)
        return handle

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        self.base.close()


@pytest.fixture(params=["local", "remote"])
def shard(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shard]:
    if request.param == "local":
        registry = Registry(tmp_path / "local", CollectionOptions(compact_age_s=3600))
        registry.open()
        under_test = Shard(LocalShard(registry), lambda epoch: LocalShard(registry, epoch))
        under_test.base.create_collection(spec())
        yield under_test
        under_test.close()
        registry.close()
    else:
        proc = ShardProcess(tmp_path / "remote", "--compact-age-s", "3600")
        proc.start()
        address = proc.address
        under_test = Shard(RemoteShard(address), lambda epoch: RemoteShard(address, epoch=epoch), proc)
        under_test.base.create_collection(spec())
        yield under_test
        under_test.close()
        proc.kill()


def spec(name: str = "c") -> CollectionSpec:
    return make_spec(name, DIM, Metric.L2.value)


def batch(ids: list[str], seed: int = 0) -> Batch:
    vectors = np.random.default_rng(seed).standard_normal((len(ids), DIM)).astype(np.float32)
    return prepare_batch(ids, vectors, spec())


def arc_of(item: str) -> KeyRange:
    """The smallest arc holding ``item``'s hash: (h - 1, h]."""
    h = stable_hash64(item)
    return KeyRange((h - 1) % TOP, h)


def touched(entry: records.WalEntry) -> list[str]:
    return list(entry.op.ids)


# ---------------------------------------------------------------------- ring version
def test_a_stale_handle_is_refused_and_newer_ones_are_served(shard: Shard) -> None:
    base = shard.base
    base.upsert("c", batch(["a", "b"]))
    assert base.set_min_epoch(5) == 5
    assert base.set_min_epoch(2) == 5  # never lowered
    stale = shard.at(4)
    for call in (
        lambda: stale.upsert("c", batch(["a"], seed=1)),
        lambda: stale.delete("c", ["a"]),
        lambda: stale.get("c", ["a"]),
        lambda: stale.search("c", prepare_queries(np.ones((1, DIM), dtype=np.float32), spec()), 1),
        lambda: stale.stats("c"),
        lambda: stale.compact("c", wait=True),
        lambda: list(stale.read_wal("c", 1)),
        lambda: list(stale.scan("c")),
        lambda: stale.list_collections(),
        lambda: stale.create_collection(spec("d")),
        lambda: stale.drop_collection("c"),
    ):
        with pytest.raises(WrongRoute, match="ring version 4 is stale"):
            call()
    assert stale.control().min_epoch == 5  # control calls are never refused by epoch
    for epoch in (0, 5, 6):
        handle = shard.at(epoch)
        assert handle.get("c", ["a"]).ids == ["a"]
        assert [s.name for s in handle.list_collections()] == ["c"]
        assert len(list(handle.read_wal("c", 1))) == 1
    fetched = base.get("c", ["a", "b"])
    assert fetched.versions == [1, 1]  # nothing the stale handle tried was done
    assert base.stats("c").last_applied_seq == 1


# ---------------------------------------------------------------------- write fences
def test_fenced_ids_refuse_client_writes_but_not_replication(shard: Shard) -> None:
    base = shard.base
    base.upsert("c", batch(["x", "y", "z"]))
    before = base.get("c", ["x", "y", "z"])
    base.set_fence("move-1", [arc_of("x")])
    assert base.control().fences == {"move-1": [arc_of("x")]}
    with pytest.raises(WrongRoute, match="1 of 1 ids are moving"):
        base.upsert("c", batch(["x"], seed=1))
    with pytest.raises(WrongRoute, match="1 of 3 ids"):
        base.upsert("c", batch(["y", "x", "new"], seed=1))  # mixed: refused whole
    with pytest.raises(WrongRoute):
        base.delete("c", ["x"])
    with pytest.raises(WrongRoute):
        base.delete("c", ["z", "x"])
    after = base.get("c", ["x", "y", "z", "new"])
    assert after.ids == ["x", "y", "z"] and after.missing == ["new"]
    assert after.versions == before.versions == [1, 1, 1]
    np.testing.assert_array_equal(after.vectors, before.vectors)
    assert base.stats("c").last_applied_seq == 1
    # Unfenced ids are written as before; the coordinator's copies pass the fence.
    assert base.upsert("c", batch(["y"], seed=2)).seq == 2
    assert base.upsert("c", batch(["x", "y"], seed=3), replicate=True).seq == 3
    assert base.delete("c", ["x"], replicate=True).count == 1
    # A stale handle is refused even when replicating.
    base.set_min_epoch(2)
    with pytest.raises(WrongRoute):
        shard.at(1).upsert("c", batch(["y"], seed=4), replicate=True)
    base.set_fence("move-1", [])
    assert base.control().fences == {}
    assert base.upsert("c", batch(["x"], seed=5)).seq == 5


def test_no_client_write_to_a_fenced_id_is_logged_after_set_fence_returns(shard: Shard) -> None:
    base = shard.base
    stop = threading.Event()
    refused = threading.Event()
    errors: list[BaseException] = []
    writes = [0]

    def hammer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                base.upsert("c", batch(["hot", f"cold{n % 7}"], seed=n))
                writes[0] += 1
            except WrongRoute:
                refused.set()
                base.upsert("c", batch([f"cold{n % 7}"], seed=n))  # the rest goes on
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)
                return

    writers = [threading.Thread(target=hammer) for _ in range(3)]
    for writer in writers:
        writer.start()
    try:
        while writes[0] < 20 and not errors:
            threading.Event().wait(0.005)
        base.set_fence("move-hot", [arc_of("hot")])
        fenced_at = base.stats("c").last_applied_seq
        assert refused.wait(10)
        while base.stats("c").last_applied_seq < fenced_at + 20 and not errors:
            threading.Event().wait(0.005)
    finally:
        stop.set()
        for writer in writers:
            writer.join(30)
    assert not errors
    entries = list(base.read_wal("c", 1))
    hot = [e.seq for e in entries if "hot" in touched(e)]
    assert hot and max(hot) <= fenced_at
    assert entries[-1].seq >= fenced_at + 20  # writes to other ids went on


# ---------------------------------------------------------------------- WAL pins
def test_a_pin_keeps_the_log_across_compactions_until_unpinned(shard: Shard) -> None:
    base = shard.base
    for n in range(3):
        base.upsert("c", batch([f"p{n}"], seed=n))
    base.pin_wal("c", "move-1", 3)
    base.pin_wal("c", "move-1", 3)  # idempotent
    assert base.control().pins == {"move-1": {"c": 3}}
    for n in range(3, 8):  # two snapshots are kept: without the pin, seq 3 would be gone
        base.upsert("c", batch([f"p{n}"], seed=n))
        base.compact("c", wait=True)
    assert [e.seq for e in base.read_wal("c", 3)] == list(range(3, 9))
    base.unpin_wal("move-1")
    base.unpin_wal("move-1")  # idempotent
    assert base.control().pins == {}
    for n in range(8, 10):
        base.upsert("c", batch([f"p{n}"], seed=n))
        base.compact("c", wait=True)
    with pytest.raises(OutOfRange):
        list(base.read_wal("c", 3))
    with pytest.raises(OutOfRange, match="first_available_seq"):
        base.pin_wal("c", "move-2", 3)
    assert base.control().pins == {}
    with pytest.raises(NotFound):
        base.pin_wal("missing", "move-2", 1)
    base.pin_wal("c", "move-2", 100)  # ahead of the log
    assert base.drop_collection("c")
    assert base.control().pins == {}


@pytest.mark.parametrize("key", ["", "k" * 129])
def test_bad_keys_are_invalid_argument(shard: Shard, key: str) -> None:
    base = shard.base
    for call in (
        lambda: base.set_fence(key, [KeyRange(1, 2)]),
        lambda: base.pin_wal("c", key, 1),
        lambda: base.unpin_wal(key),
    ):
        with pytest.raises(InvalidArgument, match="control key"):
            call()
    assert base.control() == ControlState(0, {}, {})


# ---------------------------------------------------------------------- over the wire only
def test_controls_persist_across_a_shard_restart(tmp_path: Path) -> None:
    proc = ShardProcess(tmp_path / "shard", "--compact-age-s", "3600")
    proc.start()
    shard = RemoteShard(proc.address)
    try:
        shard.create_collection(spec())
        for n in range(3):
            shard.upsert("c", batch([f"p{n}"], seed=n))
        shard.set_min_epoch(7)
        shard.set_fence("move-1", [arc_of("p0"), KeyRange(5, 9)])
        shard.pin_wal("c", "move-1", 2)
        expected = ControlState(7, {"move-1": [arc_of("p0"), KeyRange(5, 9)]}, {"move-1": {"c": 2}})
        assert shard.control() == expected
        shard.close()
        proc.restart()  # SIGKILL: the setters were durable when they returned
        shard = RemoteShard(proc.address)
        assert shard.control() == expected
        with pytest.raises(WrongRoute):
            RemoteShard(proc.address, epoch=6).stats("c")
        with pytest.raises(WrongRoute):
            shard.upsert("c", batch(["p0"], seed=9))
        for n in range(3, 7):  # the pin still holds after the restart
            shard.upsert("c", batch([f"q{n}"], seed=n))
            shard.compact("c", wait=True)
        assert next(e.seq for e in shard.read_wal("c", 2)) == 2
    finally:
        shard.close()
        proc.kill()


def test_wire_errors_are_exact_status_codes(shard_proc: ShardProcess) -> None:
    channel = grpc.insecure_channel(shard_proc.address)
    stub = pb_grpc.ShardServiceStub(channel)
    try:
        stub.CreateCollection(pb.CreateCollectionRequest(spec=spec_to_proto(spec())))

        def code_of(call: object) -> grpc.StatusCode:
            with pytest.raises(grpc.RpcError) as info:
                call()  # type: ignore[operator]
            return info.value.code()

        invalid = grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(lambda: stub.SetFence(pb.SetFenceRequest(key=""))) == invalid
        assert code_of(lambda: stub.SetFence(pb.SetFenceRequest(key="k" * 129))) == invalid
        too_many = [pb.KeyRange(start=2 * i, end=2 * i + 1) for i in range(100_001)]
        assert code_of(lambda: stub.SetFence(pb.SetFenceRequest(key="k", ranges=too_many))) == invalid
        assert code_of(lambda: stub.PinWal(pb.PinWalRequest(collection="c", key=""))) == invalid
        assert code_of(lambda: stub.UnpinWal(pb.UnpinWalRequest(key=""))) == invalid
        assert code_of(lambda: stub.PinWal(pb.PinWalRequest(collection="nope", key="k"))) == grpc.StatusCode.NOT_FOUND
        bad_version = (("vs-ring-version", "x1"),)
        list_request = pb.ListCollectionsRequest()
        assert code_of(lambda: stub.ListCollections(list_request, metadata=bad_version)) == invalid
        assert stub.SetMinEpoch(pb.SetMinEpochRequest(epoch=3)).min_epoch == 3
        stale = (("vs-ring-version", "2"),)
        assert code_of(lambda: stub.ListCollections(list_request, metadata=stale)) == grpc.StatusCode.ABORTED
        assert code_of(lambda: list(stub.ReadWal(pb.ReadWalRequest(collection="c"), metadata=stale))) == (
            grpc.StatusCode.ABORTED
        )
        assert stub.GetControl(pb.GetControlRequest(), metadata=stale).min_epoch == 3
        assert len(stub.ListCollections(list_request, metadata=(("vs-ring-version", "3"),)).collections) == 1
        assert len(stub.ListCollections(list_request).collections) == 1  # no version: unchecked
    finally:
        channel.close()
