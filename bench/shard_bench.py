"""Shard benchmark: raw in-process hnswlib versus the shard over gRPC on loopback, in one run.

    python bench/shard_bench.py [--n 100000] [--dim 512] [--queries 1000] [--out bench/results]
    python bench/shard_bench.py --quick          # 10k x 128 smoke test, well under a minute

Every shard figure is reported next to the matching raw hnswlib figure measured in the same run,
with the ratio shard/raw. Data: ``tests.datasets.data_and_queries`` (seeded), cached as .npy under
``bench/data/`` together with the exact top-k ground truth (brute force in chunks). Results go to
``<out>/shard.md`` and ``<out>/shard.json``. See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import itertools
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hnswlib
import numpy as np
import numpy.typing as npt

from shard.client import ShardClient
from tests.datasets import data_and_queries, recall_at_k
from tests.shardproc import ShardProcess

REPO = Path(__file__).resolve().parent.parent
Matrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]

COLLECTION = "bench"
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
RAW_SPACE = {"cosine": "cosine", "ip": "ip", "l2": "l2"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ====================================================================== helpers
def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    except OSError:
        pass
    return 0.0


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def git_revision() -> str:
    """HEAD commit of the repository, with "+dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=REPO, check=False).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "mem_total_gib": mem_total_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "hnswlib": version_of("hnswlib"),
        "grpcio": version_of("grpcio"),
        "numpy": version_of("numpy"),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def proc_status_kib(pid: int | str, field_name: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmHWM = peak RSS, VmRSS = current RSS); 0 if absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) from /proc/<pid>/stat."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_cpu_s() -> float:
    """CPU-seconds the whole machine has been busy (all cores; /proc/stat, steal included)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_s() -> float:
    """CPU-seconds of this process and its reaped children (the shard processes, once stopped)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def percentile_ms(samples_s: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples_s), q) * 1000.0) if samples_s else float("nan")


def latency_summary(samples_s: Sequence[float]) -> dict[str, float]:
    total = float(sum(samples_s))
    return {
        "qps": len(samples_s) / total if total else float("nan"),
        "p50_ms": percentile_ms(samples_s, 50),
        "p99_ms": percentile_ms(samples_s, 99),
        "mean_ms": total / len(samples_s) * 1000.0 if samples_s else float("nan"),
    }


def ids_for(n: int) -> list[str]:
    return [str(i) for i in range(n)]


# ====================================================================== data
def exact_top_k_chunked(data: Matrix, queries: Matrix, k: int, metric: str, chunk: int = 8192) -> Labels:
    """Exact top-k row indices per query (same conventions as tests.datasets.exact_top_k).

    Works through ``data`` in chunks of rows in float64 and keeps a running top-k, so memory stays
    at about ``queries x chunk`` doubles instead of ``queries x n``.
    """
    q = queries.astype(np.float64)
    if metric == "cosine":
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    q_sq = (q**2).sum(axis=1)[:, None]
    nq = len(q)
    best_d = np.empty((nq, 0), dtype=np.float64)
    best_i = np.empty((nq, 0), dtype=np.int64)
    for lo in range(0, len(data), chunk):
        block = data[lo : lo + chunk].astype(np.float64)
        if metric == "cosine":
            block /= np.linalg.norm(block, axis=1, keepdims=True)
        dots = q @ block.T
        dist = q_sq + (block**2).sum(axis=1)[None, :] - 2.0 * dots if metric == "l2" else -dots
        index = np.broadcast_to(np.arange(lo, lo + len(block), dtype=np.int64), dist.shape)
        cand_d = np.concatenate([best_d, dist], axis=1)
        cand_i = np.concatenate([best_i, index], axis=1)
        # Earlier candidates come first and have lower indices, so a stable sort breaks ties by index.
        keep = np.argsort(cand_d, axis=1, kind="stable")[:, :k]
        best_d = np.take_along_axis(cand_d, keep, axis=1)
        best_i = np.take_along_axis(cand_i, keep, axis=1)
    return best_i


def _save_npy(path: Path, array: npt.NDArray[Any]) -> None:
    tmp = path.with_name(path.name + ".partial.npy")
    np.save(tmp, array)
    tmp.replace(path)


