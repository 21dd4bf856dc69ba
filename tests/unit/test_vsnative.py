"""shard._vsnative (shard/native/vsnative.cpp) against hnswlib 0.8.0 and numpy brute force, and the
shard/hnsw.py selection. scripts/setup.sh builds the module, so a missing one fails these tests;
only an explicit VS_NATIVE=0 (the fallback chosen on purpose) skips the native ones."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt
import pytest

from shard import hnsw
from testkit.datasets import data_and_queries

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "shard-v1-datadir.tar.gz"
NOT_BUILT = "shard._vsnative is not built (run `python -m shard.native.build`, or scripts/setup.sh)"
DISABLED = os.environ.get("VS_NATIVE") == "0"
native_only = pytest.mark.skipif(DISABLED, reason="shard._vsnative disabled by VS_NATIVE=0")

N, DIM, NQ = 10_000, 24, 100
M, EF_CONSTRUCTION, EF = 16, 100, 64


def _native_index(space: str, dim: int) -> Any:
    from shard import _vsnative

    return _vsnative.Index(space, dim)


def brute_force(data: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], space: str) -> npt.NDArray[np.float64]:
    """(nq, n) distances as hnswlib defines them, in float64."""
    x = data.astype(np.float64)
    q = queries.astype(np.float64)
    if space == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if space == "l2":
        return ((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    return 1.0 - q @ x.T


def top_k(dist: npt.NDArray[np.float64], labels: npt.NDArray[np.int64], k: int) -> npt.NDArray[np.int64]:
    """Per row the ``k`` labels of smallest (distance, label)."""
    out = np.empty((len(dist), min(k, len(labels))), dtype=np.int64)
    for row, d in enumerate(dist):
        out[row] = labels[np.lexsort((labels, d))[: out.shape[1]]]
    return out


@pytest.fixture(scope="module")
def dataset() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    return data_and_queries(N, NQ, DIM, seed=7)


@pytest.fixture(scope="module")
def saved_graph(
    dataset: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An l2 graph over ``dataset`` built and saved by hnswlib.Index (the oracle)."""
    data, _ = dataset
    index = hnswlib.Index(space="l2", dim=DIM)
    index.init_index(max_elements=N, M=M, ef_construction=EF_CONSTRUCTION, random_seed=3)
    index.add_items(data, np.arange(N), num_threads=2)
    path = tmp_path_factory.mktemp("graph") / "graph.hnsw"
    index.save_index(str(path))
    return path


@pytest.fixture(scope="module")
def native(saved_graph: Path) -> Any:
    if DISABLED:
        pytest.skip("shard._vsnative disabled by VS_NATIVE=0")
    assert hnsw.NATIVE, NOT_BUILT
    index = _native_index("l2", DIM)
    index.load_index(str(saved_graph))
    index.set_ef(1)  # as shard/graph.py: ef 1 on the index, k = max(ef, k) asked
    return index


# ---- selection (run with or without the module) ---------------------------------------------


@native_only
def test_native_module_is_built() -> None:
    """scripts/setup.sh builds the module; a silent fallback would hide a broken build."""
    assert importlib.util.find_spec("shard._vsnative") is not None, NOT_BUILT
    importlib.import_module("shard._vsnative")


