"""A shard data directory written by the code of WAL segment format 1 opens with this code.

The fixture (tests/fixtures/shard-v1-datadir.tar.gz, see tests/fixtures/README.md) was written by
commit 0ff9185: snapshots plus logs whose every segment is of format 1. Opening it must recover
exactly the items the old code served; writing after that goes to format-2 segments (the log
holds both), and compactions then truncate the format-1 segments away.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import OutOfRange
from shard import records
from shard import wal as wal_mod
from shard.collection import Collection, CollectionOptions
from shard.registry import Registry
from shard.wal import WalOptions

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "shard-v1-datadir.tar.gz"
ROOT = "shard-v1-datadir"


@dataclass
class Expected:
    """The live state of one collection, kept up to date as the test writes."""

    name: str
    metric: str
    dimension: int
    items: dict[str, np.ndarray]
    deleted: set[str]
    last_applied_seq: int


def unpack(tmp_path: Path) -> tuple[Path, dict[str, Expected], dict[str, Any]]:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    base = tmp_path / ROOT
    meta = json.loads((base / "expected.json").read_text())
    arrays = np.load(base / "expected.npz", allow_pickle=False)
    expected = {}
    for name, info in meta["collections"].items():
        ids = [str(i) for i in arrays[f"{name}.ids"]]
        vectors = arrays[f"{name}.vectors"]
        assert vectors.dtype == np.float32 and vectors.shape == (len(ids), info["spec"]["dimension"])
        assert len(ids) == info["count"]
        expected[name] = Expected(
            name,
            info["spec"]["metric"],
            info["spec"]["dimension"],
            dict(zip(ids, vectors, strict=True)),
            set(info["deleted_ids"]),
            info["last_applied_seq"],
        )
    return base / "data", expected, meta


def open_registry(data_dir: Path) -> Registry:
    options = CollectionOptions(
        wal=WalOptions(segment_bytes=2048), compact_age_s=1e9, build_threads=1, search_threads=1
    )
    registry = Registry(data_dir, options, compaction_poll_s=3600)
    registry.open()
    return registry


def segment_versions(data_dir: Path, name: str) -> list[int]:
    paths = sorted((data_dir / "collections" / name / "wal").glob("*.wal"))
    return [int.from_bytes(p.read_bytes()[4:8], "little") for p in paths]


def check(collection: Collection, expected: Expected) -> None:
    """Every live item with its exact vector, no deleted one, searches find the items."""
    ids = sorted(expected.items)
    found, vectors, missing = collection.get(ids)
    assert missing == [] and found == ids
    assert vectors.dtype == np.float32
    want = np.stack([expected.items[i] for i in ids])
    assert np.array_equal(vectors, want), "vectors differ from what was written"
    gone = sorted(expected.deleted - expected.items.keys())
    if gone:
        found, _, missing = collection.get(gone)
        assert found == [] and missing == gone
    stats = collection.stats()
    assert stats.count == len(ids)
    assert stats.last_applied_seq == expected.last_applied_seq

    hits = collection.search(want, k=5, ef=200)
    live = expected.items.keys()
    for item, hit in zip(ids, hits, strict=True):
        assert set(hit.ids) <= live, f"search returned deleted ids {set(hit.ids) - live}"
        if expected.metric == "INNER_PRODUCT":
            # An item need not be its own nearest neighbour under inner product: compare with
            # the exact best distance instead.
            best = 1.0 - float(np.max(want @ expected.items[item]))
            assert hit.distances[0] == pytest.approx(best, abs=1e-4)
        else:
            assert hit.ids[0] == item
            assert abs(float(hit.distances[0])) < 1e-4


def check_log(collection: Collection, expected: Expected, from_seq: int) -> None:
    """``read_wal`` decodes records of either format: replaying the last op of every id it
    touches gives the expected state of that id."""
    entries = list(collection.read_wal(from_seq))
    assert [e.seq for e in entries] == list(range(from_seq, expected.last_applied_seq + 1))
    last: dict[str, records.Op] = {}
    rows: dict[str, np.ndarray] = {}
    for entry in entries:
        assert isinstance(entry, records.WalEntry)
        op = entry.op
        for row, item in enumerate(op.ids):
            last[item] = op
            if isinstance(op, records.UpsertOp):
                assert op.vectors.dtype == np.float32 and op.vectors.shape[1] == expected.dimension
                rows[item] = op.vectors[row]
    assert last, "the log holds no records"
    for item, op in last.items():
        if isinstance(op, records.UpsertOp):
            assert np.array_equal(rows[item], expected.items[item])
        else:
            assert item not in expected.items


def first_seq_on_disk(data_dir: Path, name: str) -> int:
    return int(sorted((data_dir / "collections" / name / "wal").glob("*.wal"))[0].stem)


def write_more(registry: Registry, expected: dict[str, Expected], round_: int) -> None:
    """New items, re-upserts of items the old code wrote, and deletes; the model follows."""
    rng = np.random.default_rng(round_)
    for name, model in expected.items():
        collection = registry.get(name)
        old = sorted(model.items)
        new_ids = [f"new{round_}-{name}-{i}" for i in range(30)]
        again = [old[i] for i in rng.choice(len(old), 12, replace=False)]
        for batch in (new_ids[:15], new_ids[15:], again):
            vectors = rng.standard_normal((len(batch), model.dimension)).astype(np.float32)
            seq, count = collection.upsert(batch, vectors)
            assert (seq, count) == (model.last_applied_seq + 1, len(batch))
            model.last_applied_seq = seq
            found, stored, _ = collection.get(batch)
            assert found == batch
            if model.metric == "COSINE":
                unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
                np.testing.assert_allclose(stored, unit, rtol=1e-5, atol=1e-6)
            else:
                assert np.array_equal(stored, vectors)
            model.items.update(zip(batch, stored.copy(), strict=True))
        doomed = [new_ids[3], again[0], *(old[i] for i in rng.choice(len(old), 4, replace=False))]
        doomed = list(dict.fromkeys(doomed))
        seq, count = collection.delete([*doomed, "never-written"])
        assert count == len(doomed)
        model.last_applied_seq = seq
        for item in doomed:
            model.items.pop(item)
            model.deleted.add(item)


@pytest.fixture
def legacy(tmp_path: Path) -> tuple[Path, dict[str, Expected], dict[str, Any]]:
    return unpack(tmp_path)


def test_fixture_is_all_format_1(legacy: tuple[Path, dict[str, Expected], dict[str, Any]]) -> None:
    data_dir, expected, meta = legacy
    assert meta["written_by_commit"] == "0ff9185"
    for name in expected:
        versions = segment_versions(data_dir, name)
        assert versions and set(versions) == {1}
    assert first_seq_on_disk(data_dir, "docs") > 1  # the old code truncated that log


def test_legacy_datadir_opens_recovers_and_keeps_working(
    legacy: tuple[Path, dict[str, Expected], dict[str, Any]],
) -> None:
    data_dir, expected, meta = legacy
    registry = open_registry(data_dir)
    try:
        assert sorted(spec.name for spec in registry.list()) == sorted(expected)
        for name, model in expected.items():
            collection = registry.get(name)
            assert collection.spec.dimension == model.dimension and collection.spec.metric.name == model.metric
            assert collection.stats().snapshot_seq == meta["collections"][name]["snapshot_seq"]
            check(collection, model)
            first = first_seq_on_disk(data_dir, name)
            check_log(collection, model, first)
            if first > 1:
                with pytest.raises(OutOfRange):
                    collection.read_wal(first - 1)
            # Opening left the format-1 segments alone and put a format-2 one after them.
            assert segment_versions(data_dir, name) == [1] * len(meta["collections"][name]["wal_segments"]) + [2]

        # Writes after the upgrade: the log holds format-1 then format-2 records.
        write_more(registry, expected, round_=1)
        for name, model in expected.items():
            check(registry.get(name), model)
            check_log(registry.get(name), model, first_seq_on_disk(data_dir, name))
            registry.compact(name, wait=True)
            check(registry.get(name), model)
    finally:
        registry.close()

    registry = open_registry(data_dir)
    try:
        for name, model in expected.items():
            versions = segment_versions(data_dir, name)
            assert 1 in versions and versions[-1] == 2, f"{name}: {versions}"
            assert versions == sorted(versions)
            check(registry.get(name), model)
        # A second round and compaction: with two snapshots kept, the log is truncated to the
        # older one, which is past every format-1 record.
        write_more(registry, expected, round_=2)
        for name, model in expected.items():
            registry.compact(name, wait=True)
            check(registry.get(name), model)
    finally:
        registry.close()

    registry = open_registry(data_dir)
    try:
        for name, model in expected.items():
            assert set(segment_versions(data_dir, name)) == {2}, name
            check(registry.get(name), model)
            check_log(registry.get(name), model, first_seq_on_disk(data_dir, name))
    finally:
        registry.close()


def test_legacy_datadir_with_a_torn_format_1_tail(
    legacy: tuple[Path, dict[str, Expected], dict[str, Any]],
) -> None:
    """The old process died mid-append: the torn format-1 record is cut, nothing else lost."""
    data_dir, expected, _ = legacy
    wal_dir = data_dir / "collections" / "docs" / "wal"
    last = sorted(wal_dir.glob("*.wal"))[-1]
    intact = last.read_bytes()
    torn = wal_mod.encode_frame(expected["docs"].last_applied_seq + 1, b"\x12\x05never")[:-3]
    last.write_bytes(intact + torn)
    registry = open_registry(data_dir)
    try:
        for name, model in expected.items():
            check(registry.get(name), model)
        assert last.read_bytes() == intact
        write_more(registry, expected, round_=3)
    finally:
        registry.close()
    registry = open_registry(data_dir)
    try:
        for name, model in expected.items():
            check(registry.get(name), model)
    finally:
        registry.close()
