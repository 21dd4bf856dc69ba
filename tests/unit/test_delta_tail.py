"""``Delta.tail``: a sealed delta without the rows a fold's step already published in a graph
(shard/delta.py); scans, filters and lookups see only the rows from ``first``."""

from __future__ import annotations

import numpy as np
import pytest

from core.filters import Condition, Eq
from shard import planner
from shard.delta import TOMBSTONE, Delta
from shard.fields import Fields


def make_delta() -> tuple[Delta, np.ndarray]:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((10, 4)).astype(np.float32)
    delta = Delta(4, block_rows=4)
    fields = [Fields("", ("even",) if i % 2 == 0 else ()) for i in range(10)]
    delta.append([f"r{i}" for i in range(10)], vectors, seq=1, payloads=[b"p"] * 10, fields=fields)
    delta.tombstone("gone", 2)
    return delta, vectors


def test_a_tail_shares_rows_and_leaves_out_those_before_first() -> None:
    delta, vectors = make_delta()
    tail = delta.tail(5)
    blocks = list(tail.blocks())
    assert [(b.start, len(b.vectors)) for b in blocks] == [(5, 3), (8, 2)]
    np.testing.assert_array_equal(np.concatenate([b.vectors for b in blocks]), vectors[5:])
    assert tail._blocks[0] is None and delta._blocks[0] is not None  # the whole first block goes
    assert [b.start for b in delta.blocks()] == [0, 4, 8]  # the delta itself is unchanged
    assert tail.row_of("r4") is None and tail.row_of("r5") == 5 and tail.row_of("gone") == TOMBSTONE
    assert tail.row_of("absent") is None and delta.row_of("r4") == 4
    assert tail.index is delta.index and tail.ids is delta.ids
    np.testing.assert_array_equal(tail.vector(9), vectors[9])
    with pytest.raises(IndexError):
        tail.vector(1)
    tail.kill(6, 3)  # a kill reaches the rows every view shares
    assert not list(delta.blocks())[1].visible(3)[2]
    with pytest.raises(ValueError):
        tail.tail(4)  # never backwards
    assert list(delta.tail(10).blocks()) == []
    assert len(delta) == 11 and len(delta.tail(5, folded=5)) == 6  # ten rows and a tombstone
    with pytest.raises(ValueError):
        delta.tail(5, folded=12)


def test_a_tail_is_searched_and_filtered_over_its_own_rows_only() -> None:
    delta, vectors = make_delta()
    tail = delta.tail(5)
    (names, dist), matched = planner.search_delta(tail, None, vectors, 10, 1, "l2")
    assert matched == 5
    assert all(set(row) == {f"r{i}" for i in range(5, 10)} for row in names.tolist())
    for q in range(5, 10):  # each row of the tail finds itself first
        assert names[q][0] == f"r{q}" and dist[q][0] == pytest.approx(0.0, abs=1e-5)
    (names, dist), matched = planner.search_delta(tail, Condition("tags", Eq("even")), vectors, 10, 1, "l2")
    pairs = zip(names.tolist(), dist.tolist(), strict=True)
    shown = [{n for n, d in zip(row, drow, strict=True) if np.isfinite(d)} for row, drow in pairs]
    assert matched == 2 and all(row == {"r6", "r8"} for row in shown)  # the others come at distance inf
    span = tail.span(6, 8)
    assert span.start == 6 and len(span.vectors) == 2
    with pytest.raises(ValueError):
        tail.span(3, 6)  # before first
    with pytest.raises(ValueError):
        tail.span(7, 9)  # across a block boundary
