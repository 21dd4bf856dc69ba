"""The one measurement harness: every system of bench/compare.py is measured by this code.

A system is a ``System`` subclass (our shapes and the bare transport in bench/ours.py and
bench/transport.py, the peers in bench/peers.py); ``run_worker`` runs one in the current process
(a child of compare.py) and writes one JSON result. Only the standard library, numpy and the
numpy-only parts of testkit, so that it imports in both virtualenvs (``.venv`` and ``.venv-peers``).

Per system: ``load`` (acknowledged ingest rate, time until everything is indexed), then per
ef_search: recall@10 against the exact top-10; single-client QPS with p50/p99 (one query per
call after warm-up, queries prepared before the clock); QPS with ``clients`` concurrent client
threads (each with the connection ``System.searcher`` gives it); batched QPS (all queries in one
call) where the API takes a batch. A sampler thread (bench/rss.py) follows the peak RSS of every
process involved.
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datasets import FilterSpec, K, RowFields, load_data
from bench.rss import RssSampler, self_peak_rss_mib
from testkit.truth import recall_at_k

Matrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]
Searcher = Callable[[Any], list[int]]

HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
DEFAULT_EF = (64, 128, 256)
DEFAULT_CLIENTS = 8
CONCURRENT_WARMUP = 10  # calls per client thread before the clock starts
PHASE_BUDGET_S = 60.0  # a single-client or concurrent pass stops early after this long (Milvus Lite)


# ---------------------------------------------------------------- systems


class System:
    """One system under test.

    ``load`` builds the index and returns ``{"ack_s", "indexed_s"}``; ``set_ef`` switches the
    search setting; ``prepare_queries`` turns the query matrix into what ``search_one`` takes (done
    before any clock starts); ``searcher`` gives one concurrent client its own search callable (by
    default the shared ``search_one``; systems whose connections are not thread-safe open one per
    client). ``search_batch`` is called only when ``batch`` is true.
    """

    name = "?"
    batch = True

    def __init__(self, workdir: Path, sampler: RssSampler) -> None:
        self.workdir = workdir
        self.sampler = sampler
        self.info: dict[str, Any] = {}

    def load(self, base: Matrix) -> dict[str, float]:
        raise NotImplementedError

    def set_ef(self, ef: int) -> None:
        raise NotImplementedError

    def prepare_queries(self, queries: Matrix) -> list[Any]:
        return list(queries)

    def search_one(self, query: Any) -> list[int]:
        raise NotImplementedError

    def searcher(self) -> Searcher:
        return self.search_one

    def search_batch(self, queries: Matrix) -> Labels:
        raise NotImplementedError

    # Filtered search (bench/filtered.py): systems that take row metadata and a filter.
    filtered = False

    def load_fields(self, base: Matrix, fields: RowFields) -> dict[str, float]:
        """As ``load``, with each row's metadata (``fields``) stored with its vector and indexed
        for filters as the system documents; same figures."""
        raise NotImplementedError

    def set_filter(self, name: str, spec: FilterSpec) -> None:
        """The filter every later ``search_one`` applies (``None``: none); called before the
        clock, after ``prepare_queries`` and ``set_ef``."""
        raise NotImplementedError

    def explain(self, prepared: list[Any]) -> dict[str, Any] | None:
        """Optional: what the system says about how it ran these (already prepared) queries with
        the current filter; untimed, after the filter's pass. None when it says nothing."""
        return None

    def close(self) -> None:
        return None


class PreparedQuerySystem(System):
    """A system whose single-query requests are built before the clock, once per ef setting;
    ``search_one`` takes a query's index."""

    ef = 64

    def request(self, queries: Matrix, ef: int) -> Any:
        raise NotImplementedError

    def set_ef(self, ef: int) -> None:
        self.ef = ef
        self.requests = [self.request(q[None, :], ef) for q in self.queries]

    def prepare_queries(self, queries: Matrix) -> list[Any]:
        self.queries = queries
        self.set_ef(self.ef)
        return list(range(len(queries)))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def latency_summary(times: npt.NDArray[np.float64], wall_s: float | None = None) -> dict[str, Any]:
    """QPS (queries / sum of call times, or / ``wall_s`` when given), p50 and p99 in ms."""
    total = float(times.sum()) if wall_s is None else wall_s
    return {
        "qps": round(len(times) / total, 1),
        "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 3),
    }


def measure_single(
    system: System, prepared: list[Any], warmup: int, budget_s: float = PHASE_BUDGET_S
) -> tuple[dict[str, Any], Labels]:
    """One query at a time, in order; stops after ``budget_s`` (then only the first queries
    count: the summary says how many)."""
    for i in range(warmup):
        system.search_one(prepared[i % len(prepared)])
    times = np.empty(len(prepared), dtype=np.float64)
    found = np.full((len(prepared), K), -1, dtype=np.int64)
    clock = time.perf_counter
    deadline = clock() + budget_s
    done = 0
    for i, q in enumerate(prepared):
        t0 = clock()
        ids = system.search_one(q)
        times[i] = clock() - t0
        found[i, : min(K, len(ids))] = ids[:K]
        done = i + 1
        if t0 > deadline:
            break
    return {**latency_summary(times[:done]), "queries": done}, found[:done]


