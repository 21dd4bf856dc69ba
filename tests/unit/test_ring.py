"""Consistent-hash ring: stable hash, lookups, balance, weights, minimal movement, persistence, errors."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router import ring as ring_mod
from router.ring import DEFAULT_VNODES_PER_WEIGHT, HashRing, ShardNode, stable_hash64

KEYS_100K = [f"id-{i}" for i in range(100_000)]


def make_ring(n: int, prefix: str = "shard-", **kwargs: int) -> HashRing:
    return HashRing([ShardNode(f"{prefix}{i}") for i in range(n)], **kwargs)


def shares(ring: HashRing, keys: list[str]) -> dict[str, float]:
    """Each shard's owned count divided by the equal-split mean."""
    counts = ring.owned_counts(keys)
    mean = len(keys) / len(counts)
    return {s: c / mean for s, c in counts.items()}


# -- the hash ----------------------------------------------------------------------------------


def test_stable_hash_literals_never_change() -> None:
    # Ids are placed on disk by this hash: if one of these fails, existing data is misplaced.
    assert stable_hash64("abc") == 15617099051652453721
    assert stable_hash64("") == 16476032584258269876
    assert stable_hash64("id-0") == 12120270531116192480
    assert stable_hash64("shard-0#0") == 4184841405746696897
    assert stable_hash64("é") == 14635220546840893743


@given(st.text(max_size=64))
@settings(max_examples=200, deadline=None)
def test_stable_hash_is_blake2b_64_big_endian(key: str) -> None:
    expected = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")
    value = stable_hash64(key)
    assert value == expected
    assert 0 <= value < 2**64


def test_placement_literals_never_change() -> None:
    # Pins the virtual-node naming, tie order and clockwise rule together, not just the hash.
    ring = make_ring(3)
    expected = ["shard-2", "shard-0", "shard-1", "shard-2", "shard-2", "shard-1", "shard-0", "shard-2"]
    assert ring.owners([f"id-{i}" for i in range(8)]) == expected


# -- lookups -----------------------------------------------------------------------------------


def test_owner_agrees_with_owners_for_10k_keys() -> None:
    rng = random.Random(7)
    ring = HashRing([ShardNode(f"s{i}", rng.choice([0.5, 1.0, 1.5, 3.0])) for i in range(7)])
    keys = [f"key-{rng.getrandbits(64):x}" for _ in range(10_000)]
    assert ring.owners(keys) == [ring.owner(k) for k in keys]


def test_owner_is_first_vnode_clockwise_with_wraparound() -> None:
    ring = make_ring(4, vnodes_per_weight=16)
    # Recompute the ring by brute force: all (position, shard) sorted, first position >= hash.
    vnodes = sorted((stable_hash64(f"{s}#{i}"), s) for s in ring.shards for i in range(16))
    assert ring.num_vnodes == len(vnodes) == 64

    def brute(h: int) -> str:
        for pos, shard in vnodes:
            if pos >= h:
                return shard
        return vnodes[0][1]

    keys = [f"k{i}" for i in range(2000)]
    assert ring.owners(keys) == [brute(stable_hash64(k)) for k in keys]
    # Exact virtual-node positions belong to that vnode; past the last one wraps to the first.
    for pos, shard in vnodes[:10]:
        assert ring._owner_indices(np.array([pos], dtype=np.uint64)).tolist() == [ring.shards.index(shard)]
    top = np.array([2**64 - 1], dtype=np.uint64)
    assert ring.shards[int(ring._owner_indices(top)[0])] == vnodes[0][1]


def test_ties_are_ordered_by_position_then_shard_id(monkeypatch: pytest.MonkeyPatch) -> None:
    # A coarse hash forces many equal positions; the smaller shard id must win each tie,
    # and owner() and owners() must still agree.
    monkeypatch.setattr(ring_mod, "stable_hash64", lambda key: int.from_bytes(key.encode(), "big") % 7)
    ring = HashRing([ShardNode("b"), ShardNode("a"), ShardNode("c")], vnodes_per_weight=40)
    positions = {int.from_bytes(f"{s}#{i}".encode(), "big") % 7 for s in "abc" for i in range(40)}
    keys = [f"x{i}" for i in range(500)]
    for key in keys:
        h = ring_mod.stable_hash64(key)
        target = min((p for p in positions if p >= h), default=min(positions))
        claimants = sorted(
            s for s in "abc" for i in range(40) if int.from_bytes(f"{s}#{i}".encode(), "big") % 7 == target
        )
        assert ring.owner(key) == claimants[0]
    assert ring.owners(keys) == [ring.owner(k) for k in keys]


@given(
    n=st.integers(min_value=1, max_value=6),
    keys=st.lists(st.text(min_size=1, max_size=20), max_size=50),
)
@settings(max_examples=40, deadline=None)
def test_owner_agrees_with_owners_property(n: int, keys: list[str]) -> None:
    ring = make_ring(n, vnodes_per_weight=32)
    owners = ring.owners(keys)
    assert owners == [ring.owner(k) for k in keys]
    assert set(owners) <= set(ring.shards)


