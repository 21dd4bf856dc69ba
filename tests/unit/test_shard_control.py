"""shard/control.py: the persisted rebalancing controls of a shard (issue #16), and how the
registry and the collections honour them (fences under the write lock, WAL pins in truncation)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from core.errors import CorruptionError, InvalidArgument, NotFound, OutOfRange, WrongRoute
from core.keyhash import stable_hash64
from core.keyranges import TOP, KeyRange
from core.spec import Metric, make_spec
from core.vectors import prepare_batch
from shard.collection import CollectionOptions
from shard.control import CONTROL_FILE, MAX_FENCE_RANGES, ShardControl
from shard.local import LocalShard
from shard.registry import Registry
from shard.types import ControlState

DIM = 4


def arc_of(item: str) -> KeyRange:
    """The smallest arc holding ``item``'s hash: (h - 1, h]."""
    h = stable_hash64(item)
    return KeyRange((h - 1) % TOP, h)


def loaded(path: Path) -> ShardControl:
    control = ShardControl(path / CONTROL_FILE)
    control.load()
    return control


# ---------------------------------------------------------------------- ShardControl alone
def test_empty_state_and_no_file_until_a_change(tmp_path: Path) -> None:
    control = loaded(tmp_path)
    assert control.snapshot() == ControlState(0, {}, {})
    assert control.pin_floor("c") is None
    control.admit(0)
    control.admit(7)
    control.check_writes(["a", "b"])
    control.unpin("nobody")  # nothing to do: nothing written
    control.set_fence("nobody", None)
    control.drop_collection("c")
    assert not (tmp_path / CONTROL_FILE).exists()


def test_state_persists_and_reloads(tmp_path: Path) -> None:
    control = loaded(tmp_path)
    assert control.set_min_epoch(4) == 4
    control.set_fence("m1", [KeyRange(10, 20), KeyRange(100, 5)])
    control.pin("c", "m1", 7)
    control.pin("d", "m1", 3)
    control.pin("c", "m2", 5)
    again = loaded(tmp_path)
    expected = ControlState(4, {"m1": [KeyRange(10, 20), KeyRange(100, 5)]}, {"m1": {"c": 7, "d": 3}, "m2": {"c": 5}})
    assert control.snapshot() == expected
    assert again.snapshot() == expected
    assert again.pin_floor("c") == 5 and again.pin_floor("d") == 3 and again.pin_floor("e") is None


def test_min_epoch_only_rises_and_admits_epoch_zero(tmp_path: Path) -> None:
    control = loaded(tmp_path)
    assert control.set_min_epoch(5) == 5
    assert control.set_min_epoch(3) == 5
    assert control.set_min_epoch(5) == 5
    for ok in (0, 5, 6, 1000):
        control.admit(ok)
    for stale in (1, 4):
        with pytest.raises(WrongRoute, match=f"ring version {stale} is stale"):
            control.admit(stale)
    with pytest.raises(InvalidArgument):
        control.set_min_epoch(-1)
    assert loaded(tmp_path).min_epoch == 5


def test_fences_refuse_writes_touching_fenced_ids(tmp_path: Path) -> None:
    control = loaded(tmp_path)
    control.set_fence("m1", [arc_of("x")])
    control.set_fence("m2", [arc_of("y")])
    control.check_writes(["a", "b"])
    with pytest.raises(WrongRoute, match="1 of 3 ids are moving or have moved"):
        control.check_writes(["a", "x", "b"])
    with pytest.raises(WrongRoute, match="2 of 2 ids"):
        control.check_writes(["x", "y"])
    control.set_fence("m1", [])  # removes m1 only
    control.check_writes(["x"])
    with pytest.raises(WrongRoute):
        control.check_writes(["y"])
    control.set_fence("m2", None)
    control.check_writes(["x", "y"])
    assert loaded(tmp_path).snapshot().fences == {}