def load_dataset(
    cache: Path, n: int, nq: int, dim: int, seed: int, metric: str, k: int
) -> tuple[Matrix, Matrix, Labels, dict[str, Any]]:
    """(data, queries, truth, info); generated once and cached as .npy under ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = f"emb-n{n}-q{nq}-d{dim}-s{seed}"
    data_path, query_path = cache / f"{stem}-data.npy", cache / f"{stem}-queries.npy"
    truth_path = cache / f"{stem}-truth-{metric}-k{k}.npy"
    info: dict[str, Any] = {"cache": str(data_path.parent), "stem": stem}
    if data_path.exists() and query_path.exists():
        data, queries = np.load(data_path), np.load(query_path)
        info["generated"] = False
    else:
        started = time.perf_counter()
        data, queries = data_and_queries(n, nq, dim, seed=seed)
        data, queries = np.ascontiguousarray(data), np.ascontiguousarray(queries)
        _save_npy(data_path, data)
        _save_npy(query_path, queries)
        info["generated"] = True
        info["generate_s"] = round(time.perf_counter() - started, 2)
    if truth_path.exists():
        truth = np.load(truth_path)
        info["truth_computed"] = False
    else:
        started = time.perf_counter()
        truth = exact_top_k_chunked(data, queries, k, metric)
        _save_npy(truth_path, truth)
        info["truth_computed"] = True
        info["truth_s"] = round(time.perf_counter() - started, 2)
    return data, queries, truth, info


# ====================================================================== search measurement
SingleCall = Callable[[int], list[str]]
BatchCall = Callable[[], tuple[list[list[str]], list[float]]]


def measure_search(
    single_call: SingleCall, batch_call: BatchCall, nq: int, warmup: int, repeats: int
) -> tuple[dict[str, Any], list[list[str]], list[list[str]]]:
    """Runs ``warmup`` single queries, then ``repeats`` rounds of all queries one at a time, then
    ``repeats`` rounds of the batched search. QPS figures are the median round; latency
    percentiles pool every single-query call. Returns (figures, single results, batched results).
    """
    for i in range(warmup):
        single_call(i % nq)
    pooled: list[float] = []
    single_qps: list[float] = []
    found_single: list[list[str]] = []
    for _ in range(repeats):
        round_s: list[float] = []
        found_single = []
        for i in range(nq):
            t0 = time.perf_counter()
            found_single.append(single_call(i))
            round_s.append(time.perf_counter() - t0)
        single_qps.append(nq / sum(round_s))
        pooled += round_s
    batched_qps: list[float] = []
    request_s: list[float] = []
    found: list[list[str]] = []
    for _ in range(repeats):
        found, per_request = batch_call()
        batched_qps.append(nq / sum(per_request))
        request_s += per_request
    single = latency_summary(pooled)
    single["qps"] = float(np.median(single_qps))
    single["qps_rounds"] = single_qps  # type: ignore[assignment]
    figures = {
        "single": single,
        "batched": {
            "qps": float(np.median(batched_qps)),
            "qps_rounds": batched_qps,
            "request_p50_ms": percentile_ms(request_s, 50),
        },
    }
    return figures, found_single, found


# ====================================================================== raw hnswlib
def bench_raw(
    data: Matrix,
    queries: Matrix,
    truth: Labels,
    ids: list[str],
    metric: str,
    efs: Sequence[int],
    k: int,
    threads: int,
    warmup: int,
    repeats: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    n, dim = data.shape
    rss_before = proc_status_kib("self", "VmRSS")
    index = hnswlib.Index(space=RAW_SPACE[metric], dim=dim)
    index.init_index(max_elements=n, M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
    log(f"raw hnswlib: add_items {n} x {dim} with {threads} threads ...")
    cpu0, started = time.process_time(), time.perf_counter()
    index.add_items(data, np.arange(n), num_threads=threads)
    build_s = time.perf_counter() - started
    build_cpu_s = time.process_time() - cpu0
    rss_after = proc_status_kib("self", "VmRSS")
    out: dict[str, Any] = {
        "space": RAW_SPACE[metric],
        "build": {
            "items": n,
            "threads": threads,
            "seconds": build_s,
            "items_per_s": n / build_s,
            "cpu_s": build_cpu_s,
        },
        "index_rss_growth_mib": (rss_after - rss_before) / 1024,
        "index_file_mib": index.index_file_size() / (1 << 20),
        "search": {},
    }
    log(f"raw hnswlib: built in {build_s:.1f}s ({n / build_s:,.0f}/s)")
    for ef in efs:
        index.set_ef(ef)

        def single_call(i: int) -> list[str]:
            labels, _ = index.knn_query(queries[i : i + 1], k=k, num_threads=1)
            return [ids[j] for j in labels[0].tolist()]

        def batch_call() -> tuple[list[list[str]], list[float]]:
            t0 = time.perf_counter()
            labels, _ = index.knn_query(queries, k=k, num_threads=threads)
            took = time.perf_counter() - t0
            return [[ids[j] for j in row] for row in labels.tolist()], [took]

        entry, found_single, found = measure_search(single_call, batch_call, len(queries), warmup, repeats)
        entry["batched"]["threads"] = threads
        entry["recall"] = recall_at_k(truth, found, ids)
        entry["recall_single"] = recall_at_k(truth, found_single, ids)
        out["search"][str(ef)] = entry
        log(
            f"raw hnswlib ef={ef}: single {entry['single']['qps']:,.0f} qps "
            f"p50 {entry['single']['p50_ms']:.3f} ms p99 {entry['single']['p99_ms']:.3f} ms, "
            f"batched {entry['batched']['qps']:,.0f} qps, recall@{k} {entry['recall']:.4f}"
        )
    return out


# ====================================================================== shard
@dataclass
class StatsSampler:
    """Polls Stats (and the server's RSS) in a background thread and keeps a timeline for the JSON."""

    client: ShardClient
    collection: str
    origin: float
    pid: int
    period_s: float = 0.25
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stats-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                s = self.client.stats(self.collection)
            except Exception:  # a slow Stats under load is not worth failing the benchmark for
                continue
            self.samples.append(
                {
                    "t_s": round(time.perf_counter() - self.origin, 3),
                    "count": s.count,
                    "graph_elements": s.graph_elements,
                    "delta_size": s.delta_size,
                    "compactions": s.compactions,
                    "compacting": s.compacting,
                    "wal_bytes": s.wal_bytes,
                    "server_rss_mib": round(proc_status_kib(self.pid, "VmRSS") / 1024, 1),
                }
            )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def ingest(client: ShardClient, ids: list[str], data: Matrix, batch: int, threads: int) -> dict[str, Any]:
    """Upserts every row in batches from ``threads`` client threads; returns rates and latencies."""
    n = len(ids)
    spans = [(lo, min(lo + batch, n)) for lo in range(0, n, batch)]
    counter = itertools.count()  # next() on itertools.count is atomic under the GIL
    latencies: list[list[float]] = [[] for _ in range(threads)]
    failures: list[BaseException] = []

    def worker(slot: int) -> None:
        try:
            while (i := next(counter)) < len(spans) and not failures:
                lo, hi = spans[i]
                t0 = time.perf_counter()
                client.upsert(COLLECTION, ids[lo:hi], data[lo:hi])
                latencies[slot].append(time.perf_counter() - t0)
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=worker, args=(slot,), name=f"ingest-{slot}") for slot in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise failures[0]
    every = [x for per in latencies for x in per]
    return {
        "batch": batch,
        "threads": threads,
        "items": n,
        "requests": len(spans),
        "seconds": seconds,
        "items_per_s": n / seconds,
        "request_p50_ms": percentile_ms(every, 50),
        "request_p99_ms": percentile_ms(every, 99),
    }