def measure_concurrent(
    system: System, prepared: list[Any], clients: int, budget_s: float = PHASE_BUDGET_S
) -> tuple[dict[str, Any], npt.NDArray[np.bool_], Labels]:
    """``clients`` threads, each with its own searcher, share the queries (each query once).

    Every thread warms up with ``CONCURRENT_WARMUP`` calls, then all start together; QPS is the
    number of queries over the wall time from the start signal until the last reply. No new
    query starts after ``budget_s``; then only the queries handed out count.
    """
    searchers = [system.searcher() for _ in range(clients)]
    times = np.zeros(len(prepared), dtype=np.float64)
    found = np.full((len(prepared), K), -1, dtype=np.int64)
    next_query = itertools.count()
    ready = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def client(search: Searcher, offset: int) -> None:
        try:
            for i in range(CONCURRENT_WARMUP):
                search(prepared[(offset + i) % len(prepared)])
        except BaseException as exc:  # reported after the run
            errors.append(exc)
        ready.wait()
        clock = time.perf_counter
        deadline = clock() + budget_s
        while not errors:
            if clock() > deadline:
                return
            i = next(next_query)
            if i >= len(prepared):
                return
            t0 = clock()
            try:
                ids = search(prepared[i])
            except BaseException as exc:
                errors.append(exc)
                return
            times[i] = clock() - t0
            found[i, : min(K, len(ids))] = ids[:K]

    threads = [threading.Thread(target=client, args=(s, 97 * n), daemon=True) for n, s in enumerate(searchers)]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"a concurrent client failed: {type(errors[0]).__name__}: {errors[0]}") from errors[0]
    answered = times > 0
    return {**latency_summary(times[answered], wall), "queries": int(answered.sum())}, answered, found


def measure(
    system: System,
    queries: Matrix,
    truth: Labels,
    ef_values: list[int],
    warmup: int,
    clients: int,
    budget_s: float = PHASE_BUDGET_S,
) -> list[dict[str, Any]]:
    prepared = system.prepare_queries(queries)
    rows: list[dict[str, Any]] = []
    for ef in ef_values:
        system.set_ef(ef)
        single, found = measure_single(system, prepared, warmup, budget_s)
        row: dict[str, Any] = {
            "ef_search": ef,
            "recall_at_10": round(recall_at_k(truth, found), 4),
            "single_qps": single["qps"],
            "p50_ms": single["p50_ms"],
            "p99_ms": single["p99_ms"],
            "single_queries": single["queries"],
        }
        try:
            conc, answered, conc_found = measure_concurrent(system, prepared, clients, budget_s)
            row.update(
                concurrent_qps=conc["qps"],
                concurrent_p50_ms=conc["p50_ms"],
                concurrent_p99_ms=conc["p99_ms"],
                concurrent_recall_at_10=round(recall_at_k(truth[answered], conc_found[answered]), 4),
                concurrent_queries=conc["queries"],
            )
        except RuntimeError as exc:
            row.update(concurrent_qps=None, concurrent_error=str(exc))
        row.update(batch_qps=None, batch_recall_at_10=None)
        if system.batch:
            secs, labels = timed(lambda: system.search_batch(queries))
            row["batch_qps"] = round(queries.shape[0] / secs, 1)
            row["batch_recall_at_10"] = round(recall_at_k(truth, labels), 4)
        rows.append(row)
        print(f"  [{system.name}] ef={ef}: {row}", file=sys.stderr, flush=True)
    return rows


def run_worker(
    registry: Mapping[str, type[System]],
    name: str,
    data: Path,
    n: int | None,
    ef_values: list[int],
    warmup: int,
    clients: int,
    result_path: Path,
    budget_s: float = PHASE_BUDGET_S,
    n_queries: int | None = None,
) -> int:
    """Loads, measures and closes one system in this process; writes its result as JSON."""
    result: dict[str, Any] = {"system": name}
    base, queries, truth, truth_source = load_data(data, n, n_queries)
    result.update({"n": int(base.shape[0]), "dim": int(base.shape[1]), "queries": int(queries.shape[0])})
    result["truth"] = truth_source
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp, RssSampler() as sampler:
        system = registry[name](Path(tmp), sampler)
        try:
            try:
                load = system.load(base)
            except ImportError as exc:
                result["skipped"] = f"cannot import: {exc}"
                return write_result(result_path, result)
            result["ingest"] = ingest_summary(load, base.shape[0])
            print(f"  [{name}] ingest {result['ingest']}", file=sys.stderr, flush=True)
            result["searches"] = measure(system, queries, truth, ef_values, warmup, clients, budget_s)
            result["info"] = system.info
        except Exception as exc:
            result["failed"] = f"{type(exc).__name__}: {exc}"
            result["traceback"] = traceback.format_exc()
        finally:
            sampler.sample()
            result["rss"] = {"benchmark_process": self_peak_rss_mib(), **sampler.report()}
            system.close()
    return write_result(result_path, result)