def test_unpin_and_drop_collection_forget_pins(tmp_path: Path) -> None:
    control = loaded(tmp_path)
    control.pin("c", "m1", 7)
    control.pin("d", "m1", 3)
    control.pin("c", "m2", 9)
    control.pin("c", "m1", 8)  # moves m1's pin of c
    assert control.pin_floor("c") == 8
    control.drop_collection("c")
    assert control.snapshot().pins == {"m1": {"d": 3}}
    control.unpin("m1")
    assert control.snapshot().pins == {}
    assert loaded(tmp_path).snapshot().pins == {}


@pytest.mark.parametrize("key", ["", "k" * 129])
def test_bad_keys_and_too_many_ranges_are_invalid(tmp_path: Path, key: str) -> None:
    control = loaded(tmp_path)
    with pytest.raises(InvalidArgument, match=r"1\.\.128 characters"):
        control.set_fence(key, [KeyRange(1, 2)])
    with pytest.raises(InvalidArgument):
        control.pin("c", key, 1)
    with pytest.raises(InvalidArgument):
        control.unpin(key)
    control.set_fence("k" * 128, [KeyRange(1, 2)])  # the longest key is fine
    many = [KeyRange(2 * i, 2 * i + 1) for i in range(MAX_FENCE_RANGES + 1)]
    with pytest.raises(InvalidArgument, match="at most 100000 ranges"):
        control.set_fence("big", many)
    assert control.snapshot().fences.keys() == {"k" * 128}


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        '{"format": 2, "min_epoch": 0, "fences": {}, "pins": {}}',
        '{"format": 1, "min_epoch": -1, "fences": {}, "pins": {}}',
        '{"format": 1, "min_epoch": 0, "fences": {"k": [[1]]}, "pins": {}}',
        '{"format": 1, "min_epoch": 0, "fences": {"": [[1, 2]]}, "pins": {}}',
        '{"format": 1, "min_epoch": 0, "fences": {}, "pins": {"k": {"c": "7"}}}',
        '{"format": 1, "min_epoch": 0, "fences": {}}',
    ],
)
def test_a_damaged_file_is_corruption(tmp_path: Path, text: str) -> None:
    (tmp_path / CONTROL_FILE).write_text(text)
    with pytest.raises(CorruptionError, match="control"):
        loaded(tmp_path)
    registry = Registry(tmp_path, CollectionOptions())
    with pytest.raises(CorruptionError):
        registry.open()


def test_the_file_is_replaced_atomically(tmp_path: Path) -> None:
    control = loaded(tmp_path)
    control.set_fence("m1", [KeyRange(1, 2)])
    assert [p.name for p in tmp_path.iterdir()] == [CONTROL_FILE]  # no temp file left
    doc = json.loads((tmp_path / CONTROL_FILE).read_text())
    assert doc == {"format": 1, "min_epoch": 0, "fences": {"m1": [[1, 2]]}, "pins": {}}


# ---------------------------------------------------------------------- through the registry
@pytest.fixture
def registry(tmp_path: Path):
    registry = Registry(tmp_path / "shard", CollectionOptions(compact_age_s=3600, snapshots_kept=2))
    registry.open()
    registry.create(make_spec("c", DIM, Metric.L2.value))
    yield registry
    registry.close()


def write(shard: LocalShard, ids: list[str], seed: int = 0, *, replicate: bool = False) -> int:
    vectors = np.random.default_rng(seed).standard_normal((len(ids), DIM)).astype(np.float32)
    batch = prepare_batch(ids, vectors, make_spec("c", DIM, Metric.L2.value))
    return shard.upsert("c", batch, replicate=replicate).seq


def test_guard_runs_under_the_write_lock_before_logging(registry: Registry) -> None:
    collection = registry.get("c")
    seen: list[list[str]] = []

    def guard(ids: object) -> None:
        assert collection._write_lock.locked()
        seen.append(list(ids))  # type: ignore[call-overload]
        raise WrongRoute("no")

    batch = prepare_batch(["a", "b"], np.ones((2, DIM), dtype=np.float32), collection.spec)
    with pytest.raises(WrongRoute):
        collection.upsert_batch(batch, guard)
    with pytest.raises(WrongRoute):
        collection.delete_ids(["a", "a", "zz"], guard)
    assert seen == [["a", "b"], ["a", "zz"]]
    assert collection.stats().last_applied_seq == 0


