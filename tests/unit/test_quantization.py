"""int8 scalar quantization (``Quantization.INT8``, docs/quantization.md) on one collection,
in process: recall against brute force at the same ef as float32, exact vectors on Get through
compaction and reopen, upserts and deletes of quantized items, filtered search, bad options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import FailedPrecondition, InvalidArgument
from core.spec import CollectionSpec, Metric, Quantization, make_spec
from shard import graph as graph_mod
from shard import hnsw
from shard.collection import Collection, CollectionOptions
from testkit.datasets import clustered
from testkit.truth import exact_top_k

pytestmark = pytest.mark.skipif(not hnsw.NATIVE, reason="int8 needs shard._vsnative (python -m shard.native.build)")

OPTS = CollectionOptions(compact_delta_items=10**9, compact_age_s=10**9, build_threads=2, search_threads=2)
INT8 = Quantization.INT8.value


def make(tmp_path: Path, name: str, metric: Metric, dim: int, quantization: int = INT8) -> Collection:
    spec = make_spec(name, dim, metric.value, quantization_number=quantization)
    return Collection.create(tmp_path / name, spec, OPTS)


def recall(col: Collection, data: np.ndarray, queries: np.ndarray, metric: str, ef: int) -> float:
    truth = exact_top_k(data, queries, 10, metric)
    hits = col.search(queries, 10, ef=ef)
    return float(np.mean([len({f"x{j}" for j in truth[q]} & set(hits[q].ids)) / 10 for q in range(len(queries))]))


@pytest.mark.parametrize("metric", [Metric.L2, Metric.COSINE, Metric.INNER_PRODUCT])
def test_recall_at_10_matches_float32_at_the_same_ef(tmp_path: Path, metric: Metric) -> None:
    n, dim, ef = 4000, 48, 64  # ef >= RESCORE_FACTOR * k: the same candidate list as float32
    data, queries = clustered(n, dim, seed=11), clustered(100, dim, seed=12)
    ids = [f"x{i}" for i in range(n)]
    got = {}
    for q in (Quantization.NONE, Quantization.INT8):
        col = make(tmp_path, f"c{q.value}", metric, dim, q.value)
        col.upsert(ids[:3000], data[:3000])
        col.compact()  # trains the quantizer on these rows
        col.upsert(ids[3000:], data[3000:])
        col.compact()  # an incremental fold: the later rows take the trained codes
        got[q] = recall(col, data, queries, metric.name.lower().replace("inner_product", "ip"), ef)
        col.close()
    # Measured (4 runs each; the 2-thread build is not deterministic): L2 0.990-0.991 vs float32
    # 0.992-0.993, cosine 0.970-0.972 vs 0.969-0.971, inner product on these unnormalised rows
    # 0.951-0.954 vs 0.944-0.945. The bar (0.95) is asserted where float32 itself clears
    # it with room; everywhere int8 must stay within 0.01 of float32 at the same ef, and inner
    # product (where float32 itself is at 0.944) keeps an absolute floor below the measured range.
    assert got[Quantization.INT8] >= got[Quantization.NONE] - 0.01
    assert got[Quantization.INT8] >= (0.95 if metric is not Metric.INNER_PRODUCT else 0.93), got


def test_quantized_items_upsert_delete_get_and_survive_reopen(tmp_path: Path) -> None:
    col = make(tmp_path, "q", Metric.L2, 16)
    data = clustered(600, 16, seed=3)
    ids = [f"x{i}" for i in range(600)]
    col.upsert(ids[:400], data[:400])
    col.compact()
    snap = sorted((tmp_path / "q" / "snapshots").iterdir())[-1]
    manifest = json.loads((snap / "MANIFEST.json").read_text())
    assert "vectors.f32" in manifest["files"] and len(manifest["quantizer"]["lo"]) == 16
    assert manifest["spec"]["quantization"] == "INT8"
    assert (snap / "vectors.f32").stat().st_size == 400 * 16 * 4
    moved = data[0] + 50.0
    col.upsert(["x0"], moved[None, :])  # a graph item replaced, outside the trained range
    col.upsert(ids[400:], data[400:])
    col.delete(["x1", "x450"])
    for round_ in range(2):
        if round_:
            col.compact()
        assert col.search(moved[None, :], 1)[0].ids == ["x0"]
        assert "x1" not in col.search(data[1][None, :], 10)[0].ids
        found, vectors, missing = col.get(["x0", "x2", "x500", "x1"])
        assert found == ["x0", "x2", "x500"] and missing == ["x1"]
        np.testing.assert_array_equal(vectors, np.stack([moved, data[2], data[500]]))  # exact, not decoded codes
        hit = col.search(data[2][None, :], 1)[0]
        assert hit.ids == ["x2"] and hit.distances[0] == pytest.approx(0.0, abs=1e-5)  # re-scored: exact
    before = [h.ids for h in col.search(data[:30], 10)]
    col.close()
    col = Collection.open(tmp_path / "q", OPTS)
    assert [h.ids for h in col.search(data[:30], 10)] == before
    assert col.spec.quantization is Quantization.INT8 and col.stats().count == 598
    allowed = ids[::3]
    for h in col.search(data[:10], 5, allow_ids=allowed):
        assert h.ids and all(int(i[1:]) % 3 == 0 for i in h.ids)
        assert list(h.distances) == sorted(h.distances)
    col.delete(ids[2:450])  # past the tombstone threshold: a rebuild retrains the quantizer
    assert col.compact().rebuilt
    found, vectors, _ = col.get(["x0", "x599"])
    np.testing.assert_array_equal(vectors, np.stack([moved, data[599]]))
    col.close()


def test_bad_quantization_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for number in (3, 99, -1):
        with pytest.raises(InvalidArgument, match="quantization"):
            make_spec("c", 8, Metric.L2.value, quantization_number=number)
    assert make_spec("c", 8, Metric.L2.value).quantization is Quantization.NONE
    # the spec files of unquantized collections stay what older releases wrote
    plain = make_spec("c", 8, Metric.L2.value)
    assert "quantization" not in plain.to_json()
    assert CollectionSpec.from_json(plain.to_json()) == plain
    quantized = make_spec("c", 8, Metric.COSINE.value, quantization_number=INT8)
    assert CollectionSpec.from_json(quantized.to_json()) == quantized
    # without the native module an int8 collection is refused before anything is written
    monkeypatch.setattr(hnsw, "NATIVE", False)
    with pytest.raises(FailedPrecondition, match="native"):
        Collection.create(tmp_path / "c", quantized, OPTS)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError):
        graph_mod.Int8Quantizer.from_json({"lo": [0.0], "scale": 0.0}, 1)


def test_native_int8_index_contract() -> None:
    from shard import _vsnative

    rng = np.random.default_rng(4)
    data = rng.standard_normal((300, 12)).astype(np.float32)
    lo, scale = data.min(axis=0), float((data.max(axis=0) - data.min(axis=0)).max() / 255)
    index = _vsnative.Index("l2", 12)
    with pytest.raises(ValueError):
        index.set_int8(lo[:5], scale)
    with pytest.raises(ValueError):
        index.set_int8(lo, 0.0)
    index.set_int8(lo, scale)
    assert index.int8
    index.init_index(300, 16, 100)
    with pytest.raises(RuntimeError, match="before init_index"):
        index.set_int8(lo, scale)
    index.add_items(data, np.arange(300))
    assert index.index_file_size() < 300 * (12 * 4 + 8 + 33 * 4) + 200  # codes: dim + 4 bytes, not 4 * dim
    decoded = index.get_items([3, 7])
    np.testing.assert_allclose(decoded, data[[3, 7]], atol=scale / 2 + 1e-6)  # decoded codes, half a step off
    np.testing.assert_array_equal(index.gather(np.array([3, 7])), decoded)
    index.set_ef(50)
    labels, distances = index.knn_query(data[:20], k=1)
    assert (labels[:, 0] == np.arange(20)).mean() >= 0.9 and (distances >= 0).all()


@pytest.mark.parametrize("mode", ["pread", "mmap"])
def test_rows_file_reads_the_rows_asked_for(tmp_path: Path, mode: str) -> None:
    rows = np.random.default_rng(3).standard_normal((50, 12)).astype("<f4")
    path = tmp_path / graph_mod.ROWS_FILE
    path.write_bytes(rows.tobytes())
    reader = graph_mod.RowsFile(path, 12, 50, mode)
    labels = np.array([49, 0, 7, 7, 31], dtype=np.int64)
    np.testing.assert_array_equal(reader.take(labels), rows[labels])
    assert reader.take(np.zeros(0, dtype=np.int64)).shape == (0, 12)
    np.testing.assert_array_equal(reader.read(45, 60), rows[45:])
    if mode == "pread":
        with pytest.raises(OSError):
            reader.take(np.array([3, 50], dtype=np.int64))  # past the end: a short read
    reader.close()
    with pytest.raises(ValueError):
        graph_mod.RowsFile(path, 12, 51)


@pytest.mark.skipif(not hnsw.NATIVE_READ_ROWS, reason="a native module built before read_rows")
def test_native_read_rows_matches_the_file_and_refuses_bad_labels(tmp_path: Path) -> None:
    rows = np.arange(40 * 3, dtype="<f4").reshape(40, 3)
    path = tmp_path / "rows.f32"
    path.write_bytes(rows.tobytes())
    with open(path, "rb") as handle:
        fd = handle.fileno()
        got = hnsw.read_rows(fd, np.array([39, 2, 2, 0], dtype=np.int64), 3)
        assert got is not None
        np.testing.assert_array_equal(got, rows[[39, 2, 2, 0]])
        for bad in ([40], [-1]):
            with pytest.raises(OSError):
                hnsw.read_rows(fd, np.array(bad, dtype=np.int64), 3)