def start_shard(root: Path, name: str) -> tuple[ShardProcess, ShardClient, list[str]]:
    flags = ["--fsync", "always"]  # the default, spelled out
    shard = ShardProcess(root / name, *flags)
    client = shard.start()
    return shard, client, flags


def shard_search(
    client: ShardClient,
    queries: Matrix,
    truth: Labels,
    ids: list[str],
    efs: Sequence[int],
    k: int,
    search_batch: int,
    warmup: int,
    repeats: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    nq = len(queries)
    for ef in efs:

        def single_call(i: int, ef: int = ef) -> list[str]:
            return [item for item, _ in client.search(COLLECTION, queries[i : i + 1], k, ef)[0]]

        def batch_call(ef: int = ef) -> tuple[list[list[str]], list[float]]:
            found: list[list[str]] = []
            request_s: list[float] = []
            for lo in range(0, nq, search_batch):
                t0 = time.perf_counter()
                hits = client.search(COLLECTION, queries[lo : lo + search_batch], k, ef)
                request_s.append(time.perf_counter() - t0)
                found.extend([item for item, _ in result] for result in hits)
            return found, request_s

        entry, found_single, found = measure_search(single_call, batch_call, nq, warmup, repeats)
        entry["batched"]["queries_per_request"] = search_batch
        entry["recall"] = recall_at_k(truth, found, ids)
        entry["recall_single"] = recall_at_k(truth, found_single, ids)
        out[str(ef)] = entry
        log(
            f"shard ef={ef}: single {entry['single']['qps']:,.0f} qps "
            f"p50 {entry['single']['p50_ms']:.3f} ms p99 {entry['single']['p99_ms']:.3f} ms, "
            f"batched {entry['batched']['qps']:,.0f} qps, recall@{k} {entry['recall']:.4f}"
        )
    return out


def bench_shard(
    root: Path,
    data: Matrix,
    queries: Matrix,
    truth: Labels,
    ids: list[str],
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> dict[str, Any]:
    n = len(ids)
    out: dict[str, Any] = {}
    shard, client, flags = start_shard(root, "main")
    assert shard.proc is not None
    pid = shard.proc.pid
    rss_idle_kib = proc_status_kib(pid, "VmRSS")
    out["flags"] = flags
    out["hnsw"] = {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}
    try:
        client.create_collection(COLLECTION, data.shape[1], args.metric, m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
        origin = time.perf_counter()
        sampler = StatsSampler(client, COLLECTION, origin, pid)
        sampler.start()
        log(f"shard: ingest {n} in batches of {args.ingest_batch} from {args.ingest_threads} threads ...")
        cpu0 = proc_cpu_s(pid)
        main_ingest = ingest(client, ids, data, args.ingest_batch, args.ingest_threads)
        cpu_ingest = proc_cpu_s(pid) - cpu0
        main_ingest["server_cpu_s"] = cpu_ingest
        at_end = client.stats(COLLECTION)
        main_ingest["at_end"] = {
            "graph_elements": at_end.graph_elements,
            "delta_size": at_end.delta_size,
            "compactions": at_end.compactions,
            "compacting": at_end.compacting,
        }
        log(
            f"shard: ingest {main_ingest['items_per_s']:,.0f}/s; at its end {at_end.graph_elements} in the graph, "
            f"{at_end.delta_size} in the delta, {at_end.compactions} compactions done"
        )
        # Drain: Compact(wait=True) waits for a running background compaction, then folds the rest.
        # (Only polling Stats would also wait for the 30 s age trigger when < 10k items remain.)
        t0 = time.perf_counter()
        cpu1 = proc_cpu_s(pid)
        client.compact(COLLECTION, wait=True)
        drain_s = time.perf_counter() - t0
        cpu_drain = proc_cpu_s(pid) - cpu1
        sampler.stop()
        final = client.stats(COLLECTION)
        if final.delta_size != 0 or final.graph_elements != n:
            raise RuntimeError(f"after Compact(wait=True): delta {final.delta_size}, graph {final.graph_elements}")
        total_s = main_ingest["seconds"] + drain_s
        out["ingest"] = main_ingest
        out["build"] = {
            "method": "Compact(wait=True) right after the last acknowledged upsert; then Stats checked "
            f"delta_size == 0 and graph_elements == {n}",
            "drain_s": drain_s,
            "items_per_s_after_ingest": n / drain_s,
            "ingest_plus_drain_s": total_s,
            "items_per_s_end_to_end": n / total_s,
            "server_cpu_s_ingest": cpu_ingest,
            "server_cpu_s_drain": cpu_drain,
            "compactions": final.compactions,
            "wal_bytes_after": final.wal_bytes,
        }
        out["stats_timeline"] = sampler.samples
        log(f"shard: graph complete {drain_s:.1f}s after ingest ({n / total_s:,.0f}/s ingest+build end to end)")
        out["search"] = shard_search(
            client, queries, truth, ids, args.ef, args.k, args.search_batch, args.warmup, args.repeats, log
        )
        floor: list[float] = []
        for i in range(args.warmup + len(queries)):
            t0 = time.perf_counter()
            client.stats(COLLECTION)
            if i >= args.warmup:
                floor.append(time.perf_counter() - t0)
        out["rpc_floor"] = {"rpc": "Stats", **latency_summary(floor)}
        log(f"shard: Stats round trip p50 {out['rpc_floor']['p50_ms']:.3f} ms (gRPC floor)")
        out["memory"] = {
            "vm_hwm_mib": proc_status_kib(pid, "VmHWM") / 1024,
            "vm_rss_idle_mib": rss_idle_kib / 1024,
            "vm_rss_end_mib": proc_status_kib(pid, "VmRSS") / 1024,
            "disk_mib": dir_bytes(shard.data_dir) / (1 << 20),
        }
        log(f"shard: peak RSS {out['memory']['vm_hwm_mib']:,.0f} MiB")
    finally:
        shard.stop()
        shutil.rmtree(shard.data_dir, ignore_errors=True)

    # Ingest-only runs on fresh shards, killed right after the last ack: the main config again
    # (ingest_repeats - 1 times, plus the main run above) and every extra config ingest_repeats times.
    configs = [(args.ingest_batch, args.ingest_threads), *args.extra_ingest]
    summaries: list[dict[str, Any]] = []
    for config_index, (batch, threads) in enumerate(configs):
        runs = [main_ingest] if config_index == 0 else []
        while len(runs) < args.ingest_repeats:
            shard, client, _ = start_shard(root, f"ingest-b{batch}-t{threads}-{len(runs)}")
            try:
                client.create_collection(
                    COLLECTION, data.shape[1], args.metric, m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION
                )
                result = ingest(client, ids, data, batch, threads)
            finally:
                shard.kill(signal.SIGKILL)  # no need to wait for its background compaction
                shutil.rmtree(shard.data_dir, ignore_errors=True)
            runs.append(result)
            log(f"shard: ingest-only run, batch {batch} x {threads} threads: {result['items_per_s']:,.0f}/s")
        rates = [r["items_per_s"] for r in runs]
        summaries.append(
            {
                "batch": batch,
                "threads": threads,
                "items_per_s": float(np.median(rates)),
                "items_per_s_runs": rates,
                "request_p50_ms": float(np.median([r["request_p50_ms"] for r in runs])),
                "request_p99_ms": float(np.median([r["request_p99_ms"] for r in runs])),
                "runs": [{key: value for key, value in r.items() if key != "at_end"} for r in runs],
            }
        )
    out["ingest_configs"] = summaries
    return out


# ====================================================================== report
@dataclass
class Row:
    section: str
    figure: str
    unit: str
    raw: float
    shard: float
    higher_is_better: bool
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.shard / self.raw if self.raw else float("nan")


def build_rows(raw: dict[str, Any], shard: dict[str, Any], k: int) -> list[Row]:
    raw_build = raw["build"]["items_per_s"]
    rows: list[Row] = []
    for summary in shard["ingest_configs"]:
        rates = summary["items_per_s_runs"]
        rows.append(
            Row(
                "write",
                f"ingest, acknowledged (batch {summary['batch']}, {summary['threads']} client threads, fsync)",
                "vectors/s",
                raw_build,
                summary["items_per_s"],
                True,
                f"median of {len(rates)} runs ({min(rates):,.0f}–{max(rates):,.0f}); raw = add_items build rate",
            )
        )
    build = shard["build"]
    rows.append(
        Row(
            "write",
            "graph build after ingest: items / (end of ingest → all in graph)",
            "vectors/s",
            raw_build,
            build["items_per_s_after_ingest"],
            True,
            f"Compact(wait=True), {build['drain_s']:.1f} s; part of the graph was built during ingest",
        )
    )
    rows.append(
        Row(
            "write",
            "ingest + graph build end to end: items / (start of ingest → all in graph)",
            "vectors/s",
            raw_build,
            build["items_per_s_end_to_end"],
            True,
            "the like-for-like comparison with add_items",
        )
    )
    for ef, entry in shard["search"].items():
        r = raw["search"][ef]
        rows += [
            Row(
                f"search ef={ef}",
                "single-query QPS (1 client)",
                "queries/s",
                r["single"]["qps"],
                entry["single"]["qps"],
                True,
            ),
            Row(
                f"search ef={ef}",
                "single-query latency p50",
                "ms",
                r["single"]["p50_ms"],
                entry["single"]["p50_ms"],
                False,
            ),
            Row(
                f"search ef={ef}",
                "single-query latency p99",
                "ms",
                r["single"]["p99_ms"],
                entry["single"]["p99_ms"],
                False,
            ),
            Row(
                f"search ef={ef}",
                "batched QPS",
                "queries/s",
                r["batched"]["qps"],
                entry["batched"]["qps"],
                True,
                f"raw: all queries in one knn_query; shard: {entry['batched']['queries_per_request']} per request",
            ),
            Row(f"search ef={ef}", f"recall@{k}", "", r["recall"], entry["recall"], True),
        ]
    rows.append(
        Row(
            "write",
            "CPU time to ingest + build all items",
            "CPU-s",
            raw["build"]["cpu_s"],
            build["server_cpu_s_ingest"] + build["server_cpu_s_drain"],
            False,
            "raw = add_items process CPU time; shard = server process CPU (gRPC, WAL, delta, compactions)",
        )
    )
    rows.append(
        Row(
            "memory",
            "peak RSS",
            "MiB",
            raw["index_file_mib"],
            shard["memory"]["vm_hwm_mib"],
            False,
            "raw = hnswlib index size (index_file_size(): vectors + links as held in memory); "
            f"shard = VmHWM of the whole process (idle process: {shard['memory']['vm_rss_idle_mib']:.0f} MiB)",
        )
    )
    return rows


def fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "n/a"
    if unit == "ms":
        return f"{value:.3f}"
    if unit == "":
        return f"{value:.4f}"
    if unit == "CPU-s":
        return f"{value:.1f}"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def render_markdown(report: dict[str, Any], rows: list[Row]) -> str:
    m = report["machine"]
    p = report["params"]
    raw = report["raw_hnswlib"]
    shard = report["shard"]
    lines = [
        "# Shard benchmark: shard over gRPC vs raw in-process hnswlib",
        "",
        f"- Command: `{report['command']}`",
        f"- Date: {report['date']} (UTC); total run {report['wall_s']:.0f} s; code at git {report['git']}",
        f"- Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, hnswlib {m['hnswlib']}, grpcio {m['grpcio']}, numpy {m['numpy']}",
        f"- Load average at start / end: {m['loadavg_at_start']} / {m['loadavg_at_end']}; other processes used "
        f"{m['other_work_cpu_s']} CPU-s during the run ({m['other_work_share']:.0%} of the machine's CPU time). "
        "The benchmark client, the shard server and hnswlib share the same cores.",
        f"- Data: `tests.datasets.data_and_queries({p['n']}, {p['queries']}, {p['dim']}, seed={p['seed']})`, "
        f"metric {p['metric']} (raw hnswlib space `{raw['space']}`), HNSW M={HNSW_M}, "
        f"ef_construction={HNSW_EF_CONSTRUCTION}, k={p['k']}; ground truth: exact top-{p['k']} by brute force",
        f"- Shard: `python -m shard` on 127.0.0.1 via tests.shardproc.ShardProcess, flags `{' '.join(shard['flags'])}` "
        "(all other flags default: compaction at 10000 delta items or 30 s, build/search threads = nproc)",
        f"- Raw hnswlib: add_items with num_threads={raw['build']['threads']}; single queries with num_threads=1 "
        f"after {p['warmup']} warm-up queries per ef (shard: the same, over gRPC with shard.client.ShardClient)",
        "",
        "Ratio = shard / raw. For throughput and recall higher is better, for latency and memory lower is better.",
        "",
        "| Section | Figure | Unit | Raw hnswlib | Shard (gRPC) | Shard/raw | Note |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.section} | {row.figure} | {row.unit} | {fmt(row.raw, row.unit)} | {fmt(row.shard, row.unit)} "
            f"| {row.ratio:.2f}x | {row.note} |"
        )
    build = shard["build"]
    ing = shard["ingest"]
    at_end = ing["at_end"]
    lines += [
        "",
        "## Details",
        "",
        f"- Raw add_items: {raw['build']['seconds']:.1f} s wall, {raw['build']['cpu_s']:.1f} CPU-s; "
        f"index size {raw['index_file_mib']:.0f} MiB (RSS growth of the benchmark process during init_index + "
        f"add_items: {raw['index_rss_growth_mib']:.0f} MiB).",
        f"- Main run's ingest (batch {ing['batch']}, {ing['threads']} threads): {ing['seconds']:.1f} s, upsert latency "
        f"p50 {ing['request_p50_ms']:.1f} ms / p99 {ing['request_p99_ms']:.1f} ms, "
        f"server CPU {ing['server_cpu_s']:.1f} CPU-s. At the end of ingest: {at_end['graph_elements']} items in the "
        f"graph, {at_end['delta_size']} in the delta, {at_end['compactions']} compactions done.",
        f"- Graph build: {build['method']}: {build['drain_s']:.1f} s ({build['server_cpu_s_drain']:.1f} server CPU-s); "
        f"{build['compactions']} compactions in all; ingest + build {build['ingest_plus_drain_s']:.1f} s "
        f"vs raw add_items {raw['build']['seconds']:.1f} s.",
        f"- gRPC floor: a Stats RPC round trip (no search work) takes p50 {shard['rpc_floor']['p50_ms']:.3f} ms / "
        f"p99 {shard['rpc_floor']['p99_ms']:.3f} ms from the same client.",
        f"- Search QPS figures are the median of {p['repeats']} rounds (every round in shard.json); latency "
        "percentiles pool all rounds.",
        f"- Shard memory: peak RSS (VmHWM) {shard['memory']['vm_hwm_mib']:.0f} MiB, RSS at end "
        f"{shard['memory']['vm_rss_end_mib']:.0f} MiB, data directory {shard['memory']['disk_mib']:.0f} MiB.",
    ]
    timeline = shard["stats_timeline"]
    if timeline:
        peak = max(timeline, key=lambda sample: sample["server_rss_mib"])
        lines.append(
            f"- Server RSS in the Stats timeline peaked at {peak['server_rss_mib']:.0f} MiB at t = {peak['t_s']:.1f} s "
            f"after the start of ingest ({peak['graph_elements']} in the graph, {peak['delta_size']} in the delta, "
            f"compacting: {peak['compacting']}, compactions done: {peak['compactions']})."
        )
    for summary in shard["ingest_configs"]:
        lines.append(
            f"- Ingest batch {summary['batch']} x {summary['threads']} threads: "
            + ", ".join(f"{rate:,.0f}" for rate in summary["items_per_s_runs"])
            + f" vectors/s; upsert latency (median over runs) p50 {summary['request_p50_ms']:.1f} ms / "
            f"p99 {summary['request_p99_ms']:.1f} ms."
        )
    lines += [
        "",
        "The Stats timeline sampled every 0.25 s during ingest and build, and every raw figure, are in shard.json.",
        "",
    ]
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """Strict JSON: NaN/Inf become null, tuples become lists."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ====================================================================== main
def parse_ingest_configs(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        batch, _, threads = part.partition("x")
        out.append((int(batch), int(threads)))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=None, help="data set size (default 100000; --quick 10000)")
    p.add_argument("--dim", type=int, default=None, help="dimension (default 512; --quick 128)")
    p.add_argument("--queries", type=int, default=None, help="number of queries (default 1000; --quick 200)")
    p.add_argument(
        "--out", type=Path, default=None, help="results folder (default bench/results; --quick: bench/data/quick)"
    )
    p.add_argument("--quick", action="store_true", help="small smoke-test run (10k x 128, 200 queries)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--metric", choices=sorted(RAW_SPACE), default="cosine")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="raw add_items/batched threads")
    p.add_argument("--ingest-batch", type=int, default=1000)
    p.add_argument("--ingest-threads", type=int, default=4)
    p.add_argument(
        "--extra-ingest",
        type=parse_ingest_configs,
        default=parse_ingest_configs("1000x1,100x4,100x1"),
        help="more ingest configs as BATCHxTHREADS,... each on fresh shards (default 1000x1,100x4,100x1; '' for none)",
    )
    p.add_argument("--ingest-repeats", type=int, default=3, help="runs per ingest config; the table shows the median")
    p.add_argument("--search-batch", type=int, default=100, help="queries per Search request in the batched test")
    p.add_argument("--warmup", type=int, default=None, help="warm-up queries per ef (default 100; --quick 20)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of each search test; QPS = median round")
    p.add_argument("--data-dir", type=Path, default=REPO / "bench" / "data", help="cache for data and truth")
    p.add_argument("--tmp-dir", type=Path, default=None, help="where the shards' data directories go")
    args = p.parse_args(argv)
    quick = {"n": 10_000, "dim": 128, "queries": 200, "warmup": 20, "out": REPO / "bench" / "data" / "quick"}
    full = {"n": 100_000, "dim": 512, "queries": 1000, "warmup": 100, "out": REPO / "bench" / "results"}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall0 = time.perf_counter()
    command = shlex.join(["python", "bench/shard_bench.py", *(sys.argv[1:] if argv is None else argv)])

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - wall0:7.1f}s] {message}", flush=True)

    machine = machine_info()
    date = now_utc()
    busy0, own0 = machine_busy_cpu_s(), own_cpu_s()
    log(f"machine: {machine['nproc']} x {machine['cpu_model']}, load {machine['loadavg_at_start']}")
    data, queries, truth, data_info = load_dataset(
        args.data_dir, args.n, args.queries, args.dim, args.seed, args.metric, args.k
    )
    log(f"data {data.shape}, queries {queries.shape}, truth {truth.shape} ({data_info})")
    ids = ids_for(args.n)
    raw = bench_raw(
        data, queries, truth, ids, args.metric, args.ef, args.k, args.threads, args.warmup, args.repeats, log
    )
    root = Path(tempfile.mkdtemp(prefix="vs-shard-bench-", dir=args.tmp_dir))
    try:
        shard = bench_shard(root, data, queries, truth, ids, args, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    wall = time.perf_counter() - wall0
    other = max(0.0, (machine_busy_cpu_s() - busy0) - (own_cpu_s() - own0))
    machine["other_work_cpu_s"] = round(other, 1)
    machine["other_work_share"] = round(other / (wall * machine["nproc"]), 3)
    params = {
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "seed": args.seed,
        "metric": args.metric,
        "k": args.k,
        "ef": args.ef,
        "hnsw_m": HNSW_M,
        "hnsw_ef_construction": HNSW_EF_CONSTRUCTION,
        "raw_threads": args.threads,
        "ingest_batch": args.ingest_batch,
        "ingest_threads": args.ingest_threads,
        "extra_ingest": args.extra_ingest,
        "ingest_repeats": args.ingest_repeats,
        "search_batch": args.search_batch,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "quick": args.quick,
    }
    report: dict[str, Any] = {
        "command": command,
        "date": date,
        "git": git_revision(),
        "wall_s": time.perf_counter() - wall0,
        "machine": machine,
        "params": params,
        "data": data_info,
        "raw_hnswlib": raw,
        "shard": shard,
    }
    rows = build_rows(raw, shard, args.k)
    report["comparison"] = [dict(asdict(row), ratio=row.ratio) for row in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "shard.json", json.dumps(jsonable(report), indent=1, allow_nan=False) + "\n")
    write_atomic(args.out / "shard.md", render_markdown(report, rows))
    log(f"wrote {args.out / 'shard.md'} and {args.out / 'shard.json'}")
    print(render_markdown(report, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
