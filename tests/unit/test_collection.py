"""Collection semantics in-process: layers, compaction, rebuild, recovery and snapshots."""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import CorruptionError, InvalidArgument
from core.items import ItemMeta
from core.spec import Metric, make_spec
from core.vectors import prepare_batch
from shard import hnsw, snapshot
from shard.collection import Collection, CollectionOptions
from testkit.datasets import Matrix, clustered
from testkit.truth import exact_top_k
from vsproto import payload

OPTS = CollectionOptions(compact_delta_items=10**9, compact_age_s=10**9, build_threads=2, search_threads=2)


def make(tmp_path: Path, metric: Metric = Metric.L2, dim: int = 8, options: CollectionOptions = OPTS) -> Collection:
    return Collection.create(tmp_path / "c", make_spec("c", dim, metric.value), options)


def reopen(col: Collection, options: CollectionOptions = OPTS) -> Collection:
    col.close()
    return Collection.open(col.directory, options)


def ids_of(col: Collection, query: Matrix, k: int) -> list[str]:
    return col.search(query[None, :], k)[0].ids


def test_search_merges_graph_and_delta_and_hides_superseded(tmp_path: Path) -> None:
    col = make(tmp_path)
    data = clustered(300, 8, seed=1)
    col.upsert([f"a{i}" for i in range(200)], data[:200])
    col.compact()
    col.upsert([f"a{i}" for i in range(200, 300)], data[200:])
    # move a0 (in the graph) far away; its old position must not be returned
    far = np.full(8, 100.0, dtype=np.float32)
    col.upsert(["a0"], far[None, :])
    hits = col.search(data[0][None, :], 5)[0]
    assert "a0" not in hits.ids
    assert ids_of(col, far, 1) == ["a0"]
    # delete one from each layer
    col.delete(["a1", "a250"])
    assert "a1" not in ids_of(col, data[1], 10)
    assert "a250" not in ids_of(col, data[250], 10)
    found, vectors, missing = col.get(["a0", "a1", "a2", "a250", "zz"])
    assert found == ["a0", "a2"] and missing == ["a1", "a250", "zz"]
    np.testing.assert_array_equal(vectors[0], far)
    np.testing.assert_array_equal(vectors[1], data[2])
    assert col.stats().count == 298
    col.close()


def test_results_are_exact_top_k_with_many_shadowed_labels(tmp_path: Path) -> None:
    col = make(tmp_path)
    data = clustered(1000, 8, seed=2)
    ids = [f"x{i}" for i in range(1000)]
    col.upsert(ids, data)
    col.compact()
    # re-upsert 400 graph items with new vectors: the graph over-fetch must skip all of them
    rng = np.random.default_rng(0)
    moved = rng.choice(1000, 400, replace=False)
    new = data.copy()
    new[moved] = clustered(400, 8, seed=3)
    col.upsert([ids[i] for i in moved], new[moved])
    queries = clustered(30, 8, seed=4)
    truth = exact_top_k(new, queries, 10, "l2")
    hits = col.search(queries, 10)
    recall = np.mean([len({ids[j] for j in truth[q]} & set(hits[q].ids)) / 10 for q in range(30)])
    assert recall >= 0.95
    for h in hits:
        assert len(set(h.ids)) == len(h.ids) == 10
        assert list(h.distances) == sorted(h.distances)
    col.close()


def test_compaction_rebuilds_past_tombstone_threshold(tmp_path: Path) -> None:
    col = make(tmp_path)
    data = clustered(500, 8, seed=5)
    col.upsert([f"d{i}" for i in range(500)], data)
    col.compact()
    col.delete([f"d{i}" for i in range(200)])
    result = col.compact()
    assert result.rebuilt
    stats = col.stats()
    assert stats.graph_elements == 300 and stats.deleted == 0 and stats.count == 300
    for i in (0, 199):
        assert f"d{i}" not in ids_of(col, data[i], 10)
    assert ids_of(col, data[300], 1) == ["d300"]
    col.close()


