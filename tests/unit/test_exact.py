"""``shard.exact``: the squared norms a delta keeps give the same l2 results as recomputing them."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.spec import Metric, make_spec
from shard import exact
from shard.collection import Collection, CollectionOptions
from shard.delta import Delta
from testkit.truth import exact_top_k


def blocks_of(rows: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    cuts = np.cumsum(sizes)[:-1]
    return [np.ascontiguousarray(b) for b in np.split(rows, cuts)]


@pytest.mark.parametrize("space", ["l2", "ip"])
def test_kept_norms_give_the_same_results_as_recomputed_ones(space: str) -> None:
    rng = np.random.default_rng(3)
    rows = (rng.standard_normal((700, 24)) * 30 + 100).astype(np.float32)  # large norms: l2 reranks
    queries = rows[[5, 300, 650]] + rng.standard_normal((3, 24)).astype(np.float32)
    blocks = blocks_of(rows, [256, 256, 188])
    hidden = np.zeros(len(rows), dtype=bool)
    hidden[[5, 17, 640]] = True
    norms = [exact.squared_norms(b) for b in blocks]
    got = exact.search(queries, blocks, space, 10, hidden, norms)
    want = exact.search(queries, blocks, space, 10, hidden)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    # and the answer is the brute-force one (direct distances for l2)
    diff = rows[None, :, :] - queries[:, None, :]
    direct = (diff**2).sum(axis=2) if space == "l2" else 1.0 - queries @ rows.T
    direct[:, hidden] = np.inf
    expected = np.argsort(direct, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(got[0], expected)


def test_norms_must_match_the_blocks() -> None:
    rows = np.ones((10, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="1 norm arrays for 2 blocks"):
        exact.search(rows[:1], [rows[:5], rows[5:]], "l2", 3, None, [exact.squared_norms(rows)])


def test_a_delta_keeps_each_rows_squared_norm_across_blocks_when_asked() -> None:
    rng = np.random.default_rng(4)
    delta = Delta(16, block_rows=64, keep_norms=True)
    plain = Delta(16, block_rows=64)
    written = []
    for batch in range(5):  # 5 x 30 rows over 64-row blocks: appends straddle block edges
        rows = rng.standard_normal((30, 16)).astype(np.float32)
        delta.append([f"b{batch}-{i}" for i in range(30)], rows, batch + 1)
        plain.append([f"b{batch}-{i}" for i in range(30)], rows, batch + 1)
        written.append(rows)
    every = np.concatenate(written)
    assert all(b.norms is None for b in plain.blocks())  # only l2 collections keep them
    kept = np.concatenate([b.norms for b in delta.blocks() if b.norms is not None])
    assert kept.dtype == np.float32 and len(kept) == 150
    np.testing.assert_array_equal(kept, exact.squared_norms(every))


@pytest.mark.parametrize("space", ["l2", "ip"])
def test_a_scan_split_over_threads_gives_the_same_results(space: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exact, "PARALLEL_MIN_VALUES", 1)
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((900, 32)).astype(np.float32)
    queries = rng.standard_normal((4, 32)).astype(np.float32)
    blocks = blocks_of(rows, [100, 300, 200, 250, 50])
    norms = [exact.squared_norms(b) for b in blocks]
    hidden = np.zeros(len(rows), dtype=bool)
    hidden[::7] = True
    want = exact.search(queries, blocks, space, 10, hidden, norms, threads=1)
    for threads in (2, 3, 8):
        got = exact.search(queries, blocks, space, 10, hidden, norms, threads=threads)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_a_split_scan_does_not_wait_for_busy_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every helper is held by other work: the caller scores the whole scan itself."""
    monkeypatch.setattr(exact, "PARALLEL_MIN_VALUES", 1)
    pool = exact._executor()
    release = threading.Event()
    busy = [pool.submit(release.wait, 30) for _ in range(pool._max_workers)]
    try:
        rows = np.random.default_rng(6).standard_normal((400, 16)).astype(np.float32)
        blocks = blocks_of(rows, [100, 100, 100, 100])
        started = time.monotonic()
        got = exact.search(rows[:2], blocks, "ip", 5, threads=4)
        assert time.monotonic() - started < 5
        np.testing.assert_array_equal(got[0], exact.search(rows[:2], blocks, "ip", 5)[0])
    finally:
        release.set()
        for f in busy:
            f.result(timeout=10)


@pytest.mark.parametrize(("metric", "kept"), [(Metric.L2, True), (Metric.INNER_PRODUCT, False), (Metric.COSINE, False)])
def test_only_an_l2_collections_delta_keeps_norms_and_its_search_is_exact(
    tmp_path: Path, metric: Metric, kept: bool
) -> None:
    options = CollectionOptions(compact_delta_items=10**9, compact_age_s=10**9, build_threads=1, search_threads=2)
    col = Collection.create(tmp_path / "c", make_spec("c", 8, metric.value), options)
    rows = np.random.default_rng(8).standard_normal((300, 8)).astype(np.float32)
    col.upsert([f"x{i}" for i in range(300)], rows)
    assert all((b.norms is not None) == kept for b in col._view.active.blocks())
    queries = rows[:20] + 0.1
    name = {Metric.L2: "l2", Metric.INNER_PRODUCT: "ip", Metric.COSINE: "cosine"}[metric]
    truth = exact_top_k(rows, queries, 5, name)
    got = col.search(queries, 5)  # every row is in the delta: an exact search
    assert [hits.ids for hits in got] == [[f"x{j}" for j in row] for row in truth]
    col.close()
