"""Top-k merge of per-shard results: reference equivalence, ties, de-duplication, NaN, batches."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.merge import Hit, merge_batches, merge_top_k


def reference(per_shard: list[list[Hit]], k: int) -> list[Hit]:
    """Brute force: best non-NaN distance per id, sort by (distance, id), take k."""
    best: dict[str, float] = {}
    for hits in per_shard:
        for h in hits:
            if not math.isnan(h.distance) and (h.id not in best or h.distance < best[h.id]):
                best[h.id] = h.distance
    return [Hit(i, d) for i, d in sorted(best.items(), key=lambda kv: (kv[1], kv[0]))[:k]]


# Few ids and few distinct distances, so duplicates and ties are common; NaN and inf included.
ids = st.sampled_from([f"id-{i}" for i in range(12)] + ["", "Z", "a", "é"])
distances = st.one_of(
    st.sampled_from([0.0, -0.5, 0.25, 1.0, 1.0, 2.0, float("inf"), float("-inf"), float("nan")]),
    st.floats(min_value=-10, max_value=10, allow_nan=False, width=32),
)
hits = st.builds(Hit, ids, distances)
shard_lists = st.lists(st.lists(hits, max_size=15), max_size=6)
ks = st.integers(min_value=1, max_value=25)


@given(per_shard=shard_lists, k=ks)
@settings(max_examples=400, deadline=None)
def test_matches_brute_force_reference(per_shard: list[list[Hit]], k: int) -> None:
    result = merge_top_k(per_shard, k)
    assert result == reference(per_shard, k)
    assert len({h.id for h in result}) == len(result) <= k
    assert all(not math.isnan(h.distance) for h in result)
    assert [(h.distance, h.id) for h in result] == sorted((h.distance, h.id) for h in result)


@given(per_shard=shard_lists, k=ks, seed=st.integers(min_value=0, max_value=2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_independent_of_shard_order_and_order_within_shards(per_shard: list[list[Hit]], k: int, seed: int) -> None:
    rng = random.Random(seed)
    shuffled = [rng.sample(hs, len(hs)) for hs in per_shard]
    rng.shuffle(shuffled)
    assert merge_top_k(shuffled, k) == merge_top_k(per_shard, k)


@given(per_shard=shard_lists, k=ks)
@settings(max_examples=100, deadline=None)
def test_inputs_are_not_modified(per_shard: list[list[Hit]], k: int) -> None:
    before = [list(hs) for hs in per_shard]
    result = merge_top_k(per_shard, k)
    assert [len(hs) for hs in per_shard] == [len(hs) for hs in before]
    assert all(a is b for hs, bs in zip(per_shard, before, strict=True) for a, b in zip(hs, bs, strict=True))
    inputs = {id(h) for hs in per_shard for h in hs}
    assert all(id(h) in inputs for h in result)  # the input Hit objects come back, not copies


def test_ties_are_broken_by_id() -> None:
    shard_a = [Hit("b", 1.0), Hit("d", 1.0), Hit("x", 0.5)]
    shard_b = [Hit("c", 1.0), Hit("a", 1.0)]
    assert merge_top_k([shard_a, shard_b], 3) == [Hit("x", 0.5), Hit("a", 1.0), Hit("b", 1.0)]
    assert merge_top_k([shard_b, shard_a], 5) == [
        Hit("x", 0.5),
        Hit("a", 1.0),
        Hit("b", 1.0),
        Hit("c", 1.0),
        Hit("d", 1.0),
    ]


def test_duplicate_ids_keep_their_best_distance() -> None:
    # An id moving between shards is answered by both, possibly with different distances.
    old_owner = [Hit("moving", 0.9), Hit("p", 0.3)]
    new_owner = [Hit("moving", 0.2), Hit("q", 0.4), Hit("moving", 0.7)]
    assert merge_top_k([old_owner, new_owner], 10) == [Hit("moving", 0.2), Hit("p", 0.3), Hit("q", 0.4)]
    assert merge_top_k([new_owner, old_owner], 2) == [Hit("moving", 0.2), Hit("p", 0.3)]


def test_nan_distances_are_ignored() -> None:
    nan = float("nan")
    result = merge_top_k([[Hit("a", nan), Hit("b", 2.0)], [Hit("c", nan), Hit("a", 3.0)]], 5)
    assert result == [Hit("b", 2.0), Hit("a", 3.0)]
    assert merge_top_k([[Hit("only-nan", nan)]], 1) == []


def test_infinities_are_ranked() -> None:
    inf = float("inf")
    assert merge_top_k([[Hit("far", inf), Hit("near", -inf), Hit("mid", 0.0)]], 3) == [
        Hit("near", -inf),
        Hit("mid", 0.0),
        Hit("far", inf),
    ]


def test_fewer_hits_than_k_and_empty_inputs() -> None:
    assert merge_top_k([], 5) == []
    assert merge_top_k([[], []], 5) == []
    assert merge_top_k([[Hit("a", 1.0)], []], 5) == [Hit("a", 1.0)]


def test_large_merge_takes_the_global_best() -> None:
    rng = random.Random(3)
    per_shard = [[Hit(f"s{s}-{i}", rng.random()) for i in range(1000)] for s in range(8)]
    for hs in per_shard:
        hs.sort(key=lambda h: h.distance)
    result = merge_top_k(per_shard, 100)
    assert result == reference(per_shard, 100)
    assert len(result) == 100


@pytest.mark.parametrize("k", [0, -1, True, 2.5])
def test_bad_k_is_rejected(k: int) -> None:
    with pytest.raises(ValueError, match="k must be"):
        merge_top_k([[Hit("a", 1.0)]], k)
    with pytest.raises(ValueError, match="k must be"):
        merge_batches([[[Hit("a", 1.0)]]], k)


# -- batches -----------------------------------------------------------------------------------


@given(
    batches=st.integers(min_value=0, max_value=5).flatmap(
        lambda nq: st.lists(st.lists(st.lists(hits, max_size=8), min_size=nq, max_size=nq), max_size=4)
    ),
    k=ks,
)
@settings(max_examples=200, deadline=None)
def test_batches_merge_each_query_independently(batches: list[list[list[Hit]]], k: int) -> None:
    result = merge_batches(batches, k)
    nq = len(batches[0]) if batches else 0
    assert len(result) == nq
    for q in range(nq):
        assert result[q] == reference([shard[q] for shard in batches], k)


def test_batch_query_count_mismatch_raises() -> None:
    shard_a = [[Hit("a", 1.0)], [Hit("b", 2.0)]]
    shard_b = [[Hit("c", 0.5)]]
    with pytest.raises(ValueError, match="disagree on the number of queries"):
        merge_batches([shard_a, shard_b], 3)
    with pytest.raises(ValueError, match="disagree on the number of queries"):
        merge_batches([shard_a], 3, num_queries=3)


def test_batch_with_num_queries() -> None:
    assert merge_batches([], 3) == []
    assert merge_batches([], 3, num_queries=2) == [[], []]
    shard_a = [[Hit("a", 1.0)], [Hit("b", 2.0)]]
    shard_b = [[Hit("a", 0.5)], []]
    assert merge_batches([shard_a, shard_b], 3, num_queries=2) == [[Hit("a", 0.5)], [Hit("b", 2.0)]]
    with pytest.raises(ValueError, match="num_queries"):
        merge_batches([], 3, num_queries=-1)