# -- balance and weights -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5, 8])
def test_equal_weight_shards_are_balanced_within_10_percent(n: int) -> None:
    ring = make_ring(n)
    assert ring.vnodes_per_weight == DEFAULT_VNODES_PER_WEIGHT
    share = shares(ring, KEYS_100K)
    assert all(0.9 <= v <= 1.1 for v in share.values()), share


def test_balance_holds_for_other_shard_names_and_counts() -> None:
    for n, prefix in [(4, "node-"), (12, "s"), (16, "shard-")]:
        share = shares(make_ring(n, prefix), KEYS_100K)
        assert all(0.9 <= v <= 1.1 for v in share.values()), (n, prefix, share)


def test_weight_two_shard_owns_about_twice() -> None:
    ring = HashRing([ShardNode("a"), ShardNode("b"), ShardNode("heavy", 2.0), ShardNode("c")])
    counts = ring.owned_counts(KEYS_100K)
    light = [counts[s] for s in ("a", "b", "c")]
    mean_light = sum(light) / 3
    assert 1.7 <= counts["heavy"] / mean_light <= 2.3, counts  # 2x within 15%
    assert abs(counts["heavy"] / len(KEYS_100K) - 0.4) < 0.4 * 0.15


def test_fractional_weights_get_proportional_vnodes() -> None:
    ring = HashRing([ShardNode("a", 0.5), ShardNode("b", 1.5), ShardNode("tiny", 1e-9)], vnodes_per_weight=100)
    # round(w * V) virtual nodes, at least one.
    assert ring.num_vnodes == 50 + 150 + 1


# -- movement ----------------------------------------------------------------------------------


def test_adding_a_fourth_shard_moves_about_a_quarter_all_to_it() -> None:
    old = make_ring(3)
    new = old.with_shard(ShardNode("shard-3"))
    moved = old.moved_keys(new, KEYS_100K)
    fraction = len(moved) / len(KEYS_100K)
    assert 0.20 <= fraction <= 0.30, fraction
    assert set(new.owners(moved)) == {"shard-3"}
    # Keys that did not move kept their owner; everything the new shard owns moved to it.
    assert new.owned_counts(KEYS_100K)["shard-3"] == len(moved)


def test_removing_a_shard_moves_only_its_keys() -> None:
    old = make_ring(5)
    new = old.without_shard("shard-2")
    before = old.owners(KEYS_100K)
    moved = set(old.moved_keys(new, KEYS_100K))
    assert moved == {k for k, o in zip(KEYS_100K, before, strict=True) if o == "shard-2"}
    assert "shard-2" not in new.owners(list(moved))


@given(
    n=st.integers(min_value=1, max_value=6),
    weights=st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=7, max_size=7),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
@settings(max_examples=25, deadline=None)
def test_add_then_remove_moves_only_to_and_from_the_changed_shard(n: int, weights: list[float], seed: int) -> None:
    rng = random.Random(seed)
    ring = HashRing([ShardNode(f"s{i}", weights[i]) for i in range(n)], vnodes_per_weight=64)
    keys = [f"k{rng.getrandbits(40)}" for _ in range(500)]
    grown = ring.with_shard(ShardNode("new", weights[6]))
    assert set(grown.owners(ring.moved_keys(grown, keys))) <= {"new"}
    if n > 1:
        gone = rng.choice(ring.shards)
        shrunk = ring.without_shard(gone)
        assert set(ring.owners(ring.moved_keys(shrunk, keys))) <= {gone}
    # Removing what was added gives back the original placement.
    assert grown.without_shard("new").owners(keys) == ring.owners(keys)


# -- immutability, versions, persistence -------------------------------------------------------


def test_derived_rings_bump_version_and_leave_the_original_alone() -> None:
    ring = make_ring(3, version=7)
    snapshot = ring.owners(KEYS_100K[:1000])
    grown = ring.with_shard(ShardNode("shard-9", 2.0))
    shrunk = grown.without_shard("shard-0")
    assert (ring.version, grown.version, shrunk.version) == (7, 8, 9)
    assert ring.shards == ["shard-0", "shard-1", "shard-2"]
    assert grown.shards == ["shard-0", "shard-1", "shard-2", "shard-9"]
    assert shrunk.shards == ["shard-1", "shard-2", "shard-9"]
    assert ring.owners(KEYS_100K[:1000]) == snapshot
    with pytest.raises(ValueError):
        ring._positions[0] = 0  # read-only arrays


def test_shards_are_sorted_and_construction_order_is_irrelevant() -> None:
    nodes = [ShardNode("zeta"), ShardNode("alpha", 2.0), ShardNode("mid", 0.5)]
    a = HashRing(nodes)
    b = HashRing(reversed(nodes))
    assert a.shards == ["alpha", "mid", "zeta"]
    assert a == b
    assert hash(a) == hash(b)
    assert a.owners(KEYS_100K[:2000]) == b.owners(KEYS_100K[:2000])
    assert "alpha" in a and "nope" not in a and len(a) == 3


