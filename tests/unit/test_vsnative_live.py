"""shard._vsnative: searches that run while ``add_items`` inserts into the same index (a fold that
adds to the published graph's own index), ``limit``, and ``resize_index`` beside searches.

Each test runs real threads against one index: a writer adding in chunks, readers searching in a
loop. Readers check what they can at any moment (every label below the limit, recall over the
labels published before the writer started) and the final index is checked against brute force.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from testkit.truth import exact_top_k

pytestmark = pytest.mark.skipif(os.environ.get("VS_NATIVE") == "0", reason="shard._vsnative disabled by VS_NATIVE=0")

DIM, BASE, EXTRA, K = 24, 3000, 3000, 10


def _index(space: str, capacity: int, dim: int = DIM) -> Any:
    from shard import _vsnative

    index = _vsnative.Index(space, dim)
    index.init_index(max_elements=capacity, M=12, ef_construction=80, random_seed=7)
    index.set_ef(1)
    return index


def _rows(seed: int, n: int, dim: int = DIM) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _recall(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth, strict=True)]))


class Readers:
    """``count`` threads searching ``search()`` in a loop until stopped; the first error is kept."""

    def __init__(self, search: Any, count: int = 2) -> None:
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.rounds = 0
        self._threads = [threading.Thread(target=self._run, args=(search,)) for _ in range(count)]

    def _run(self, search: Any) -> None:
        while not self.stop.is_set():
            try:
                search()
                self.rounds += 1
            except BaseException as exc:
                self.errors.append(exc)
                return

    def __enter__(self) -> Readers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        if self.errors:
            raise self.errors[0]


@pytest.mark.parametrize("space", ["l2", "cosine"])
def test_searches_beside_add_items_return_only_limited_labels_with_recall(space: str) -> None:
    base, extra = _rows(1, BASE), _rows(2, EXTRA)
    queries = _rows(3, 64)
    index = _index(space, BASE + EXTRA)
    index.add_items(base, np.arange(BASE), num_threads=2)
    truth = exact_top_k(base, queries, K, space)
    recalls: list[float] = []
    mask = np.zeros(BASE, dtype=np.bool_)
    mask[::3] = True
    masked_truth = np.flatnonzero(mask)[exact_top_k(base[mask], queries, K, space)]

    def search() -> None:
        labels, _ = index.knn_query(queries, k=64, num_threads=1, limit=BASE)
        labels = labels.astype(np.int64)
        assert labels.max() < BASE
        recalls.append(_recall(labels[:, :K], truth))
        for strategy in ("sweep", "acorn"):
            found, dist = index.knn_query(queries, k=64, allowed=mask, strategy=strategy)
            assert (found >= 0).all() and mask[found].all()
            assert np.all(np.diff(dist, axis=1) >= 0)
            assert _recall(found[:, :K], masked_truth) >= 0.8
        best, _ = index.exact_query(queries, np.arange(BASE), k=K)
        np.testing.assert_array_equal(np.sort(best, axis=1), np.sort(truth, axis=1))

    from shard import _vsnative

    _vsnative._live_searches()
    with Readers(search) as readers:
        for lo in range(0, EXTRA, 250):
            index.add_items(extra[lo : lo + 250], np.arange(BASE + lo, BASE + min(EXTRA, lo + 250)), num_threads=2)
    assert readers.rounds >= 2
    assert _vsnative._live_searches() > 0  # some searches ran beside an insertion
    assert min(recalls) >= 0.9
    # every item is in the graph once the writer is done, found by an unlimited search
    every = np.concatenate([base, extra])
    labels, _ = index.knn_query(queries, k=64)
    assert _recall(labels.astype(np.int64)[:, :K], exact_top_k(every, queries, K, space)) >= 0.9
    self_hits, _ = index.knn_query(extra[:200], k=32)  # ef is 1: ask for 32
    assert np.mean(self_hits[:, 0] == np.arange(BASE, BASE + 200)) >= 0.97


def test_limit_hides_labels_at_or_past_it_without_an_add_running() -> None:
    rows = _rows(4, 2000)
    index = _index("l2", 2000)
    index.add_items(rows, np.arange(2000), num_threads=2)
    labels, _ = index.knn_query(rows[1500:1600], k=5, limit=1000)
    assert labels.max() < 1000
    found, _ = index.knn_query(rows[1500:1600], k=5, allowed=np.ones(2000, dtype=np.bool_), limit=1000)
    assert found.max() < 1000
    labels, _ = index.knn_query(rows[1500:1600], k=32)
    assert np.mean(labels[:, 0] == np.arange(1500, 1600)) >= 0.97


@pytest.mark.parametrize("dim", [DIM, 384], ids=["small-block", "mapped-block"])
def test_resize_and_mark_deleted_beside_searches(dim: int) -> None:
    """At 384-d the level-0 block passes 4 MB while it grows: it moves to a mapping of our own
    (huge pages), then grows with mremap, its pages moved and not copied."""
    rows = _rows(5, 4000, dim)
    queries = _rows(6, 32, dim)
    index = _index("ip", 1000, dim)
    index.add_items(rows[:1000], np.arange(1000), num_threads=2)
    truth = exact_top_k(rows[:1000], queries, K, "ip")

    def search() -> None:
        labels, _ = index.knn_query(queries, k=64, limit=1000)
        assert labels.max() < 1000
        assert _recall(labels.astype(np.int64)[:, :K], truth) >= 0.5  # some of the nearest get deleted below
        index.gather(np.arange(500, 1000))

    with Readers(search):
        for size in range(1500, 4001, 500):
            index.resize_index(size)
            index.add_items(rows[size - 500 : size], np.arange(size - 500, size), num_threads=2)
        for label in range(0, 500, 5):
            index.mark_deleted(label)
    assert index.max_elements == 4000 and index.element_count == 4000
    labels, _ = index.knn_query(queries, k=K)
    assert not np.isin(labels, np.arange(0, 500, 5)).any()


def test_save_waits_for_add_items_and_holds_whole_insertions(tmp_path: Path) -> None:
    rows = _rows(8, 6000)
    index = _index("l2", 6000)
    index.add_items(rows[:1000], np.arange(1000), num_threads=2)
    writer = threading.Thread(
        target=index.add_items, args=(rows[1000:], np.arange(1000, 6000)), kwargs={"num_threads": 2}
    )
    writer.start()
    path = tmp_path / "g.bin"
    index.save_index(str(path))
    writer.join()
    from shard import _vsnative

    loaded = _vsnative.Index("l2", DIM)
    loaded.load_index(str(path))
    assert loaded.element_count in (1000, 6000)
    labels, _ = loaded.knn_query(rows[:100], k=32)
    assert np.mean(labels[:, 0] == np.arange(100)) >= 0.97
