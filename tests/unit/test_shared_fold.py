"""Folds that add to the published graph's own native index (shard/graph.py ``shares_index``):
searches beside them, superseded labels hidden then marked deleted, snapshots and recovery, and a
fold that fails part way."""

from __future__ import annotations

import gc
import threading
import weakref
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.spec import Metric, make_spec
from shard import collection as collection_module
from shard import hnsw
from shard.collection import Collection, CollectionOptions
from shard.delta import Delta
from testkit.datasets import clustered
from testkit.truth import exact_top_k

pytestmark = pytest.mark.skipif(not hnsw.NATIVE, reason="needs shard._vsnative (shared folds are native only)")

OPTS = CollectionOptions(
    compact_delta_items=10**9, compact_age_s=10**9, build_threads=2, search_threads=1, checkpoint_rows=10**9
)
DIM = 16


def make(tmp_path: Path, options: CollectionOptions = OPTS) -> Collection:
    return Collection.create(tmp_path / "c", make_spec("c", DIM, Metric.L2.value), options)


def check_state(col: Collection, state: dict[str, np.ndarray], queries: np.ndarray) -> None:
    """Every item of ``state`` readable with its vector, nothing else, and searches that agree
    with brute force over ``state``."""
    ids = sorted(state)
    found, vectors, missing = col.get(ids)
    assert missing == [] and found == ids
    np.testing.assert_array_equal(vectors, np.stack([state[i] for i in ids]))
    assert col.stats().count == len(ids)
    rows = np.stack([state[i] for i in ids])
    truth = exact_top_k(rows, queries, 10, "l2")
    hits = col.search(queries, 10, ef=128)
    assert all("" not in h.ids and len(set(h.ids)) == len(h.ids) for h in hits)
    recall = np.mean([len(set(h.ids) & {ids[j] for j in t}) / 10 for h, t in zip(hits, truth, strict=True)])
    assert recall >= 0.95


@pytest.mark.parametrize("step_rows", [0, 100], ids=["one-publish", "steps"])
def test_searches_beside_shared_folds_stay_correct_and_superseded_labels_get_marked(
    tmp_path: Path, step_rows: int
) -> None:
    options = replace(OPTS, fold_step_rows=step_rows)
    col = make(tmp_path, options)
    rng = np.random.default_rng(5)
    data = clustered(6000, DIM, seed=31)
    state = {f"a{i}": data[i] for i in range(2000)}
    col.upsert(list(state), np.stack(list(state.values())))
    col.compact()
    stable = [f"a{i}" for i in range(1000, 2000)]  # never rewritten: each must find itself
    errors: list[str] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        local = np.random.default_rng(seed)
        while not stop.is_set():
            i = int(local.integers(1000, 2000))
            hits = col.search(data[i][None, :], 5)[0]
            if hits.ids[:1] != [f"a{i}"]:
                errors.append(f"a{i} -> {hits.ids}")
            if len(set(hits.ids)) != len(hits.ids) or "" in hits.ids:
                errors.append(f"bad ids {hits.ids}")
            if not np.all(np.diff(hits.distances) >= 0):
                errors.append(f"unsorted {hits.distances}")
            found, _, _ = col.get(stable[i % 7 :: 97])
            if len(found) != len(stable[i % 7 :: 97]):
                errors.append("a stable item went missing")

    from shard import _vsnative

    _vsnative._live_searches()
    readers = [threading.Thread(target=reader, args=(seed,)) for seed in (1, 2)]
    for thread in readers:
        thread.start()
    try:
        nxt = 2000
        for _ in range(6):
            new = [f"a{i}" for i in range(nxt, nxt + 500)]
            col.upsert(new, data[nxt : nxt + 500])
            state.update(zip(new, data[nxt : nxt + 500], strict=True))
            nxt += 500
            rewrite = [f"a{int(i)}" for i in rng.choice(1000, 60, replace=False)]
            vectors = rng.standard_normal((len(rewrite), DIM)).astype(np.float32)
            col.upsert(rewrite, vectors)
            state.update(zip(rewrite, vectors, strict=True))
            gone = [item for item in rng.choice(sorted(set(state) - set(stable)), 20, replace=False)]
            col.delete(gone)
            for item in gone:
                state.pop(item)
            col.compact(background=True)  # shares the index: folds while the readers search
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert errors == []
    assert _vsnative._live_searches() > 0  # some searches ran while a fold added to their index
    graph = col._view.graph
    assert graph is not None
    shared_index = graph.index
    assert graph.elements == shared_index.element_count  # one index all along (no rebuild)
    col.upsert(["late"], data[5999][None, :])
    state["late"] = data[5999]
    col.compact(background=True)  # the readers are gone: what earlier folds superseded is marked
    latest = col._view.graph
    assert latest is not None and latest.index is shared_index
    assert latest.deleted > 6 * 60  # every rewrite superseded a label
    assert hnsw.deleted_count(shared_index) == latest.deleted  # and each is marked in the index now
    queries = clustered(40, DIM, seed=99)
    check_state(col, state, queries)
    col.close()
    col = Collection.open(tmp_path / "c", options)  # the log replayed onto the older snapshot
    check_state(col, state, queries)
    col.compact()  # a snapshot written from the shared index, then loaded back
    col.close()
    col = Collection.open(tmp_path / "c", options)
    check_state(col, state, queries)
    assert col.stats().delta_size == 0
    col.close()