def test_recovery_replays_log_after_snapshot(tmp_path: Path) -> None:
    col = make(tmp_path, Metric.COSINE)
    data = clustered(400, 8, seed=6)
    col.upsert([f"r{i}" for i in range(300)], data[:300])
    col.compact()
    col.upsert([f"r{i}" for i in range(300, 400)], data[300:])
    col.delete(["r5", "r305"])
    before = col.search(data[:20], 5)
    col = reopen(col)
    after = col.search(data[:20], 5)
    assert [h.ids for h in before] == [h.ids for h in after]
    assert col.stats().count == 398
    _found, vectors, _ = col.get(["r7"])
    np.testing.assert_allclose(vectors[0], data[7] / np.linalg.norm(data[7]), rtol=1e-6)
    col.close()


def corrupt_file(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_newest_snapshot_falls_back_to_older_plus_log(tmp_path: Path) -> None:
    col = make(tmp_path)
    data = clustered(300, 8, seed=7)
    col.upsert([f"s{i}" for i in range(100)], data[:100])
    col.compact()
    col.upsert([f"s{i}" for i in range(100, 200)], data[100:200])
    col.compact()
    col.upsert([f"s{i}" for i in range(200, 300)], data[200:])
    col.compact()
    col.close()
    snaps = sorted((col.directory / "snapshots").glob("snap-*"))
    assert len(snaps) == 2
    corrupt_file(snaps[-1] / "graph.hnsw")
    col = Collection.open(col.directory, OPTS)
    assert col.stats().count == 300
    assert col.stats().snapshot_seq < 3
    for i in (0, 150, 299):
        assert ids_of(col, data[i], 1) == [f"s{i}"]
    col.close()


def test_corrupt_only_snapshot_without_log_refuses_to_start(tmp_path: Path) -> None:
    options = CollectionOptions(compact_delta_items=10**9, compact_age_s=10**9, snapshots_kept=1)
    col = make(tmp_path, options=options)
    data = clustered(100, 8, seed=8)
    col.upsert([f"s{i}" for i in range(100)], data)
    col.compact()
    col.upsert(["later"], data[:1])
    col.close()
    (snap,) = (col.directory / "snapshots").glob("snap-*")
    corrupt_file(snap / "ids.bin")
    with pytest.raises(CorruptionError, match="Refusing to start"):
        Collection.open(col.directory, options)


def test_manifest_tampering_is_detected(tmp_path: Path) -> None:
    col = make(tmp_path)
    data = clustered(50, 8, seed=9)
    col.upsert([f"m{i}" for i in range(50)], data)
    col.compact()
    col.close()
    (snap,) = (col.directory / "snapshots").glob("snap-*")
    manifest = snap / "MANIFEST.json"
    manifest.write_text(manifest.read_text().replace('"live": 50', '"live": 51'))
    col = Collection.open(col.directory, OPTS)  # whole log is still there: replays from seq 1
    assert col.stats().snapshot_seq == 0 and col.stats().count == 50
    col.close()


def test_reads_during_compaction_stay_correct(tmp_path: Path) -> None:
    col = make(tmp_path, dim=16)
    data = clustered(4000, 16, seed=10)
    ids = [f"c{i}" for i in range(4000)]
    col.upsert(ids[:2000], data[:2000])
    col.compact()
    col.upsert(ids[2000:], data[2000:])
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        rng = np.random.default_rng(1)
        while not stop.is_set():
            i = int(rng.integers(0, 4000))
            hits = col.search(data[i][None, :], 3)[0]
            if hits.ids[:1] != [ids[i]]:
                errors.append(f"{ids[i]} -> {hits.ids}")
            if len(set(hits.ids)) != len(hits.ids):
                errors.append(f"duplicate ids {hits.ids}")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        col.compact()
        col.upsert(ids[:100], data[:100])  # superseding graph items while readers run
        col.compact()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    col.close()


def test_allow_list_exact_and_filtered_paths(tmp_path: Path) -> None:
    options = CollectionOptions(compact_delta_items=10**9, compact_age_s=10**9, exact_allow_max=50)
    col = make(tmp_path, options=options)
    data = clustered(1000, 8, seed=11)
    ids = [f"f{i}" for i in range(1000)]
    col.upsert(ids, data)
    col.compact()
    col.upsert(["f3"], data[4][None, :])  # delta version of an allowed item
    current = data.copy()
    current[3] = data[4]
    for allowed_idx in (np.arange(0, 1000, 50), np.arange(0, 1000, 3)):  # 20 (exact), 334 (filtered)
        allowed = [ids[i] for i in allowed_idx]
        truth = exact_top_k(current[allowed_idx], data[:10], 5, "l2")
        hits = col.search(data[:10], 5, allow_ids=allowed)
        for q in range(10):
            assert set(hits[q].ids) <= set(allowed)
            expected = {allowed[j] for j in truth[q]}
            assert len(expected & set(hits[q].ids)) >= 4
    col.close()


def test_bad_input_is_rejected_without_changes(tmp_path: Path) -> None:
    col = make(tmp_path, Metric.COSINE)
    with pytest.raises(InvalidArgument, match="zero vector"):
        col.upsert(["z"], np.zeros((1, 8), dtype=np.float32))
    with pytest.raises(InvalidArgument, match="empty"):
        col.upsert([], np.zeros((0, 8), dtype=np.float32))
    with pytest.raises(InvalidArgument, match="ids but"):
        col.upsert(["a", "b"], np.ones((1, 8), dtype=np.float32))
    with pytest.raises(InvalidArgument, match="bytes"):
        col.upsert(["x" * 257], np.ones((1, 8), dtype=np.float32))
    with pytest.raises(InvalidArgument, match="k must be"):
        col.search(np.ones((1, 8), dtype=np.float32), 0)
    assert col.stats().last_applied_seq == 0
    col.close()


def test_duplicate_ids_in_a_batch_last_wins(tmp_path: Path) -> None:
    col = make(tmp_path)
    v = np.arange(24, dtype=np.float32).reshape(3, 8)
    _seq, count = col.upsert(["a", "b", "a"], v)
    assert count == 2
    _, vectors, _ = col.get(["a", "b"])
    np.testing.assert_array_equal(vectors[0], v[2])
    np.testing.assert_array_equal(vectors[1], v[1])
    col.close()


def test_delta_spanning_many_blocks_searches_and_folds_correctly(tmp_path: Path) -> None:
    """Small blocks force multi-block search (incl. the l2 re-rank gather) and fold paths."""
    from shard import delta as delta_mod

    col = make(tmp_path)
    col._view = col._view._replace(active=delta_mod.Delta(8, block_rows=7))
    data = clustered(300, 8, seed=12)
    ids = [f"b{i}" for i in range(300)]
    col.upsert(ids[:150], data[:150])
    col.upsert(ids[:20], data[150:170])  # supersede rows in early blocks
    current = data[:150].copy()
    current[:20] = data[150:170]
    col.delete(ids[140:150])
    live = list(range(140))
    truth = exact_top_k(current[live], data[200:230], 5, "l2")
    hits = col.search(data[200:230], 5)
    for q in range(30):
        assert hits[q].ids == [ids[live[j]] for j in truth[q]]
    col.compact()
    assert col.stats().graph_elements == 140 and col.stats().delta_size == 0
    hits = col.search(data[200:230], 5)
    recall = np.mean([len(set(hits[q].ids) & {ids[live[j]] for j in truth[q]}) / 5 for q in range(30)])
    assert recall >= 0.95
    col.close()


def test_graph_vectors_come_from_the_mapped_snapshot_and_match_hnswlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hnsw, "can_gather", lambda index: False)  # as with hnswlib's own index
    col = make(tmp_path, dim=16)
    data = clustered(2000, 16, seed=13)
    ids = [f"g{i}" for i in range(2000)]
    col.upsert(ids, data)
    col.compact()
    col.upsert(ids[:50], data[1000:1050])  # re-upserts: old labels marked deleted in the fold
    col.delete(ids[50:60])
    col.compact()
    graph = col._view.graph
    assert graph is not None and graph._file_rows is not None
    labels = graph.ids.live_labels()
    expected = np.asarray(graph.index.get_items(labels.astype(np.uint64)), dtype=np.float32)
    np.testing.assert_array_equal(graph.vectors(labels), expected)
    col = reopen(col)  # loaded from the snapshot: mapped again
    graph = col._view.graph
    assert graph is not None and graph._file_rows is not None
    _, vectors, _ = col.get(["g0", "g100"])
    np.testing.assert_array_equal(vectors, np.stack([data[1000], data[100]]))
    col.close()