def test_to_dict_from_dict_round_trips_through_json() -> None:
    ring = HashRing([ShardNode("a", 1.0), ShardNode("b", 2.5), ShardNode("c", 0.75)], vnodes_per_weight=300, version=42)
    data = json.loads(json.dumps(ring.to_dict()))
    assert data == {
        "format": 1,
        "hash": "blake2b-64",
        "version": 42,
        "vnodes_per_weight": 300,
        "shards": [
            {"shard_id": "a", "weight": 1.0},
            {"shard_id": "b", "weight": 2.5},
            {"shard_id": "c", "weight": 0.75},
        ],
    }
    back = HashRing.from_dict(data)
    assert back == ring
    assert back.version == 42 and back.vnodes_per_weight == 300
    keys = KEYS_100K[:5000]
    assert back.owners(keys) == ring.owners(keys)
    assert HashRing.from_dict(HashRing().to_dict()) == HashRing()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format=2),
        lambda d: d.update(hash="md5"),
        lambda d: d.update(version=-1),
        lambda d: d.update(version=True),
        lambda d: d.update(vnodes_per_weight=0),
        lambda d: d.update(shards="a,b"),
        lambda d: d.update(extra=1),
        lambda d: d.pop("version"),
        lambda d: d["shards"].append({"shard_id": "a", "weight": 1.0}),
        lambda d: d["shards"].append({"shard_id": "z", "weight": 0}),
        lambda d: d["shards"].append({"shard_id": "z"}),
        lambda d: d["shards"].append(["z", 1.0]),
    ],
)
def test_from_dict_rejects_malformed_descriptions(mutate) -> None:
    data = make_ring(2, prefix="").to_dict()
    data["shards"][0]["shard_id"] = "a"
    mutate(data)
    with pytest.raises(ValueError):
        HashRing.from_dict(data)


# -- errors ------------------------------------------------------------------------------------


def test_empty_ring_refuses_lookups_with_a_clear_error() -> None:
    empty = HashRing(version=3)
    assert empty.shards == [] and len(empty) == 0
    with pytest.raises(ValueError, match="no shards"):
        empty.owner("x")
    with pytest.raises(ValueError, match="no shards"):
        empty.owners(["x"])
    with pytest.raises(ValueError, match="no shards"):
        empty.owners([])
    with pytest.raises(ValueError, match="no shards"):
        make_ring(2).moved_keys(empty, ["x"])
    last = HashRing([ShardNode("only")]).without_shard("only")
    assert last.shards == [] and last.version == 1


@pytest.mark.parametrize("weight", [0, 0.0, -1.0, float("nan"), float("inf"), float("-inf")])
def test_non_positive_or_non_finite_weight_is_rejected(weight: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        ShardNode("s", weight)


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match="duplicate shard id"):
        HashRing([ShardNode("a"), ShardNode("b"), ShardNode("a", 2.0)])
    with pytest.raises(ValueError, match="shard_id"):
        ShardNode("")
    with pytest.raises(ValueError, match="vnodes_per_weight"):
        HashRing([ShardNode("a")], vnodes_per_weight=0)
    with pytest.raises(ValueError, match="version"):
        HashRing([ShardNode("a")], version=-1)
    with pytest.raises(ValueError, match="virtual nodes"):
        HashRing([ShardNode("a", 1e9)])
    ring = make_ring(2)
    with pytest.raises(ValueError, match="already on the ring"):
        ring.with_shard(ShardNode("shard-1", 3.0))
    with pytest.raises(ValueError, match="not on the ring"):
        ring.without_shard("shard-7")


@pytest.mark.parametrize("change", ["add", "remove", "weight"])
def test_moving_ranges_cover_exactly_the_keys_that_change_owner(change: str) -> None:
    """Every key is in the arcs of (its old owner, its new owner) iff the owners differ, and in
    no other pair's arcs."""
    from core.keyranges import RangeSet

    old = HashRing([ShardNode(f"s{i}") for i in range(4)], vnodes_per_weight=256)
    if change == "add":
        new = old.with_shard(ShardNode("s4"))
    elif change == "remove":
        new = old.without_shard("s2")
    else:
        new = HashRing([ShardNode(f"s{i}", 2.0 if i == 0 else 1.0) for i in range(4)], vnodes_per_weight=256)
    keys = [f"key-{i}" for i in range(20_000)]
    before, after = old.owners(keys), new.owners(keys)
    moves = old.moving_ranges(new)
    assert moves and all(a != b for a, b in moves)
    covered = np.zeros(len(keys), dtype=int)
    for (source, target), arcs in moves.items():
        inside = RangeSet(arcs).contains_ids(keys)
        expected = np.array([(a, b) == (source, target) for a, b in zip(before, after, strict=True)])
        assert (inside == expected).all(), (source, target)
        covered += inside
    changed = np.array([a != b for a, b in zip(before, after, strict=True)])
    assert (covered == changed).all()
    assert 0 < changed.mean() < 0.5