def test_a_snapshot_with_unmarked_superseded_labels_loads_them_deleted(tmp_path: Path) -> None:
    col = make(tmp_path)
    data = clustered(400, DIM, seed=32)
    col.upsert([f"a{i}" for i in range(300)], data[:300])
    col.compact()
    held = col._view.graph  # an older graph still held: superseded labels stay unmarked
    col.upsert([f"a{i}" for i in range(50)], data[300:350])
    col.compact()
    assert held is not None and held.index is col._view.graph.index  # type: ignore[union-attr]
    assert hnsw.deleted_count(held.index) == 0
    state = {f"a{i}": data[i] for i in range(50, 300)} | {f"a{i}": data[300 + i] for i in range(50)}
    queries = np.concatenate([clustered(20, DIM, seed=98), data[:50]])  # the superseded vectors too
    check_state(col, state, queries)
    col.upsert([f"b{i}" for i in range(50)], data[350:400])  # a later fold keeps them hidden
    state |= {f"b{i}": data[350 + i] for i in range(50)}
    col.compact()
    assert hnsw.deleted_count(held.index) == 0
    check_state(col, state, queries)
    col.close()
    col = Collection.open(tmp_path / "c", OPTS)
    graph = col._view.graph
    assert graph is not None and hnsw.deleted_count(graph.index) == 50
    check_state(col, state, queries)
    del held
    col.close()


def fail_after(monkeypatch: pytest.MonkeyPatch, name: str, calls: int) -> None:
    """``collection_module.<name>`` raises MemoryError from its ``calls + 1``-th call on."""
    real = getattr(collection_module, name)
    count = [0]

    def failing(*args: Any) -> Any:
        count[0] += 1
        if count[0] > calls:
            raise MemoryError("injected")
        return real(*args)

    monkeypatch.setattr(collection_module, name, failing)


def test_a_shared_fold_that_fails_part_way_is_rebuilt_by_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = replace(OPTS, fold_step_rows=0)
    col = make(tmp_path, options)
    data = clustered(3000, DIM, seed=33)
    col.upsert([f"a{i}" for i in range(1000)], data[:1000])
    col.compact()
    col.upsert([f"a{i}" for i in range(1000, 3000)], data[1000:])
    fail_after(monkeypatch, "decode_batch", 0)  # the rows are in the index, not in a graph
    with pytest.raises(MemoryError):
        col.compact()
    graph = col._view.graph
    assert graph is not None and graph.index.element_count > graph.elements == 1000
    state = {f"a{i}": data[i] for i in range(3000)}
    queries = clustered(30, DIM, seed=97)
    check_state(col, state, queries)  # the extra elements are never returned
    monkeypatch.undo()
    assert col.compact().rebuilt  # a fresh index: the snapshot holds only whole graphs
    check_state(col, state, queries)
    col.close()
    col = Collection.open(tmp_path / "c", options)
    check_state(col, state, queries)
    col.close()


STEPPED = replace(OPTS, fold_step_rows=200)


def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Deltas of 256-row blocks, so a step's tail releases whole blocks in a small test."""
    monkeypatch.setattr(Collection, "_new_delta", lambda self: Delta(self.spec.dimension, block_rows=256))


def test_a_stepped_fold_publishes_graphs_that_show_every_item_once_and_frees_folded_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small_blocks(monkeypatch)
    col = make(tmp_path, STEPPED)
    data = clustered(4000, DIM, seed=34)
    state = {f"a{i}": data[i] for i in range(1000)}
    col.upsert(list(state), data[:1000])
    col.compact()
    new = {f"b{i}": data[1000 + i] for i in range(1500)}
    rewrites = {f"a{i}": data[2500 + i] for i in range(100)}  # with the deletes, under the rebuild ratio
    col.upsert(list(new), np.stack(list(new.values())))
    col.upsert(list(rewrites), np.stack(list(rewrites.values())))
    col.delete([f"a{i}" for i in range(300, 320)])
    state |= new | rewrites
    for i in range(300, 320):
        state.pop(f"a{i}")
    first_block = weakref.ref(col._view.active._blocks[0][0])  # type: ignore[index]
    queries = clustered(30, DIM, seed=95)
    real_step = col._publish_step
    steps: list[tuple[int, int]] = []
    spare = iter(range(2800, 4000))

    def checked_step(folded: Any, first: int, folded_count: int) -> None:
        waiting = len(col._view.sealed or [])
        real_step(folded, first, folded_count)
        view = col._view
        assert view.graph is not None and view.graph is folded.graph
        assert view.sealed is not None and view.sealed.first == first
        assert 0 < len(view.sealed) < waiting  # the stats' delta size: ids not in a graph yet
        steps.append((view.graph.elements, first))
        check_state(col, state, queries)
        if first >= 256:  # the first block holds only folded rows: no view holds it now
            gc.collect()
            assert first_block() is None
        # writes between steps: an item this fold already added, one it has not, a delete of each
        sealed = view.sealed
        folded_ids = [i for i, r in sealed.index.items() if 0 <= r < first and i in state][:2]
        pending = [i for i, r in sealed.index.items() if r >= first and i in state][:2]
        for item in folded_ids[:1] + pending[:1]:
            row = next(spare)
            col.upsert([item], data[row][None, :])
            state[item] = data[row]
        gone = folded_ids[1:] + pending[1:]
        col.delete(gone)
        for item in gone:
            state.pop(item)
        check_state(col, state, queries)

    monkeypatch.setattr(col, "_publish_step", checked_step)
    assert not col.compact().rebuilt
    assert len(steps) >= 5 and [e for e, _ in steps] == sorted(e for e, _ in steps)
    assert col._view.sealed is None
    check_state(col, state, queries)
    col.compact()  # the writes made between steps
    check_state(col, state, queries)
    col.close()
    col = Collection.open(tmp_path / "c", STEPPED)
    check_state(col, state, queries)
    col.close()