def ingest_summary(load: Mapping[str, float], rows: int) -> dict[str, float]:
    """Seconds until the load was acknowledged and until it was indexed, and the rows/s of each."""
    return {
        "ack_s": round(load["ack_s"], 2),
        "ack_rows_per_s": round(rows / load["ack_s"], 1),
        "indexed_s": round(load["indexed_s"], 2),
        "indexed_rows_per_s": round(rows / load["indexed_s"], 1),
    }


def run_filtered_worker(
    registry: Mapping[str, type[System]], name: str, data: Path, result_path: Path, plan: dict[str, Any]
) -> int:
    """bench/filtered.py's child: loads one system with every row's metadata (bench/datasets.py
    ``RowFields``), then per filter one single-client pass at ``plan["ef"]``: QPS, p50/p99,
    recall@10 against the exact top-10 over only the matching rows (``plan["truth"]``, an .npz
    keyed by filter name, computed once by the parent), each pass capped by ``plan["budget_s"]``.
    """
    result: dict[str, Any] = {"system": name}
    base, queries, _, _ = load_data(data, plan.get("n"), plan.get("queries"), with_truth=False)
    truths = np.load(plan["truth"])
    fields = RowFields(base.shape[0])
    result.update({"n": int(base.shape[0]), "dim": int(base.shape[1]), "queries": int(queries.shape[0])})
    with tempfile.TemporaryDirectory(prefix=f"bench-filtered-{name}-") as tmp, RssSampler() as sampler:
        system = registry[name](Path(tmp), sampler)
        try:
            if not system.filtered:
                raise RuntimeError(f"{name} has no filtered search in this harness")
            try:
                load = system.load_fields(base, fields)
            except ImportError as exc:
                result["skipped"] = f"cannot import: {exc}"
                return write_result(result_path, result)
            result["ingest"] = ingest_summary(load, base.shape[0])
            print(f"  [{name}] ingest with fields {result['ingest']}", file=sys.stderr, flush=True)
            prepared = system.prepare_queries(queries)
            system.set_ef(int(plan["ef"]))
            result["filters"] = []
            for fname, spec in plan["filters"].items():
                truth = truths[fname]
                system.set_filter(fname, spec)
                start = time.perf_counter()
                single, found = measure_single(system, prepared, int(plan["warmup"]), float(plan["budget_s"]))
                row: dict[str, Any] = {
                    "filter": fname,
                    "spec": spec,
                    "matching": int(fields.mask(spec).sum()),
                    "recall_at_10": round(recall_at_k(truth, found), 4),
                    "single_qps": single["qps"],
                    "p50_ms": single["p50_ms"],
                    "p99_ms": single["p99_ms"],
                    "single_queries": single["queries"],
                    "short_results": int((found[:, : truth.shape[1]] < 0).any(axis=1).sum()),
                    "pass_s": round(time.perf_counter() - start, 1),
                }
                sample = prepared[: int(plan.get("explain_queries", 0))]
                explained = system.explain(sample) if sample else None
                if explained is not None:
                    row["explain"] = explained
                result["filters"].append(row)
                print(f"  [{name}] {fname}: {row}", file=sys.stderr, flush=True)
                write_result(result_path, {**result, "info": system.info, "partial": True})
            result["info"] = system.info
        except Exception as exc:
            result["failed"] = f"{type(exc).__name__}: {exc}"
            result["traceback"] = traceback.format_exc()
        finally:
            sampler.sample()
            result["rss"] = {"benchmark_process": self_peak_rss_mib(), **sampler.report()}
            system.close()
    return write_result(result_path, result)


def write_result(path: Path, result: dict[str, Any]) -> int:
    path.write_text(json.dumps(result, indent=2, default=str))
    return 0


def worker_main(registry: Mapping[str, type[System]], argv: list[str] | None = None) -> int:
    """The hidden child entry point of peers.py / ours.py: ``--worker NAME --data ... --result F``."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True, choices=sorted(registry))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--ef", type=int, nargs="+", default=list(DEFAULT_EF))
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--budget-s", type=float, default=PHASE_BUDGET_S)
    parser.add_argument("--queries", type=int, default=None, help="only the first N queries")
    parser.add_argument("--filtered", type=Path, default=None, help="bench/filtered.py's plan (JSON)")
    args = parser.parse_args(argv)
    if args.filtered is not None:
        plan = json.loads(args.filtered.read_text())
        return run_filtered_worker(registry, args.worker, args.data, args.result, plan)
    return run_worker(
        registry,
        args.worker,
        args.data,
        args.n,
        args.ef,
        args.warmup,
        args.clients,
        args.result,
        args.budget_s,
        args.queries,
    )


# ---------------------------------------------------------------- small helpers


def jsonable(value: Any) -> Any:
    """Best effort: a JSON-friendly copy of a client's description."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)
