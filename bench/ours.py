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

import grpc

from bench.datasets import K
from bench.harness import HNSW_EF_CONSTRUCTION, HNSW_M, Labels, Matrix, PreparedQuerySystem, System, worker_main
from bench.machine import git_commit, pkg_version
from bench.rss import descendants, proc_name
from bench.transport import TRANSPORT
from testkit.clusterproc import ClusterProcess
from testkit.procutil import REPO, import_origins
from testkit.serverproc import SingleNodeProcess
from testkit.shard_client import ShardClient, pack
from testkit.shardproc import ShardProcess
from vsproto.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
    shard_service_pb2,
    types_pb2,
)

COLLECTION = "bench"
INGEST_BATCH = 1000
INGEST_THREADS = 4
MAX_MESSAGE = 256 << 20
GRPC_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]


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
    """The public SearchService; subclasses start the server."""

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def load(self, base: Matrix) -> dict[str, float]:
        self.check_tree()
        self.channel = grpc.insecure_channel(self.start(), options=GRPC_OPTIONS)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        self.stub = search_service_pb2_grpc.SearchServiceStub(self.channel)
        admin = admin_service_pb2_grpc.AdminServiceStub(self.channel)
        n, dim = base.shape
        spec = types_pb2.CollectionSpec(
            name=COLLECTION,
            dimension=dim,
            metric=types_pb2.METRIC_INNER_PRODUCT,
            hnsw=types_pb2.HnswParams(m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION),
        )
        self.stub.CreateCollection(search_service_pb2.CreateCollectionRequest(spec=spec))
        requests = []
        for lo in range(0, n, INGEST_BATCH):
            rows = pack(base[lo : lo + INGEST_BATCH])
            request = search_service_pb2.UpsertRequest(collection=COLLECTION, vectors=rows)
            for i in range(lo, min(n, lo + INGEST_BATCH)):
                request.items.add(id=str(i))
            requests.append(request)
        start = time.perf_counter()
        with ThreadPoolExecutor(INGEST_THREADS) as pool:
            acked = sum(reply.upserted for reply in pool.map(self.stub.Upsert, requests))
        ack = time.perf_counter() - start
        compacted = admin.Compact(admin_service_pb2.CompactRequest(collection=COLLECTION, wait=True))
        indexed = time.perf_counter() - start
        in_graphs = sum(s.graph_elements for s in compacted.shards)
        pending = sum(s.delta_size for s in compacted.shards)
        count = self.stub.DescribeCollection(search_service_pb2.DescribeCollectionRequest(collection=COLLECTION)).count
        if acked != n or count != n or in_graphs != n or pending:
            raise RuntimeError(f"after ingest: acked {acked}, count {count}, in graphs {in_graphs}, delta {pending}")
        self.info = self.describe(
            consistency="an Upsert is acknowledged once the vectors are fsync'ed in every owning shard's WAL "
            "(group commit) and searchable (exact delta layer); indexed = AdminService.Compact(wait=true) returned "
            "with every item in a graph",
            items_per_shard={s.shard_id: s.count for s in compacted.shards},
            query="SearchService.Search, one packed float32 query, k=10",
        )
        return {"ack_s": ack, "indexed_s": indexed}

    def request(self, queries: Matrix, ef: int) -> Any:
        return search_service_pb2.SearchRequest(collection=COLLECTION, queries=pack(queries), k=K, ef=ef)

    def search_one(self, query: Any) -> list[int]:
        reply = self.stub.Search(self.requests[query])
        if reply.partial:
            raise RuntimeError(f"partial result: {list(reply.failed_shards)}")
        return [int(h.id) for h in reply.results[0].hits]

    def search_batch(self, queries: Matrix) -> Labels:
        reply = self.stub.Search(self.request(queries, self.ef))
        if reply.partial:
            raise RuntimeError(f"partial result: {list(reply.failed_shards)}")
        out = np.full((len(queries), K), -1, dtype=np.int64)
        for i, result in enumerate(reply.results):
            ids = [int(h.id) for h in result.hits]
            out[i, : len(ids)] = ids
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()
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


OURS: dict[str, type[System]] = {
    "ours-single-node": SingleNode,
    "ours-1-shard": OneShard,
    "ours-3-shards": ThreeShards,
    "ours-shard-direct": ShardDirect,
    **TRANSPORT,
}

if __name__ == "__main__":
    sys.exit(worker_main(OURS))