@pytest.mark.parametrize("where", ["after-a-step", "inside-a-step"])
def test_a_stepped_fold_that_fails_resumes_from_its_last_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    small_blocks(monkeypatch)
    col = make(tmp_path, STEPPED)
    data = clustered(3000, DIM, seed=35)
    col.upsert([f"a{i}" for i in range(1000)], data[:1000])
    col.compact()
    col.upsert([f"a{i}" for i in range(1000, 2500)], data[1000:2500])
    col.upsert([f"a{i}" for i in range(100)], data[2500:2600])  # rewrites: superseded labels
    state = {f"a{i}": data[i] for i in range(2500)} | {f"a{i}": data[2500 + i] for i in range(100)}
    queries = clustered(30, DIM, seed=96)
    # 200-row steps in 256-row blocks: _live_rows reads rows 0-200 (a step), 200-256, 256-456
    # (a step), 456-512, ...
    if where == "after-a-step":
        fail_after(monkeypatch, "_live_rows", 3)  # right after the second step's publish
    else:
        fail_after(monkeypatch, "decode_batch", 5)  # rows added to the index, not yet in a graph
    with pytest.raises(MemoryError):
        col.compact()
    view = col._view
    assert view.graph is not None and view.sealed is not None and view.sealed.first > 0
    dirty = view.graph.index.element_count > view.graph.elements
    assert dirty == (where == "inside-a-step")
    check_state(col, state, queries)
    monkeypatch.undo()
    small_blocks(monkeypatch)
    result = col.compact()
    assert result.rebuilt == dirty  # a dirty index is rebuilt; a clean one is added to from the step on
    assert col._view.sealed is None
    check_state(col, state, queries)
    graph = col._view.graph
    assert graph is not None and graph.live == len(state)
    col.close()
    col = Collection.open(tmp_path / "c", STEPPED)
    check_state(col, state, queries)
    col.close()


def test_a_reader_whose_seq_predates_the_seal_still_sees_every_item_during_a_stepped_fold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader reads the applied seq, stalls, and reads the layers after a step was published:
    the step's graph hides the rewritten ids' old labels and their new rows are still in the
    tail, newer than the reader's seq. It must read at the fold's seal seq (the view's floor)."""
    small_blocks(monkeypatch)
    col = make(tmp_path, STEPPED)
    data = clustered(2000, DIM, seed=36)
    col.upsert([f"a{i}" for i in range(1000)], data[:1000])
    col.compact()
    col.upsert([f"b{i}" for i in range(900)], data[1000:1900])
    stalled = col._applied_seq  # a reader takes its seq here, then stalls
    col.upsert([f"a{i}" for i in range(50)], data[1900:1950])  # rows 900-949 of the sealed delta
    expected = {f"a{i}" for i in range(1000)} | {f"b{i}" for i in range(900)}
    real_step = col._publish_step
    seen: list[int] = []

    def stalled_reader(folded: Any, first: int, folded_ids: int) -> None:
        real_step(folded, first, folded_ids)
        current = col._applied_seq
        col._applied_seq = stalled  # ... and reads the layers now
        try:
            scanned = list(col.scan())
            hits = col.search(np.zeros((1, DIM), np.float32), len(expected) + 10)[0].ids
        finally:
            col._applied_seq = current
        ids = [item for batch in scanned for item in batch.ids]
        assert sorted(ids) == sorted(expected) and sorted(hits) == sorted(expected)
        assert all(batch.applied_seq == current for batch in scanned)  # the seq it really read at (the seal)
        seen.append(first)

    monkeypatch.setattr(col, "_publish_step", stalled_reader)
    col.compact()
    assert len(seen) >= 3
    col.close()