def test_stale_handles_are_refused_every_data_call(registry: Registry) -> None:
    base = LocalShard(registry)
    write(base, ["a"])
    assert base.set_min_epoch(3) == 3
    stale = LocalShard(registry, epoch=2)
    with pytest.raises(WrongRoute):
        write(stale, ["a"], seed=1)
    for call in (
        lambda: stale.list_collections(),
        lambda: stale.get("c", ["a"]),
        lambda: stale.delete("c", ["a"]),
        lambda: stale.stats("c"),
        lambda: stale.compact("c", wait=True),
        lambda: stale.read_wal("c", 1),
        lambda: stale.scan("c"),
        lambda: stale.drop_collection("c"),
        lambda: stale.create_collection(make_spec("d", DIM, Metric.L2.value)),
        lambda: stale.spec("c"),
    ):
        with pytest.raises(WrongRoute):
            call()
    assert stale.control().min_epoch == 3  # the control calls are never refused
    for fresh in (LocalShard(registry, 3), LocalShard(registry, 4), stale.with_epoch(0)):
        assert fresh.get("c", ["a"]).ids == ["a"]
    assert base.stats("c").last_applied_seq == 1


def test_pin_keeps_the_log_through_compactions(registry: Registry) -> None:
    shard = LocalShard(registry)
    for n in range(3):
        write(shard, [f"p{n}"], seed=n)
    shard.pin_wal("c", "move-1", 2)
    for n in range(3, 8):
        write(shard, [f"p{n}"], seed=n)
        shard.compact("c", wait=True)
    assert [e.seq for e in shard.read_wal("c", 2)] == list(range(2, 9))
    shard.pin_wal("c", "move-2", 3)  # a second key: the floor is the smaller
    shard.unpin_wal("move-1")
    shard.unpin_wal("move-1")  # idempotent
    write(shard, ["p8"], seed=8)
    shard.compact("c", wait=True)
    assert next(e.seq for e in shard.read_wal("c", 3)) == 3
    shard.unpin_wal("move-2")
    for n in range(9, 11):
        write(shard, [f"p{n}"], seed=n)
        shard.compact("c", wait=True)
    with pytest.raises(OutOfRange):
        list(shard.read_wal("c", 3))
    with pytest.raises(OutOfRange, match="first_available_seq"):
        shard.pin_wal("c", "move-3", 3)  # no longer held: refused, and not recorded
    assert shard.control().pins == {}


def test_pin_of_an_unknown_collection_and_drop(registry: Registry) -> None:
    shard = LocalShard(registry)
    with pytest.raises(NotFound):
        shard.pin_wal("nope", "m", 1)
    with pytest.raises(InvalidArgument):
        shard.pin_wal("c", "m", -1)
    shard.pin_wal("c", "m", 1)
    shard.pin_wal("c", "m", 50)  # ahead of the log: keeps what will come
    assert shard.control().pins == {"m": {"c": 50}}
    assert shard.drop_collection("c")
    assert shard.control().pins == {}


def test_set_fence_is_a_barrier_for_writes_in_flight(registry: Registry) -> None:
    shard = LocalShard(registry)
    collection = registry.get("c")
    entered, release = threading.Event(), threading.Event()
    original = collection._apply

    def slow_apply(*args, **kwargs):  # holds the write lock while the fence is being set
        entered.set()
        release.wait(10)
        return original(*args, **kwargs)

    collection._apply = slow_apply  # type: ignore[method-assign]
    writer = threading.Thread(target=write, args=(shard, ["x"]))
    writer.start()
    assert entered.wait(10)
    done = threading.Event()

    def fence() -> None:
        shard.set_fence("m", [arc_of("x")])
        done.set()

    fencer = threading.Thread(target=fence)
    fencer.start()
    assert not done.wait(0.3)  # waits for the write in flight
    release.set()
    writer.join(10)
    fencer.join(10)
    assert done.is_set()
    collection._apply = original  # type: ignore[method-assign]
    assert shard.get("c", ["x"]).versions == [1]
    with pytest.raises(WrongRoute):
        write(shard, ["x"], seed=2)
    assert write(shard, ["x"], seed=2, replicate=True) == 2