def payload_of(col: Collection, item: str) -> bytes:
    fetched = col.fetch([item])
    assert fetched.ids == [item]
    return fetched.payloads[0]


def meta(uri: str) -> bytes:
    return payload.encode(ItemMeta(uri=uri, tags=["t"]))


def test_payloads_travel_with_their_vectors_through_compaction_and_recovery(tmp_path: Path) -> None:
    col = make(tmp_path)
    data = clustered(600, 8, seed=11)
    ids = [f"p{i}" for i in range(600)]
    expected: dict[str, bytes] = {}

    def write(rows: range, tag: str) -> None:
        payloads = [b"" if i % 7 == 0 else meta(tag + str(i)) for i in rows]
        col.upsert_batch(prepare_batch([ids[i] for i in rows], data[list(rows)], col.spec, payloads=payloads))
        expected.update(zip((ids[i] for i in rows), payloads, strict=True))

    def scanned() -> dict[str, bytes]:
        assert col.stats().legacy_items == sum(1 for p in expected.values() if not p)  # no payload: no fields
        return {i: p for b in col.scan() for i, p in zip(b.ids, b.payloads, strict=True)}

    write(range(0, 300), "first-")
    col.upsert(["bare"], data[:1])  # a write without payloads
    expected["bare"] = b""
    assert col.stats().legacy_items == 43 + 1  # rows 0, 7, ..., 294 and "bare"
    assert payload_of(col, "p1") == meta("first-1") and payload_of(col, "p7") == b"" and payload_of(col, "bare") == b""
    col.compact()  # the first graph
    assert payload_of(col, "p2") == meta("first-2") and scanned() == expected
    write(range(290, 400), "second-")  # replaces a few graph items, adds new ones
    assert payload_of(col, "p295") == meta("second-295") and payload_of(col, "p50") == meta("first-50")
    assert not col.compact().rebuilt  # the incremental fold: replaced labels drop their payload
    assert payload_of(col, "p295") == meta("second-295") and payload_of(col, "p351") == meta("second-351")
    assert scanned() == expected
    col.delete([f"p{i}" for i in range(0, 200)])  # past the tombstone ratio: the next fold rebuilds
    for i in range(0, 200):
        expected.pop(f"p{i}")
    write(range(400, 450), "third-")
    assert col.compact().rebuilt  # payloads carried from the old graph into the rebuilt one
    assert scanned() == expected
    write(range(450, 480), "fourth-")  # only in the log after the last snapshot
    col = reopen(col)  # snapshot (with payloads.bin) + log replay
    assert scanned() == expected
    assert payload_of(col, "p460") == meta("fourth-460") and payload_of(col, "p250") == meta("first-250")
    np.testing.assert_array_equal(col.fetch(["p420", "p220"]).vectors, data[[420, 220]])
    col.close()


