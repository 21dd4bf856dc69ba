"""Our systems, as plug-ins of the harness (bench/harness.py), for bench/compare.py.

    .venv/bin/python bench/ours.py --worker SYSTEM --data DIR --result OUT.json [--n N] [--ef ...]

Not run by hand: compare.py starts one child per system with this hidden worker mode (in
``.venv``, where the project lives). Systems, all with default flags (fsync on every acknowledged
write, group commit; metadata and topology in SQLite; vectors on the wire as packed float32):

* ``ours-single-node``: ``python -m server --local-shard DIR``: the public server owns its shard
  in-process (1 gRPC hop from the client);
* ``ours-1-shard`` / ``ours-3-shards``: ``python -m server.cluster --shards N``: the public server
  in front of N shard processes (2 hops);
* ``ours-shard-direct``: one bare ``python -m shard`` process, driven through its internal
  ShardService with testkit's ShardClient (1 hop; no metadata, no router);
* ``transport-*``: the bare transport limit (bench/transport.py).

The client side is always this checkout. The servers run from ``$VS_BENCH_SERVER_ROOT`` when set
(compare.py's ``--ab`` points it at a git worktree of another commit), else from this checkout;
each result records where their packages were imported from and checks that every server process
runs in that tree.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from google.protobuf import text_format
from vectorsearch_client import Client, F, Filter, Hits, Metadata, SearchExplain

from bench.datasets import FIELD_NAMES, TAG, FilterSpec, K, RowFields
from bench.harness import HNSW_EF_CONSTRUCTION, HNSW_M, Labels, Matrix, PreparedQuerySystem, System, worker_main
from bench.machine import git_commit, pkg_version
from bench.rss import descendants, proc_name
from bench.transport import TRANSPORT
from testkit.clusterproc import ClusterProcess
from testkit.procutil import REPO, import_origins
from testkit.serverproc import SingleNodeProcess
from testkit.shard_client import ShardClient, pack
from testkit.shardproc import ShardProcess
from vsproto.v1 import shard_service_pb2

COLLECTION = "bench"
INGEST_BATCH = 1000
INGEST_THREADS = 4
CALL_TIMEOUT_S = 600.0


def server_root() -> Path:
    return Path(os.environ.get("VS_BENCH_SERVER_ROOT") or REPO).resolve()


def process_cwds() -> dict[str, list[str]]:
    """The working directory of every project process below this one, by program."""
    out: dict[str, list[str]] = {}
    for pid in descendants({os.getpid()}) - {os.getpid()}:
        name = proc_name(pid)
        if name.startswith("python -m "):
            with contextlib.suppress(OSError):
                out.setdefault(name, []).append(os.readlink(f"/proc/{pid}/cwd"))
    return out


class Ours(PreparedQuerySystem):
    """One of our shapes; subclasses start the processes (from ``self.root``) and ingest."""

    shape = "?"

    def __init__(self, workdir: Path, sampler: Any) -> None:
        super().__init__(workdir, sampler)
        self.root = server_root()
        self.origins: dict[str, str] = {}

    def check_tree(self) -> None:
        """Fails unless children started from ``self.root`` import the project from there."""
        self.origins = import_origins(self.root)

    def check_processes(self) -> dict[str, list[str]]:
        """Every server process must run in ``self.root`` (the tree ``import_origins`` checked)."""
        cwds = process_cwds()
        stray = {name: dirs for name, dirs in cwds.items() if any(Path(d) != self.root for d in dirs)}
        if not cwds or stray:
            raise RuntimeError(f"server processes not running in {self.root}: {cwds}")
        return cwds

    def describe(self, **extra: Any) -> dict[str, Any]:
        return {
            "code": {
                "root": str(self.root),
                "commit": git_commit(self.root),
                "imports": self.origins,
                "process_cwds": self.check_processes(),
            },
            "version": f"grpcio {pkg_version('grpcio')}, hnswlib {pkg_version('hnswlib')}",
            "shape": self.shape,
            "index": f"HNSW (hnswlib) per shard, M={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}, metric ip",
            "ingest": f"{INGEST_BATCH} items per Upsert request (ids only, no metadata), "
            f"{INGEST_THREADS} client threads on one channel",
            "ef_setting": "SearchRequest.ef per request",
            "batch": "all queries packed in one Search request",
            "concurrent": "each client thread calls the same stub (one channel)",
            **extra,
        }


class PublicApi(Ours):
    """The public SearchService through the Python SDK (``vectorsearch_client.Client``), as a user's
    service calls it; subclasses start the server."""

    filtered = True
    filter: Filter | None = None  # set_filter's, sent with every search

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def load(self, base: Matrix) -> dict[str, float]:
        return self.ingest(base, None)

    def load_fields(self, base: Matrix, fields: RowFields) -> dict[str, float]:
        return self.ingest(base, fields)

    def ingest(self, base: Matrix, fields: RowFields | None) -> dict[str, float]:
        self.check_tree()
        self.client = Client(self.start(), timeout=CALL_TIMEOUT_S)
        self.client.wait_ready(60)
        n, dim = base.shape
        self.client.create_collection(
            COLLECTION, dim, metric="inner_product", m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION
        )
        batches = [
            (
                [str(i) for i in range(lo, min(n, lo + INGEST_BATCH))],
                base[lo : lo + INGEST_BATCH],
                None if fields is None else [item_metadata(fields, i) for i in range(lo, min(n, lo + INGEST_BATCH))],
            )
            for lo in range(0, n, INGEST_BATCH)
        ]
        start = time.perf_counter()
        with ThreadPoolExecutor(INGEST_THREADS) as pool:
            acked = sum(pool.map(lambda batch: self.client.upsert(COLLECTION, *batch), batches))
        ack = time.perf_counter() - start
        compacted = self.client.compact(COLLECTION, wait=True)
        indexed = time.perf_counter() - start
        in_graphs = sum(s.graph_elements for s in compacted)
        pending = sum(s.delta_size for s in compacted)
        count = self.client.describe_collection(COLLECTION).count
        if acked != n or count != n or in_graphs != n or pending:
            raise RuntimeError(f"after ingest: acked {acked}, count {count}, in graphs {in_graphs}, delta {pending}")
        self.info = self.describe(
            consistency="an Upsert is acknowledged once the vectors are fsync'ed in every owning shard's WAL "
            "(group commit) and searchable (exact delta layer); indexed = AdminService.Compact(wait=true) returned "
            "with every item in a graph",
            items_per_shard={s.shard_id: s.count for s in compacted},
            client=f"the Python SDK, vectorsearch_client {pkg_version('vectorsearch-client')}: Client.upsert, "
            "Client.search (one query, include_metadata=False), Client.search_batch",
            query="SearchService.Search through Client.search: one packed float32 query, k=10",
            ef_setting="Client.search(ef=...) per request",
            batch="all queries in one Client.search_batch call (one Search request)",
            concurrent="each client thread calls the same Client (one channel)",
        )
        if fields is not None:
            self.info["ingest"] = (
                f"{INGEST_BATCH} items per Client.upsert, each with Metadata (int attributes "
                f"{', '.join(FIELD_NAMES)}; tags [{TAG!r}] on the tagged rows, else none), "
                f"{INGEST_THREADS} client threads on one Client"
            )
            self.info["filter"] = "vectorsearch_client.F: F.attr(name).eq / .lt, F.tag, F.all"
        return {"ack_s": ack, "indexed_s": indexed}

    def request(self, queries: Matrix, ef: int) -> Any:
        return queries[0]  # Client.search packs the row on every call, as a user's call does

    def set_filter(self, name: str, spec: FilterSpec) -> None:
        self.filter = None if spec is None else to_filter(spec)
        if self.filter is not None:
            proto = self.filter.to_proto()
            self.info.setdefault("filters", {})[name] = text_format.MessageToString(proto, as_one_line=True)

    def explain(self, prepared: list[Any]) -> dict[str, Any] | None:
        """``Hits.explain`` (the server's ``SearchExplain``) over the ``prepared`` queries."""
        found = [self.search_hits(self.requests[i], explain=True) for i in prepared]
        return summarize_explain([hits.explain for hits in found if hits.explain is not None], len(found))

    def search_hits(self, query: Any, explain: bool = False) -> Hits:
        hits = self.client.search(
            COLLECTION, query, k=K, ef=self.ef, filter=self.filter, include_metadata=False, explain=explain
        )
        if hits.partial:
            raise RuntimeError(f"partial result: {hits.failed_shards}")
        return hits

    def search_one(self, query: Any) -> list[int]:
        return [int(h.id) for h in self.search_hits(self.requests[query])]

    def search_batch(self, queries: Matrix) -> Labels:
        found = self.client.search_batch(
            COLLECTION, queries, k=K, ef=self.ef, filter=self.filter, include_metadata=False
        )
        out = np.full((len(queries), K), -1, dtype=np.int64)
        for i, hits in enumerate(found):
            if hits.partial:
                raise RuntimeError(f"partial result: {hits.failed_shards}")
            out[i, : len(hits)] = [int(h.id) for h in hits]
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        self.stop()


class SingleNode(PublicApi):
    name = "ours-single-node"
    shape = "single node: python -m server --local-shard (the shard in the server process, 1 hop)"

    def start(self) -> str:
        self.proc = SingleNodeProcess(self.workdir / "single", root=self.root)
        return self.proc.start()

    def stop(self) -> None:
        if hasattr(self, "proc"):
            self.proc.stop()


class Cluster(PublicApi):
    shards = 1

    def start(self) -> str:
        self.cluster = ClusterProcess(self.workdir / "cluster", shards=self.shards, root=self.root)
        self.cluster.start()
        return self.cluster.address

    def stop(self) -> None:
        if hasattr(self, "cluster"):
            self.cluster.stop()


class OneShard(Cluster):
    name = "ours-1-shard"
    shape = "python -m server.cluster --shards 1: the public server in front of 1 shard process (2 hops)"


class ThreeShards(Cluster):
    name = "ours-3-shards"
    shards = 3
    shape = "python -m server.cluster --shards 3: the public server fanning out to 3 shard processes (2 hops)"


class ShardDirect(Ours):
    """One bare shard process through its internal ShardService (testkit's ShardClient)."""

    name = "ours-shard-direct"
    shape = "python -m shard, driven directly through ShardService (1 hop, no server, no metadata)"

    def load(self, base: Matrix) -> dict[str, float]:
        self.check_tree()
        self.shard = ShardProcess(self.workdir / "shard", root=self.root)
        self.client: ShardClient = self.shard.start()
        self.client.create_collection(COLLECTION, base.shape[1], "ip", m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
        requests = [
            shard_service_pb2.UpsertRequest(
                collection=COLLECTION,
                ids=[str(i) for i in range(lo, min(len(base), lo + INGEST_BATCH))],
                vectors=pack(base[lo : lo + INGEST_BATCH]),
            )
            for lo in range(0, len(base), INGEST_BATCH)
        ]
        stub = self.client.stub
        start = time.perf_counter()
        with ThreadPoolExecutor(INGEST_THREADS) as pool:
            acked = sum(reply.upserted for reply in pool.map(stub.Upsert, requests))
        ack = time.perf_counter() - start
        self.client.compact(COLLECTION, wait=True)
        indexed = time.perf_counter() - start
        stats = self.client.stats(COLLECTION)
        if acked != len(base) or stats.count != len(base) or stats.graph_elements != len(base) or stats.delta_size:
            raise RuntimeError(f"after ingest: acked {acked}, stats {stats}")
        self.info = self.describe(
            consistency="an Upsert is acknowledged once fsync'ed in the WAL (group commit) and searchable "
            "(exact delta layer); indexed = ShardService.Compact(wait=true) returned with every item in the graph",
            query="ShardService.Search, one packed float32 query, k=10",
        )
        return {"ack_s": ack, "indexed_s": indexed}

    def request(self, queries: Matrix, ef: int) -> Any:
        return shard_service_pb2.SearchRequest(collection=COLLECTION, queries=pack(queries), k=K, ef=ef)

    def search_one(self, query: Any) -> list[int]:
        reply = self.client.stub.Search(self.requests[query])
        return [int(x) for x in reply.results[0].ids]

    def search_batch(self, queries: Matrix) -> Labels:
        reply = self.client.stub.Search(self.request(queries, self.ef))
        out = np.full((len(queries), K), -1, dtype=np.int64)
        for i, result in enumerate(reply.results):
            out[i, : len(result.ids)] = [int(x) for x in result.ids]
        return out

    def close(self) -> None:
        if hasattr(self, "shard"):
            self.shard.stop()


def item_metadata(fields: RowFields, row: int) -> Metadata:
    """Row ``row``'s fields as the SDK's Metadata: an int attribute per field, its tags."""
    return Metadata(tags=fields.tags(row), attributes={name: int(fields.ints[name][row]) for name in FIELD_NAMES})


def to_filter(spec: dict[str, Any]) -> Filter:
    """A bench/datasets.py filter tree as an SDK filter (``vectorsearch_client.F``)."""
    (op, arg), *_ = spec.items()
    if op == "eq":
        return F.attr(arg[0]).eq(arg[1])
    if op == "lt":
        return F.attr(arg[0]).lt(arg[1])
    if op == "tag":
        return F.tag(arg)
    if op == "and":
        return F.all(*(to_filter(child) for child in arg))
    raise ValueError(f"unknown filter node {op!r}")


def summarize_explain(explains: list[SearchExplain], queries: int) -> dict[str, Any]:
    """What ``SearchExplain`` said over some queries: plan counts (per shard answer) and means."""
    plans: dict[str, int] = {}
    shards = [shard for explain in explains for shard in explain.shards]
    for shard in shards:
        plans[shard.plan] = plans.get(shard.plan, 0) + 1
    out: dict[str, Any] = {"queries": queries, "with_explain": len(explains), "plans": plans}
    if explains:
        out["mean_matched"] = round(sum(e.matched for e in explains) / len(explains), 1)
    if shards:
        for key in ("matched", "scored", "micros"):
            out[f"mean_shard_{key}"] = round(sum(getattr(s, key) for s in shards) / len(shards), 1)
    return out


OURS: dict[str, type[System]] = {
    "ours-single-node": SingleNode,
    "ours-1-shard": OneShard,
    "ours-3-shards": ThreeShards,
    "ours-shard-direct": ShardDirect,
    **TRANSPORT,
}

if __name__ == "__main__":
    sys.exit(worker_main(OURS))