def test_vs_native_0_forces_the_hnswlib_fallback() -> None:
    """In a fresh interpreter: reloading shard.hnsw here would replace its classes under other tests."""
    code = (
        "import hnswlib\n"
        "from shard import hnsw\n"
        "assert hnsw.NATIVE is False\n"
        "assert hnsw.index_class() is hnswlib.Index\n"
        "index = hnsw.new_index('l2', 4)\n"
        "assert isinstance(index, hnswlib.Index) and not hnsw.is_native(index)\n"
        "index.init_index(max_elements=2)\n"
        "try:\n"
        "    hnsw.exact_labels(index, [[0.0] * 4], [0], 1)\n"
        "except hnsw.NativeUnavailableError as exc:\n"
        "    assert 'VS_NATIVE=0' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no NativeUnavailableError')\n"
    )
    env = {**os.environ, "VS_NATIVE": "0"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_native_helpers_refuse_an_hnswlib_index() -> None:
    index = hnswlib.Index(space="l2", dim=4)
    index.init_index(max_elements=4)
    index.add_items(np.eye(4, dtype=np.float32), np.arange(4))
    queries = np.eye(4, dtype=np.float32)
    with pytest.raises(hnsw.NativeUnavailableError, match=r"shard\._vsnative"):
        hnsw.knn_allowed(index, queries, 1, np.ones(4, dtype=bool))
    with pytest.raises(hnsw.NativeUnavailableError):
        hnsw.exact_labels(index, queries, np.arange(4), 1)


@native_only
def test_new_index_is_native_when_built() -> None:
    index = hnsw.new_index("cosine", 8)
    assert hnsw.is_native(index)
    assert (index.space, index.dim, index.element_count, index.max_elements) == ("cosine", 8, 0, 0)


# ---- file format: hnswlib <-> native ----------------------------------------------------------


@native_only
@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
def test_single_threaded_builds_write_identical_files(space: str, tmp_path: Path) -> None:
    data, _ = data_and_queries(800, 1, 16, seed=11)
    paths = []
    for name, index in (("hnswlib", hnswlib.Index(space=space, dim=16)), ("native", _native_index(space, 16))):
        index.init_index(max_elements=1000, M=8, ef_construction=50, random_seed=5)
        index.add_items(data, np.arange(800), num_threads=1)
        index.mark_deleted(17)
        paths.append(tmp_path / name)
        index.save_index(str(paths[-1]))
    assert paths[0].read_bytes() == paths[1].read_bytes()


@native_only
def test_knn_query_equals_hnswlib_on_the_same_file(
    saved_graph: Path, native: Any, dataset: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    _, queries = dataset
    oracle = hnswlib.Index(space="l2", dim=DIM)
    oracle.load_index(str(saved_graph))
    oracle.set_ef(1)
    want_labels, want_dist = oracle.knn_query(queries, k=EF, num_threads=1)
    labels, dist = native.knn_query(queries, k=EF, num_threads=1)
    assert labels.dtype == np.uint64 and dist.dtype == np.float32
    np.testing.assert_array_equal(labels, want_labels)
    # Same code and flags: equal bits here; a tolerance of one ulp-ish for other SIMD builds.
    np.testing.assert_allclose(dist, want_dist, rtol=1e-6, atol=0)
    assert native.element_count == oracle.element_count == N
    assert native.get_current_count() == N and native.get_max_elements() == native.max_elements == N
    sample = np.array([0, 5, 4_321, N - 1], dtype=np.uint64)
    np.testing.assert_array_equal(native.get_items(sample), oracle.get_items(sample, return_type="numpy"))


@native_only
@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
def test_round_trip_both_ways_with_deletions(space: str, tmp_path: Path) -> None:
    data, queries = data_and_queries(2_000, 20, 12, seed=21)
    deleted = [3, 50, 1_999]
    built = {"hnswlib": hnswlib.Index(space=space, dim=12), "native": _native_index(space, 12)}
    for name, index in built.items():
        index.init_index(max_elements=2_000, M=12, ef_construction=80, random_seed=9)
        index.add_items(data, np.arange(2_000), num_threads=2)
        for label in deleted:
            index.mark_deleted(label)
        index.save_index(str(tmp_path / name))
    for writer, reader_cls in (("hnswlib", _native_index), ("native", hnswlib.Index)):
        reader = reader_cls(space, 12)
        reader.load_index(str(tmp_path / writer), max_elements=2_500)
        writer_index = built[writer]
        assert reader.element_count == 2_000 and reader.max_elements == 2_500
        live = np.setdiff1d(np.arange(2_000), deleted).astype(np.uint64)
        np.testing.assert_array_equal(reader.get_items(live), writer_index.get_items(live, return_type="numpy"))
        for label in deleted:
            with pytest.raises(RuntimeError, match="Label not found"):
                reader.get_items([label])
        reader.set_ef(40)
        writer_index.set_ef(40)
        got_labels, got_dist = reader.knn_query(queries, k=10, num_threads=1)
        want_labels, want_dist = writer_index.knn_query(queries, k=10, num_threads=1)
        np.testing.assert_array_equal(got_labels, want_labels)
        np.testing.assert_allclose(got_dist, want_dist, rtol=1e-6, atol=1e-6)
        assert not np.isin(got_labels, deleted).any()


@native_only
def test_fixture_snapshot_graphs_load_in_both(tmp_path: Path) -> None:
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    graphs = sorted(tmp_path.glob("shard-v1-datadir/data/collections/*/snapshots/*/graph.hnsw"))
    assert graphs, "no graph.hnsw in tests/fixtures/shard-v1-datadir.tar.gz"
    for path in graphs:
        spec = json.loads((path.parent.parent.parent / "spec.json").read_text())
        space = "l2" if spec["metric"] == "L2" else "ip"  # core.spec.Metric.hnsw_space
        oracle = hnswlib.Index(space=space, dim=spec["dimension"])
        oracle.load_index(str(path))
        index = _native_index(space, spec["dimension"])
        index.load_index(str(path))
        assert index.element_count == oracle.element_count > 0
        labels = np.array(oracle.get_ids_list(), dtype=np.uint64)
        live = [int(label) for label in labels if _is_live(oracle, int(label))]
        vectors = index.get_items(np.array(live, dtype=np.uint64))
        np.testing.assert_array_equal(vectors, oracle.get_items(np.array(live, dtype=np.uint64), return_type="numpy"))
        k = min(5, len(live))
        np.testing.assert_array_equal(index.knn_query(vectors, k=k)[0], oracle.knn_query(vectors, k=k)[0])
        found, _ = index.exact_query(vectors, np.array(live), k=1)
        np.testing.assert_array_equal(found[:, 0], live)  # every stored vector is its own nearest


def _is_live(index: Any, label: int) -> bool:
    try:
        index.get_items([label])
    except RuntimeError:
        return False
    return True


# ---- knn_query(allowed=) ------------------------------------------------------------------------


@native_only
@pytest.mark.parametrize("selectivity", [0.5, 0.1, 0.01])
def test_allowed_mask_recall_and_only_allowed_labels(
    selectivity: float, native: Any, dataset: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    data, queries = dataset
    rng = np.random.default_rng(int(selectivity * 1000))
    mask = np.zeros(N, dtype=bool)
    mask[rng.choice(N, size=int(N * selectivity), replace=False)] = True
    k = 10
    labels, dist = hnsw.knn_allowed(native, queries, max(EF, k), mask, num_threads=1)
    assert labels.dtype == np.int64 and dist.dtype == np.float32 and labels.shape == (NQ, max(EF, k))
    assert mask[labels].all(), "a label outside the allowed set was returned"
    allowed = np.flatnonzero(mask)
    truth = top_k(brute_force(data[allowed], queries, "l2"), allowed, k)
    hits = sum(len(np.intersect1d(labels[row, :k], truth[row])) for row in range(NQ))
    recall = hits / (NQ * k)
    assert recall >= 0.95, f"recall@{k} {recall:.3f} at selectivity {selectivity}"
    uint8_labels, uint8_dist = native.knn_query(queries, k=max(EF, k), num_threads=1, allowed=mask.view(np.uint8))
    np.testing.assert_array_equal(uint8_labels, labels)
    np.testing.assert_array_equal(uint8_dist, dist)


@native_only
def test_allowed_mask_pads_short_rows(
    native: Any, dataset: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    data, queries = dataset
    allowed = np.array([17, 4_000, 9_999])
    mask = np.zeros(N, dtype=np.uint8)
    mask[allowed] = 1
    labels, dist = hnsw.knn_allowed(native, queries[:5], 10, mask)
    assert labels.shape == dist.shape == (5, 10)
    np.testing.assert_array_equal(labels[:, 3:], -1)
    assert np.isposinf(dist[:, 3:]).all()
    np.testing.assert_array_equal(labels[:, :3], top_k(brute_force(data[allowed], queries[:5], "l2"), allowed, 3))
    assert np.isfinite(dist[:, :3]).all() and (np.diff(dist[:, :3], axis=1) >= 0).all()


@native_only
def test_allowed_mask_bounds_and_types(native: Any, dataset: tuple[npt.NDArray[np.float32], Any]) -> None:
    _, queries = dataset
    short = np.ones(100, dtype=bool)  # labels >= 100 are not allowed
    labels, _ = hnsw.knn_allowed(native, queries[:3], 10, short)
    assert ((labels >= 0) & (labels < 100)).all()
    labels, dist = hnsw.knn_allowed(native, queries[:3], 4, np.zeros(0, dtype=bool))
    assert (labels == -1).all() and np.isposinf(dist).all()
    with pytest.raises(TypeError):
        hnsw.knn_allowed(native, queries[:3], 4, np.ones(N, dtype=np.int64))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hnsw.knn_allowed(native, queries[:3], 4, np.ones((2, N), dtype=bool))
    with pytest.raises(ValueError, match="contiguous"):
        hnsw.knn_allowed(native, queries[:3], 4, np.ones(2 * N, dtype=bool)[::2])


@native_only
def test_allowed_mask_skips_deleted_and_matches_the_python_filter(
    dataset: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
) -> None:
    data, queries = dataset
    index = _native_index("ip", DIM)
    index.init_index(max_elements=3_000, M=M, ef_construction=EF_CONSTRUCTION)
    index.add_items(data[:3_000], np.arange(3_000), num_threads=2)
    mask = np.zeros(3_000, dtype=bool)
    mask[::3] = True
    for label in range(0, 300, 3):
        index.mark_deleted(label)
    index.set_ef(1)
    labels, dist = hnsw.knn_allowed(index, queries, 40, mask)
    assert (labels >= 300).all() and mask[labels].all()
    cb_labels, cb_dist = index.knn_query(queries, k=40, num_threads=1, filter=lambda label: bool(mask[label]))
    np.testing.assert_array_equal(cb_labels.astype(np.int64), labels)
    np.testing.assert_array_equal(cb_dist, dist)


@native_only
def test_unfiltered_query_raises_like_hnswlib_when_rows_cannot_be_filled() -> None:
    index = _native_index("l2", 4)
    index.init_index(max_elements=10)
    index.add_items(np.eye(4, dtype=np.float32), np.arange(4))
    index.mark_deleted(1)
    with pytest.raises(RuntimeError, match="Cannot return the results"):
        index.knn_query(np.eye(4, dtype=np.float32), k=4)
    with pytest.raises(RuntimeError, match="Cannot return the results"):
        index.knn_query(np.eye(4, dtype=np.float32), k=2, filter=lambda label: label == 0)


# ---- exact_query --------------------------------------------------------------------------------


@native_only
@pytest.mark.parametrize("space", ["l2", "ip", "cosine"])
def test_exact_query_equals_brute_force(space: str) -> None:
    data, queries = data_and_queries(3_000, 30, 20, seed=5)
    index = _native_index(space, 20)
    index.init_index(max_elements=3_000, M=8, ef_construction=40)
    index.add_items(data, np.arange(3_000), num_threads=2)
    deleted = np.arange(0, 3_000, 7)
    for label in deleted:
        index.mark_deleted(int(label))
    rng = np.random.default_rng(2)
    wanted = rng.choice(3_000, size=900, replace=False)
    asked = np.concatenate([wanted, [3_000, 10**9, -1, -5]])  # absent and negative: skipped
    live = np.setdiff1d(wanted, deleted)
    labels, dist = hnsw.exact_labels(index, queries, asked, 25)
    assert labels.dtype == np.int64 and dist.dtype == np.float32 and labels.shape == (30, 25)
    ref = brute_force(data[live], queries, space)
    np.testing.assert_array_equal(labels, top_k(ref, live, 25))
    position = {int(label): i for i, label in enumerate(live)}
    want = np.take_along_axis(ref, np.vectorize(position.__getitem__)(labels), axis=1)
    np.testing.assert_allclose(dist, want, rtol=1e-5, atol=1e-5)
    assert (np.diff(dist, axis=1) >= 0).all()


@native_only
def test_exact_query_ties_go_to_the_smaller_label_and_rows_are_padded() -> None:
    index = _native_index("l2", 4)
    index.init_index(max_elements=20)
    same = np.ones((6, 4), dtype=np.float32)
    index.add_items(same, np.array([9, 2, 7, 4, 11, 5]))
    index.mark_deleted(7)
    labels, dist = index.exact_query(np.ones((1, 4), dtype=np.float32), np.array([9, 2, 7, 4, 11, 5]), k=3)
    np.testing.assert_array_equal(labels, [[2, 4, 5]])
    np.testing.assert_array_equal(dist, [[0, 0, 0]])
    labels, dist = index.exact_query(np.ones(4, dtype=np.float32), np.array([7, 11, 40]), k=10)  # k' = 3
    np.testing.assert_array_equal(labels, [[11, -1, -1]])
    assert dist[0, 0] == 0 and np.isposinf(dist[0, 1:]).all()
    labels, dist = index.exact_query(np.ones((2, 4), dtype=np.float32), np.array([], dtype=np.int64), k=5)
    assert labels.shape == dist.shape == (2, 0)


@native_only
def test_exact_query_after_adding_more_items_sees_them() -> None:
    index = _native_index("l2", 2)
    index.init_index(max_elements=10)
    index.add_items(np.array([[0, 0], [5, 5]], dtype=np.float32), np.array([0, 1]))
    assert index.exact_query(np.array([[4, 4]], dtype=np.float32), np.arange(3), k=1)[0][0, 0] == 1
    index.add_items(np.array([[4, 4]], dtype=np.float32), np.array([2]))
    labels, dist = index.exact_query(np.array([[4, 4]], dtype=np.float32), np.arange(3), k=3)
    np.testing.assert_array_equal(labels, [[2, 1, 0]])
    np.testing.assert_array_equal(dist, [[0, 2, 32]])


# ---- threads ------------------------------------------------------------------------------------


@native_only
def test_more_threads_give_the_same_results(
    native: Any, dataset: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    _, queries = dataset
    mask = np.zeros(N, dtype=bool)
    mask[::10] = True
    one = hnsw.knn_allowed(native, queries, EF, mask, num_threads=1)
    two = hnsw.knn_allowed(native, queries, EF, mask, num_threads=2)
    four = hnsw.knn_allowed(native, queries, EF, mask, num_threads=4)
    for got in (two, four):
        np.testing.assert_array_equal(got[0], one[0])
        np.testing.assert_array_equal(got[1], one[1])
    labels = np.flatnonzero(mask)
    exact_one = hnsw.exact_labels(native, queries, labels, 10, num_threads=1)
    exact_two = hnsw.exact_labels(native, queries, labels, 10, num_threads=2)
    np.testing.assert_array_equal(exact_two[0], exact_one[0])
    np.testing.assert_array_equal(exact_two[1], exact_one[1])
    plain_one = native.knn_query(queries, k=EF, num_threads=1)
    plain_two = native.knn_query(queries, k=EF, num_threads=2)
    np.testing.assert_array_equal(plain_two[0], plain_one[0])


@native_only
def test_concurrent_searches_from_python_threads(dataset: tuple[npt.NDArray[np.float32], Any]) -> None:
    """Searches release the GIL and may run together (the first exact_query builds the label table)."""
    data, queries = dataset
    index = _native_index("l2", DIM)
    index.init_index(max_elements=4_000, M=M, ef_construction=EF_CONSTRUCTION)
    index.add_items(data[:4_000], np.arange(4_000), num_threads=2)
    index.set_ef(1)
    mask = np.zeros(4_000, dtype=bool)
    mask[1::4] = True
    labels = np.flatnonzero(mask)
    barrier = threading.Barrier(4)

    def work(_: int) -> tuple[Any, ...]:
        barrier.wait()
        return (
            hnsw.exact_labels(index, queries, labels, 10),
            hnsw.knn_allowed(index, queries, EF, mask),
            index.knn_query(queries, k=EF, num_threads=1),
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4)))
    for got in results[1:]:
        for (got_labels, got_dist), (want_labels, want_dist) in zip(got, results[0], strict=True):
            np.testing.assert_array_equal(got_labels, want_labels)
            np.testing.assert_array_equal(got_dist, want_dist)
    want = top_k(brute_force(data[labels], queries, "l2"), labels, 10)
    np.testing.assert_array_equal(results[0][0][0], want)


# ---- knn_query(allowed=, strategy="acorn") ------------------------------------------------------


def _mask(kind: str, selectivity: float, n: int = N) -> npt.NDArray[np.bool_]:
    """``random``: a seeded random subset; ``structured``: ``label % 100 < 100 * selectivity``
    (bench/datasets.py's ``cat < s``: every hundredth label block, as an attribute filter)."""
    if kind == "random":
        rng = np.random.default_rng(int(selectivity * 10_000) + 1)
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, size=int(n * selectivity), replace=False)] = True
        return mask
    return np.arange(n) % 100 < round(100 * selectivity)


def _recall(labels: npt.NDArray[np.int64], truth: npt.NDArray[np.int64], k: int) -> float:
    return sum(len(np.intersect1d(labels[row, :k], truth[row])) for row in range(len(truth))) / truth.size


@native_only
@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize("selectivity", [0.5, 0.1, 0.02])
def test_acorn_recall_and_only_allowed_labels(
    selectivity: float, kind: str, native: Any, dataset: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    data, queries = dataset
    mask = _mask(kind, selectivity)
    k = 10
    labels, dist = hnsw.knn_allowed(native, queries, max(EF, k), mask, num_threads=1, strategy="acorn")
    assert labels.dtype == np.int64 and dist.dtype == np.float32 and labels.shape == (NQ, max(EF, k))
    assert (labels >= 0).all(), "a row was left short with enough allowed labels"
    assert mask[labels].all(), "a label outside the allowed set was returned"
    assert (np.diff(dist, axis=1) >= 0).all()
    for row in range(NQ):
        assert len(np.unique(labels[row])) == labels.shape[1]
    allowed = np.flatnonzero(mask)
    truth = top_k(brute_force(data[allowed], queries, "l2"), allowed, k)
    recall = _recall(labels, truth, k)
    assert recall >= 0.95, f"acorn recall@{k} {recall:.3f} at {kind} selectivity {selectivity}"
    # the distances are the index's own: those of the labels returned
    want = ((queries[:, None, :].astype(np.float64) - data[labels].astype(np.float64)) ** 2).sum(axis=2)
    np.testing.assert_allclose(dist, want, rtol=1e-4, atol=1e-4)
    uint8_labels, uint8_dist = native.knn_query(
        queries, k=max(EF, k), num_threads=1, allowed=mask.view(np.uint8), strategy="acorn"
    )
    np.testing.assert_array_equal(uint8_labels, labels)
    np.testing.assert_array_equal(uint8_dist, dist)


@native_only
def test_acorn_all_allowed_finds_what_the_unfiltered_search_finds(
    native: Any, dataset: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    data, queries = dataset
    labels, _ = hnsw.knn_allowed(native, queries, EF, np.ones(N, dtype=bool), strategy="acorn")
    truth = top_k(brute_force(data, queries, "l2"), np.arange(N), 10)
    plain, _ = native.knn_query(queries, k=EF, num_threads=1)
    assert _recall(labels, truth, 10) >= _recall(plain.astype(np.int64), truth, 10) - 0.01


@native_only
@pytest.mark.parametrize("strategy", ["sweep", "acorn"])
def test_acorn_and_sweep_pad_short_rows(
    strategy: str, native: Any, dataset: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    data, queries = dataset
    allowed = np.array([17, 4_000, 9_999])
    mask = np.zeros(N, dtype=np.uint8)
    mask[allowed] = 1
    labels, dist = hnsw.knn_allowed(native, queries[:5], 10, mask, strategy=strategy)  # type: ignore[arg-type]
    assert labels.shape == dist.shape == (5, 10)
    np.testing.assert_array_equal(labels[:, 3:], -1)
    assert np.isposinf(dist[:, 3:]).all()
    np.testing.assert_array_equal(labels[:, :3], top_k(brute_force(data[allowed], queries[:5], "l2"), allowed, 3))
    labels, dist = hnsw.knn_allowed(native, queries[:3], 4, np.zeros(N, dtype=bool), strategy=strategy)  # type: ignore[arg-type]
    assert (labels == -1).all() and np.isposinf(dist).all()
    labels, _ = hnsw.knn_allowed(native, queries[:3], 4, np.zeros(0, dtype=bool), strategy=strategy)  # type: ignore[arg-type]
    assert (labels == -1).all()


@native_only
def test_acorn_finds_every_allowed_label_of_a_scattered_small_set(
    native: Any, dataset: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    """Fewer allowed labels than asked, far apart in the graph: the extra entry points find all."""
    data, queries = dataset
    allowed = np.arange(5, N, 211)  # 48 labels
    mask = np.zeros(N, dtype=bool)
    mask[allowed] = True
    labels, dist = hnsw.knn_allowed(native, queries, EF, mask, strategy="acorn")
    np.testing.assert_array_equal(labels[:, len(allowed) :], -1)
    assert np.isposinf(dist[:, len(allowed) :]).all() and np.isfinite(dist[:, : len(allowed)]).all()
    np.testing.assert_array_equal(np.sort(labels[:, : len(allowed)], axis=1), np.tile(allowed, (NQ, 1)))
    truth = top_k(brute_force(data[allowed], queries, "l2"), allowed, len(allowed))
    np.testing.assert_array_equal(labels[:, : len(allowed)], truth)


@native_only
@pytest.mark.parametrize("layout", ["identity", "shuffled", "sparse"])
def test_acorn_never_returns_deleted_labels(
    layout: str, dataset: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    """Labels equal to the internal ids (one thread in order), not (two threads, shuffled
    order), and sparse labels (no dense table): the three ways labels are resolved."""
    data, queries = dataset
    n = 3_000
    rows = np.arange(n)
    if layout == "identity":
        ids, threads = rows, 1
    elif layout == "shuffled":
        ids, threads = np.random.default_rng(4).permutation(n), 2
    else:
        ids, threads = rows * 1_000 + 7, 2
    index = _native_index("ip", DIM)
    index.init_index(max_elements=n, M=M, ef_construction=EF_CONSTRUCTION)
    index.add_items(data[:n], ids, num_threads=threads)
    index.set_ef(1)
    size = int(ids.max()) + 1
    mask = np.zeros(size, dtype=bool)
    mask[ids[rows % 4 != 1]] = True  # 75% of the rows
    deleted = ids[rows % 4 == 0][:400]  # allowed and deleted
    for label in deleted:
        index.mark_deleted(int(label))
    live_allowed = np.setdiff1d(np.flatnonzero(mask), deleted)
    labels, dist = hnsw.knn_allowed(index, queries, 40, mask, strategy="acorn")
    assert (labels >= 0).all() and mask[labels].all()
    assert not np.isin(labels, deleted).any()
    order = np.argsort(ids)
    x = data[:n][order][np.searchsorted(ids[order], live_allowed)]
    truth = top_k(brute_force(x, queries, "ip"), live_allowed, 10)
    assert _recall(labels, truth, 10) >= 0.95
    # a mask allowing only deleted labels and one live one: that one, then padding
    only = np.zeros(size, dtype=bool)
    only[deleted] = True
    only[live_allowed[0]] = True
    labels, dist = hnsw.knn_allowed(index, queries[:4], 5, only, strategy="acorn")
    np.testing.assert_array_equal(labels[:, 0], live_allowed[0])
    np.testing.assert_array_equal(labels[:, 1:], -1)
    assert np.isposinf(dist[:, 1:]).all()


@native_only
def test_acorn_threads_give_identical_results(
    native: Any, dataset: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
) -> None:
    _, queries = dataset
    for mask in (_mask("random", 0.1), _mask("structured", 0.5)):
        one = hnsw.knn_allowed(native, queries, EF, mask, num_threads=1, strategy="acorn")
        for threads in (2, 4, 0):
            got = hnsw.knn_allowed(native, queries, EF, mask, num_threads=threads, strategy="acorn")
            np.testing.assert_array_equal(got[0], one[0])
            np.testing.assert_array_equal(got[1], one[1])
        rows = [hnsw.knn_allowed(native, queries[i], EF, mask, strategy="acorn") for i in range(0, NQ, 17)]
        np.testing.assert_array_equal(np.concatenate([r[0] for r in rows]), one[0][::17])


@native_only
def test_acorn_argument_errors(native: Any, dataset: tuple[npt.NDArray[np.float32], Any]) -> None:
    _, queries = dataset
    with pytest.raises(ValueError, match="strategy"):
        hnsw.knn_allowed(native, queries[:2], 4, np.ones(N, dtype=bool), strategy="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strategy"):
        native.knn_query(queries[:2], k=4, allowed=np.ones(N, dtype=bool), strategy="fast")
    with pytest.raises(ValueError, match="needs allowed"):
        native.knn_query(queries[:2], k=4, strategy="acorn")
    with pytest.raises(TypeError):
        hnsw.knn_allowed(native, queries[:2], 4, np.ones(N, dtype=np.int64), strategy="acorn")  # type: ignore[arg-type]
    labels, _ = native.knn_query(queries[:2], k=4, strategy="sweep")  # the default, spelled out
    assert labels.dtype == np.uint64


@native_only
def test_acorn_work_counters(native: Any, dataset: tuple[npt.NDArray[np.float32], Any]) -> None:
    from shard import _vsnative

    _, queries = dataset
    _vsnative._acorn_stats()
    hnsw.knn_allowed(native, queries[:7], EF, _mask("random", 0.1), strategy="acorn")
    stats = _vsnative._acorn_stats()
    assert stats["queries"] == 7 and stats["expansions"] >= 7 * EF // 2 and stats["distances"] >= 7 * EF
    assert stats["lists"] > 0
    assert _vsnative._acorn_stats()["queries"] == 0
    assert _vsnative.SIMD in ("avx512", "avx", "sse", "none")


@native_only
def test_acorn_sees_items_added_and_deleted_after_its_first_search(
    dataset: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
) -> None:
    """The label tables and compact link lists are rebuilt after add_items; deletions are read live."""
    data, queries = dataset
    index = _native_index("l2", DIM)
    index.init_index(max_elements=3_000, M=M, ef_construction=EF_CONSTRUCTION)
    index.add_items(data[:2_000], np.arange(2_000), num_threads=2)
    index.set_ef(1)
    mask = np.zeros(3_000, dtype=bool)
    mask[1::2] = True
    before, _ = hnsw.knn_allowed(index, queries, 20, mask, strategy="acorn")
    assert (before < 2_000).all()
    index.add_items(data[2_000:3_000], np.arange(2_000, 3_000), num_threads=2)
    new_only = np.zeros(3_000, dtype=bool)
    new_only[2_001::2] = True
    labels, _ = hnsw.knn_allowed(index, queries, 20, new_only, strategy="acorn")
    allowed = np.flatnonzero(new_only)
    truth = top_k(brute_force(data[allowed], queries, "l2"), allowed, 10)
    assert new_only[labels].all() and _recall(labels, truth, 10) >= 0.95
    gone = np.unique(labels[:, :3])
    for label in gone:
        index.mark_deleted(int(label))
    labels, _ = hnsw.knn_allowed(index, queries, 20, new_only, strategy="acorn")
    assert not np.isin(labels, gone).any() and (labels >= 0).all()


@native_only
def test_huge_page_blocks_search_save_and_resize_like_plain_ones(tmp_path: Path) -> None:
    """Level-0 blocks of 4 MB and more move to memory advised for transparent huge pages (at
    init_index and load_index; VS_NATIVE_HUGEPAGES=0 turns it off): same files, same results,
    resize_index (the mapping grown with mremap) still works."""
    code = (
        "import sys, numpy as np\n"
        "from shard import _vsnative\n"
        "from testkit.datasets import data_and_queries\n"
        "data, queries = data_and_queries(3_000, 20, 24, seed=3)\n"
        "index = _vsnative.Index('l2', 24)\n"
        "index.init_index(max_elements=40_000, M=16, ef_construction=60, random_seed=1)\n"
        "index.add_items(data, np.arange(3_000), num_threads=1)\n"
        "index.save_index(sys.argv[1] + '.built')\n"
        "loaded = _vsnative.Index('l2', 24)\n"
        "loaded.load_index(sys.argv[1] + '.built', max_elements=40_000)\n"
        "loaded.resize_index(60_000)\n"
        "loaded.add_items(data[:10] + 1, np.arange(3_000, 3_010), num_threads=1)\n"
        "loaded.save_index(sys.argv[1] + '.resized')\n"
        "mask = np.arange(3_010) % 3 == 0\n"
        "out = [loaded.knn_query(queries, k=10, num_threads=1)[0],\n"
        "       loaded.knn_query(queries, k=10, num_threads=1, allowed=mask, strategy='acorn')[0],\n"
        "       loaded.exact_query(queries, np.arange(0, 3_010, 7), k=10, num_threads=1)[0]]\n"
        "np.save(sys.argv[1] + '.npy', np.concatenate([o.astype(np.int64) for o in out], axis=1))\n"
    )
    outputs = {}
    for setting in ("1", "0"):
        prefix = str(tmp_path / f"hp{setting}")
        env = {**os.environ, "VS_NATIVE_HUGEPAGES": setting}
        done = subprocess.run(
            [sys.executable, "-c", code, prefix], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        outputs[setting] = prefix
    for suffix in (".built", ".resized"):
        assert Path(outputs["1"] + suffix).read_bytes() == Path(outputs["0"] + suffix).read_bytes()
    np.testing.assert_array_equal(np.load(outputs["1"] + ".npy"), np.load(outputs["0"] + ".npy"))


# ---- gather (issue #19: graph rows from the index's own memory) ------------------------------


def test_gather_copies_the_stored_vectors_of_live_labels(tmp_path: Path) -> None:
    """Same rows as get_items (cosine: the normalised vectors the index stores); a deleted or
    absent label raises; an hnswlib.Index (or a module built before gather) gives None."""
    data, _ = data_and_queries(500, 16, DIM, seed=11)
    for space in ("l2", "cosine"):
        index = hnsw.new_index(space, DIM)
        index.init_index(max_elements=500, M=8, ef_construction=50)
        index.add_items(data, np.arange(500))
        labels = np.asarray([499, 0, 250, 7], dtype=np.int64)
        rows = hnsw.gather(index, labels)
        if not hnsw.is_native(index):
            assert rows is None
            continue
        assert rows is not None and rows.dtype == np.float32 and rows.shape == (4, DIM)
        expected = np.asarray(index.get_items(labels.astype(np.uint64)), dtype=np.float32)
        np.testing.assert_array_equal(rows, expected)
        index.mark_deleted(7)
        for bad in ([7], [500], [-1]):
            with pytest.raises(RuntimeError):
                hnsw.gather(index, np.asarray(bad, dtype=np.int64))
        assert hnsw.gather(index, np.empty(0, dtype=np.int64)).shape == (0, DIM)  # type: ignore[union-attr]
    plain = hnswlib.Index(space="l2", dim=DIM)
    plain.init_index(max_elements=1)
    assert hnsw.gather(plain, np.zeros(1, dtype=np.int64)) is None


@native_only
@pytest.mark.parametrize(("space", "int8"), [("l2", False), ("ip", False), ("cosine", True)])
def test_copy_from_equals_saving_and_loading_back(space: str, int8: bool, tmp_path: Path) -> None:
    """A fold's in-memory copy: the same file as a save + load, the same graph after the same
    inserts, and the source untouched by them."""
    data, _ = data_and_queries(1500, 1, 16, seed=12)

    def fresh() -> Any:
        index = _native_index(space, 16)
        if int8:
            index.set_int8(np.full(16, -4.0, dtype=np.float32), 8.0 / 255)
        return index

    source = fresh()
    source.init_index(max_elements=1000, M=8, ef_construction=50, random_seed=5)
    source.add_items(data[:1000], np.arange(1000), num_threads=2)
    source.mark_deleted(17)
    source.save_index(str(tmp_path / "source"))
    copied, loaded = fresh(), fresh()
    copied.copy_from(source, 1600)
    loaded.load_index(str(tmp_path / "source"), max_elements=1600)
    assert (copied.max_elements, copied.element_count, copied.deleted_count) == (1600, 1000, 1)
    for index in (copied, loaded):
        index.add_items(data[1000:], np.arange(1000, 1500), num_threads=1)
    copied.save_index(str(tmp_path / "copied"))
    loaded.save_index(str(tmp_path / "loaded"))
    assert (tmp_path / "copied").read_bytes() == (tmp_path / "loaded").read_bytes()
    source.save_index(str(tmp_path / "source-after"))
    assert (tmp_path / "source-after").read_bytes() == (tmp_path / "source").read_bytes()
    with pytest.raises(RuntimeError, match="before init_index"):
        copied.copy_from(source)
    with pytest.raises(ValueError, match="differ"):
        _native_index(space, 8).copy_from(source)
    other = _native_index(space, 16)  # no int8 where the source has it, or the reverse
    if not int8:
        other.set_int8(np.zeros(16, dtype=np.float32), 1.0)
    with pytest.raises(ValueError, match="differ"):
        other.copy_from(source)