def test_duplicate_ids_keep_the_payload_of_their_last_occurrence(tmp_path: Path) -> None:
    col = make(tmp_path)
    data = clustered(3, 8, seed=12)
    batch = prepare_batch(["a", "b", "a"], data, col.spec, payloads=[meta("a-first"), meta("b"), meta("a-last")])
    assert batch.ids == ["b", "a"] and batch.payloads == [meta("b"), meta("a-last")]
    col.upsert_batch(batch)
    fetched = col.fetch(["a", "b"])
    assert fetched.payloads == [meta("a-last"), meta("b")]
    np.testing.assert_array_equal(fetched.vectors[0], data[2])
    with pytest.raises(InvalidArgument, match="payloads"):
        prepare_batch(["a", "b"], data[:2], col.spec, payloads=[b"x"])
    col.close()


def test_an_unreadable_payload_is_refused_before_anything_is_logged(tmp_path: Path) -> None:
    col = make(tmp_path)
    data = clustered(3, 8, seed=13)
    col.upsert_batch(prepare_batch(["a"], data[:1], col.spec, payloads=[meta("a")]))
    before = col.stats().last_applied_seq
    for bad in (b"\x09future-version", b"\x01\xff\xff", b"opaque"):
        with pytest.raises(InvalidArgument, match="payload"):
            col.upsert_batch(prepare_batch(["b", "c"], data[1:], col.spec, payloads=[meta("b"), bad]))
    assert col.stats().last_applied_seq == before and col.fetch(["b", "c"]).missing == ["b", "c"]
    col = reopen(col)
    assert col.stats().last_applied_seq == before and col.stats().count == 1
    col.close()


