"""The measurement harness shared by every system in ``bench/compare.py``.

Only the standard library and numpy, so that it imports in both virtualenvs: ``.venv`` (our
servers, the transport probe) and ``.venv-peers`` (the peer systems). A system is a ``System``
subclass; ``run_worker`` runs one in the current process (a child of compare.py), measures it
the same way as every other system and writes one JSON result.

Per system: ``load`` (acknowledged ingest rate, time until everything is indexed), then per
ef_search: recall@10 against the exact top-10; single-client QPS with p50/p99 (one query per
call after warm-up, queries prepared before the clock); QPS with ``clients`` concurrent client
threads (each with the connection ``System.searcher`` gives it); batched QPS (all queries in one
call) where the API takes a batch. A sampler thread follows the peak RSS of every process
involved.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import resource
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

Matrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]
Searcher = Callable[[Any], list[int]]

K = 10
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
DEFAULT_EF = (64, 128, 256)
DEFAULT_CLIENTS = 8
CONCURRENT_WARMUP = 10  # calls per client thread before the clock starts
PHASE_BUDGET_S = 60.0  # a single-client or concurrent pass stops early after this long (Milvus Lite)


# ---------------------------------------------------------------- data


def load_data(data: Path, n: int | None) -> tuple[Matrix, Matrix, Labels, str]:
    """Base rows (the first ``n``), queries and the exact top-K; recomputed when ``n`` cuts the base."""
    base = np.load(data / "base.npy", mmap_mode="r")
    queries = np.ascontiguousarray(np.load(data / "queries.npy"), dtype=np.float32)
    truth = np.load(data / "truth.npy").astype(np.int64)
    if n is None or n >= base.shape[0]:
        return np.ascontiguousarray(base, dtype=np.float32), queries, truth[:, :K], "truth.npy"
    sub = np.ascontiguousarray(base[:n], dtype=np.float32)
    return sub, queries, exact_top_k(sub, queries, K), f"exact top-{K} recomputed over the first {n} rows"


def exact_top_k(base: Matrix, queries: Matrix, k: int) -> Labels:
    """Exact top-k by inner product in float64, ties to the lower index (as bench/realdata.py)."""
    base64 = base.astype(np.float64)
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for start in range(0, queries.shape[0], 64):
        scores = queries[start : start + 64].astype(np.float64) @ base64.T
        out[start : start + 64] = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return out


def recall_at_k(found: Labels, truth: Labels) -> float:
    hits = sum(len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


# ---------------------------------------------------------------- process memory


def proc_status(pid: int | str) -> dict[str, int]:
    """VmRSS / VmHWM (KiB) of one process; empty when it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return {}
    return out


def proc_name(pid: int) -> str:
    """A readable role for a process: ``python -m X`` -> ``X``, a script -> its file name."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    if "-m" in argv[:-1]:
        return "python -m " + argv[argv.index("-m") + 1]
    exe = Path(argv[0]).name
    if exe.startswith("python") and len(argv) > 1:
        return Path(argv[1]).name
    return exe


def descendants(roots: set[int]) -> set[int]:
    """The given pids and all their descendants (from /proc/*/stat)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found = {pid for pid in roots if pid in parent}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


class RssSampler:
    """Follows the processes other than this one (descendants and extra roots) every ``period`` s."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.extra_roots: set[int] = set()
        self.peak_hwm: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.peak_sum_rss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def sample(self) -> None:
        me = os.getpid()
        pids = descendants({me} | self.extra_roots) - {me}
        total = 0
        for pid in pids:
            st = proc_status(pid)
            if not st:
                continue
            total += st.get("VmRSS", 0)
            self.peak_hwm[pid] = max(self.peak_hwm.get(pid, 0), st.get("VmHWM", 0))
            if pid not in self.names:
                self.names[pid] = proc_name(pid)
        self.peak_sum_rss_kib = max(self.peak_sum_rss_kib, total)

    def report(self) -> dict[str, Any]:
        by_name: dict[str, dict[str, int]] = {}
        for pid, hwm in self.peak_hwm.items():
            entry = by_name.setdefault(self.names.get(pid, "?"), {"processes": 0, "max_vmhwm_mib": 0})
            entry["processes"] += 1
            entry["max_vmhwm_mib"] = max(entry["max_vmhwm_mib"], round(hwm / 1024))
        return {
            "other_processes": by_name,
            # Sum of VmRSS over the other processes, sampled: counts shared memory once per process.
            "other_peak_sum_rss_mib": round(self.peak_sum_rss_kib / 1024),
        }


def self_peak_rss_mib() -> dict[str, float]:
    hwm = proc_status("self").get("VmHWM", 0)
    return {
        "vmhwm_mib": round(hwm / 1024, 1),
        "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


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

    def close(self) -> None:
        return None


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
            "recall_at_10": round(recall_at_k(found, truth[: len(found)]), 4),
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
                concurrent_recall_at_10=round(recall_at_k(conc_found[answered], truth[answered]), 4),
                concurrent_queries=conc["queries"],
            )
        except RuntimeError as exc:
            row.update(concurrent_qps=None, concurrent_error=str(exc))
        row.update(batch_qps=None, batch_recall_at_10=None)
        if system.batch:
            secs, labels = timed(lambda: system.search_batch(queries))
            row["batch_qps"] = round(queries.shape[0] / secs, 1)
            row["batch_recall_at_10"] = round(recall_at_k(labels, truth), 4)
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
) -> int:
    """Loads, measures and closes one system in this process; writes its result as JSON."""
    result: dict[str, Any] = {"system": name}
    base, queries, truth, truth_source = load_data(data, n)
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
            rows = base.shape[0]
            result["ingest"] = {
                "ack_s": round(load["ack_s"], 2),
                "ack_rows_per_s": round(rows / load["ack_s"], 1),
                "indexed_s": round(load["indexed_s"], 2),
                "indexed_rows_per_s": round(rows / load["indexed_s"], 1),
            }
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
    args = parser.parse_args(argv)
    return run_worker(
        registry, args.worker, args.data, args.n, args.ef, args.warmup, args.clients, args.result, args.budget_s
    )


# ---------------------------------------------------------------- small helpers


def jsonable(value: Any) -> Any:
    """Best effort: a JSON-friendly copy of a client's description."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


def pkg_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"