def test_versions_are_the_seq_of_the_writing_record_through_folds_and_recovery(tmp_path: Path) -> None:
    from shard import snapshot

    col = make(tmp_path)
    data = clustered(500, 8, seed=12)
    ids = [f"v{i}" for i in range(500)]
    expected: dict[str, int] = {}

    def write(rows: range) -> None:
        seq, _ = col.upsert([ids[i] for i in rows], data[list(rows)])
        expected.update((ids[i], seq) for i in rows)

    def versions_of(items: list[str]) -> list[int]:
        fetched = col.fetch(items)
        assert fetched.ids == items
        return fetched.versions

    def scanned() -> dict[str, int]:
        return {i: v for b in col.scan(batch_size=64) for i, v in zip(b.ids, b.versions, strict=True)}

    write(range(0, 250))
    write(range(200, 300))  # rewrites 200..249 in the same delta
    assert versions_of(["v1", "v220", "v299"]) == [expected["v1"], expected["v220"], expected["v299"]]
    assert expected["v220"] > expected["v1"] and scanned() == expected
    col.compact()  # the first graph
    assert scanned() == expected
    write(range(280, 320))  # replaces graph items: the incremental fold keeps the new versions
    assert not col.compact().rebuilt
    assert scanned() == expected and versions_of(["v285", "v5"]) == [expected["v285"], expected["v5"]]
    col.delete([f"v{i}" for i in range(0, 200)])
    for i in range(0, 200):
        expected.pop(f"v{i}")
    write(range(400, 420))
    assert col.compact().rebuilt  # versions carried from the old graph into the rebuilt one
    assert scanned() == expected
    write(range(420, 430))  # only in the log after the last snapshot
    col = reopen(col)  # snapshot (with versions.bin) + log replay: the same versions
    assert scanned() == expected
    assert versions_of(["v425", "v250"]) == [expected["v425"], expected["v250"]]
    col.close()

    # A snapshot written before versions existed has no versions.bin: its items read as 0.
    newest = snapshot.list_snapshots(col.directory / "snapshots")[0]
    manifest = json.loads((newest.path / snapshot.MANIFEST).read_text())
    manifest.pop("checksum")
    del manifest["files"][snapshot.VERSIONS_FILE]
    (newest.path / snapshot.VERSIONS_FILE).unlink()
    manifest["checksum"] = snapshot._manifest_checksum(manifest)
    (newest.path / snapshot.MANIFEST).write_text(json.dumps(manifest))
    col = Collection.open(col.directory, OPTS)
    assert versions_of(["v250", "v425"]) == [0, expected["v425"]]  # graph item unknown, logged one known
    col.close()


@pytest.mark.skipif(not hnsw.NATIVE, reason="needs shard._vsnative")
def test_a_native_graph_copies_rows_from_its_index_and_keeps_no_snapshot_reader(tmp_path: Path) -> None:
    col = make(tmp_path, dim=16)
    data = clustered(500, 16, seed=14)
    col.upsert([f"n{i}" for i in range(500)], data)
    col.compact()
    col = reopen(col)
    graph = col._view.graph
    assert graph is not None and hnsw.can_gather(graph.index) and graph._file_rows is None
    _, vectors, _ = col.get(["n0", "n499"])
    np.testing.assert_array_equal(vectors, data[[0, 499]])
    col.close()


def test_graph_rows_leave_nothing_of_the_snapshot_file_resident(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graph whose index cannot copy rows out reads them from the snapshot with pread: no page
    of the file is mapped."""
    monkeypatch.setattr(hnsw, "can_gather", lambda index: False)  # as with hnswlib's own index
    col = make(tmp_path, dim=64)
    data = clustered(3000, 64, seed=5)
    col.upsert([f"r{i}" for i in range(3000)], data)
    col.compact()
    graph = col._view.graph
    assert graph is not None and graph._file_rows is not None
    labels = graph.ids.labels_of([f"r{i}" for i in (0, 1500, 2999)])
    np.testing.assert_array_equal(graph.vectors(labels), data[[0, 1500, 2999]])
    maps = Path("/proc/self/maps")
    if maps.exists():
        assert snapshot.GRAPH_FILE not in maps.read_text()
    col.close()

    def open_graph_files() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd).endswith(snapshot.GRAPH_FILE))

    if Path("/proc/self/fd").exists():
        assert open_graph_files() == 1
        del col, graph
        gc.collect()
        assert open_graph_files() == 0  # a dropped graph closes its snapshot file


def snapshot_seqs(col: Collection) -> list[int]:
    return [info.applied_seq for info in snapshot.list_snapshots(col.directory / "snapshots")]


@pytest.mark.skipif(not hnsw.NATIVE, reason="needs shard._vsnative (folds copy the graph in memory)")
def test_background_folds_checkpoint_only_when_due_and_recovery_keeps_every_write(tmp_path: Path) -> None:
    options = CollectionOptions(
        compact_delta_items=10**9, compact_age_s=10**9, build_threads=2, checkpoint_rows=1000, checkpoint_age_s=10**9
    )
    col = make(tmp_path, options=options)
    data = clustered(1500, 8, seed=21)
    col.upsert([f"a{i}" for i in range(400)], data[:400])
    first = col.compact().snapshot_seq  # an explicit compaction always checkpoints
    assert snapshot_seqs(col) == [first]
    # background folds of 300 rows: published and searchable, no snapshot until 1000 rows
    for lo in range(400, 1000, 300):
        col.upsert([f"a{i}" for i in range(lo, lo + 300)], data[lo : lo + 300])
        assert col.compact(background=True).snapshot_seq == first
        assert col.stats().delta_size == 0 and col.stats().graph_elements == lo + 300
        assert snapshot_seqs(col) == [first]
        assert col.search(data[lo + 7][None, :], 1)[0].ids == [f"a{lo + 7}"]
    assert col.compact(background=True).snapshot_seq == first  # nothing to fold, nothing due
    col.delete(["a3", "a500"])
    col.upsert(["a900"], data[1400][None, :])
    # a crash now (close without compacting): the newest snapshot plus the whole log since it
    col = reopen(col, options)
    assert col.stats().count == 998 and col.stats().graph_elements == 400
    found, vectors, missing = col.get(["a3", "a500", "a900", "a999"])
    assert found == ["a900", "a999"] and missing == ["a3", "a500"]
    np.testing.assert_array_equal(vectors[0], data[1400])
    col.compact(background=True)  # the 601 replayed rows: folded, still not due
    assert snapshot_seqs(col) == [first] and col.stats().delta_size == 0
    col.upsert([f"a{i}" for i in range(1000, 1500)], data[1000:1500])
    result = col.compact(background=True)  # 1101 rows folded since the snapshot: due
    assert result.snapshot_seq == col.stats().last_applied_seq == snapshot_seqs(col)[0]
    col = reopen(col, options)
    assert col.stats().count == 1498 and col.stats().delta_size == 0
    found, vectors, missing = col.get(["a3", "a900", "a1499"])
    assert found == ["a900", "a1499"] and missing == ["a3"]
    np.testing.assert_array_equal(vectors[0], data[1400])
    for i in (7, 450, 999, 1200, 1499):
        assert col.search(data[i][None, :], 1)[0].ids == [f"a{i}"]


@pytest.mark.skipif(not hnsw.NATIVE, reason="needs shard._vsnative (folds copy the graph in memory)")
def test_an_explicit_compaction_checkpoints_a_graph_folded_without_a_snapshot(tmp_path: Path) -> None:
    options = CollectionOptions(compact_delta_items=10**9, compact_age_s=10**9, checkpoint_rows=10**9)
    col = make(tmp_path, options=options)
    data = clustered(300, 8, seed=22)
    col.upsert([f"a{i}" for i in range(100)], data[:100])
    col.compact()
    col.upsert([f"a{i}" for i in range(100, 300)], data[100:])
    col.compact(background=True)
    assert len(snapshot_seqs(col)) == 1 and col.stats().delta_size == 0
    applied = col.stats().last_applied_seq
    assert col.compact().snapshot_seq == applied  # empty delta, unsnapshotted graph: checkpointed
    assert snapshot_seqs(col)[0] == applied
    assert col.compact().snapshot_seq == applied  # nothing left to do
    assert len(snapshot_seqs(col)) == 2


@pytest.mark.skipif(not hnsw.NATIVE, reason="needs shard._vsnative (folds copy the graph in memory)")
def test_an_unsnapshotted_graph_asks_for_a_checkpoint_after_checkpoint_age_s(tmp_path: Path) -> None:
    options = CollectionOptions(
        compact_delta_items=10**9, compact_age_s=10**9, checkpoint_rows=10**9, checkpoint_age_s=5
    )
    col = make(tmp_path, options=options)
    data = clustered(200, 8, seed=23)
    col.upsert([f"a{i}" for i in range(100)], data[:100])
    col.compact()
    col.upsert([f"a{i}" for i in range(100, 200)], data[100:])
    col.compact(background=True)
    now = time.monotonic()
    assert not col.needs_compaction(now)
    assert col.needs_compaction(now + 6)
    assert len(snapshot_seqs(col)) == 1


def test_every_fold_checkpoints_without_an_in_memory_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the graph cannot be copied in memory (hnswlib's own class), a background fold snapshots."""
    monkeypatch.setattr(hnsw, "is_native", lambda index: False)
    options = CollectionOptions(compact_delta_items=10**9, compact_age_s=10**9, checkpoint_rows=10**9)
    col = make(tmp_path, options=options)
    data = clustered(200, 8, seed=24)
    col.upsert([f"a{i}" for i in range(100)], data[:100])
    col.compact(background=True)
    col.upsert([f"a{i}" for i in range(100, 200)], data[100:])
    assert col.compact(background=True).snapshot_seq == col.stats().last_applied_seq
    assert len(snapshot_seqs(col)) == 2


def test_options_from_env_read_the_shard_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the single-node server's own shard runs with: python -m shard's defaults and VS_SHARD_*."""
    from shard.main import options_from_env

    assert options_from_env().checkpoint_rows == CollectionOptions().checkpoint_rows
    monkeypatch.setenv("VS_SHARD_CHECKPOINT_ROWS", "1234")
    monkeypatch.setenv("VS_SHARD_COMPACT_DELTA_ITEMS", "777")
    monkeypatch.setenv("VS_SHARD_CHECKPOINT_AGE_S", "9.5")
    options = options_from_env()
    assert (options.checkpoint_rows, options.compact_delta_items, options.checkpoint_age_s) == (1234, 777, 9.5)
