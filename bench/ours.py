"""Our server, in three shapes, and the bare transport limit, for bench/compare.py.

    .venv/bin/python bench/ours.py --worker SYSTEM --data DIR --result OUT.json [--n N] [--ef ...]

Not run by hand: ``bench/compare.py`` starts one child per system with this hidden worker mode
(in ``.venv``, where the project lives) and measures it with ``bench/harness.py``, exactly as it
measures the peers (bench/peers.py). Systems:

* ``ours-single-node``: ``python -m server --local-shard DIR``: the public server owns its shard
  in-process (1 gRPC hop from the client);
* ``ours-1-shard`` / ``ours-3-shards``: ``python -m server.cluster --shards N``: the public server
  in front of N shard processes (2 hops);
* ``transport-1-hop`` / ``transport-2-hops``: ``bench/transport_probe.py``'s minimal servers over the
  same raw hnswlib index: (a) decodes the packed queries and calls ``knn_query``, nothing else;
  (b) forwards to (a). The ceiling that the Python gRPC transport sets for 1 and 2 hops.

Every shape runs with its default flags: fsync on every acknowledged write (group commit),
metadata and topology in SQLite. Data go over the wire as packed little-endian float32.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from bench.harness import (
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    K,
    Labels,
    Matrix,
    System,
    pkg_version,
    worker_main,
)
from tests.clusterproc import ClusterProcess
from tests.procutil import wait_for_ready_file
from vsproto.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
    shard_service_pb2,
    shard_service_pb2_grpc,
    types_pb2,
)

REPO = Path(__file__).resolve().parent.parent
COLLECTION = "bench"
INGEST_BATCH = 1000
INGEST_THREADS = 4
MAX_MESSAGE = 256 << 20


def packed(matrix: Matrix) -> types_pb2.Vectors:
    rows = np.ascontiguousarray(matrix, dtype="<f4")
    return types_pb2.Vectors(dimension=rows.shape[1], packed=rows.tobytes())


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


class SingleNodeProcess:
    """``python -m server --local-shard``: the public server owning one in-process shard."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "server.log"
        ready = workdir / "server.ready"
        command = [
            sys.executable,
            "-m",
            "server",
            "--database-url",
            f"sqlite:///{workdir / 'meta.db'}",
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            "--local-shard",
            str(workdir / "shard"),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1")
            )
        try:
            self.address = wait_for_ready_file(self.proc, ready, 120.0, "server", self.log_tail)
        except TimeoutError:
            self.stop()
            raise

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class PackedQuerySystem(System):
    """A gRPC system whose single-query requests are built before the clock (per ef setting);
    ``search_one`` takes a query's index."""

    def request(self, queries: Matrix, ef: int) -> Any:
        raise NotImplementedError

    def set_ef(self, ef: int) -> None:
        self.ef = ef
        self.requests = [self.request(q[None, :], ef) for q in self.queries]

    def prepare_queries(self, queries: Matrix) -> list[Any]:
        self.queries = queries
        self.set_ef(getattr(self, "ef", 64))
        return list(range(len(queries)))


class OursSystem(PackedQuerySystem):
    """The public SearchService over gRPC; subclasses start the processes."""

    shards = 1
    shape = "?"

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def load(self, base: Matrix) -> dict[str, float]:
        address = self.start()
        options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
        self.channel = grpc.insecure_channel(address, options=options)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        self.stub = search_service_pb2_grpc.SearchServiceStub(self.channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(self.channel)
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
            request = search_service_pb2.UpsertRequest(
                collection=COLLECTION, vectors=packed(base[lo : lo + INGEST_BATCH])
            )
            for i in range(lo, min(n, lo + INGEST_BATCH)):
                request.items.add(id=str(i))
            requests.append(request)
        start = time.perf_counter()
        with ThreadPoolExecutor(INGEST_THREADS) as pool:
            acked = sum(reply.upserted for reply in pool.map(self.stub.Upsert, requests))
        ack = time.perf_counter() - start
        compacted = self.admin.Compact(admin_service_pb2.CompactRequest(collection=COLLECTION, wait=True))
        indexed = time.perf_counter() - start
        in_graphs = sum(s.graph_elements for s in compacted.shards)
        pending = sum(s.delta_size for s in compacted.shards)
        count = self.stub.DescribeCollection(search_service_pb2.DescribeCollectionRequest(collection=COLLECTION)).count
        if acked != n or count != n or in_graphs != n or pending:
            raise RuntimeError(f"after ingest: acked {acked}, count {count}, in graphs {in_graphs}, delta {pending}")
        self.info = {
            "version": f"git {git_commit()}, grpcio {pkg_version('grpcio')}, hnswlib {pkg_version('hnswlib')}",
            "shape": self.shape,
            "index": f"HNSW (hnswlib) per shard, M={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}, metric ip",
            "consistency": "an Upsert is acknowledged once the vectors are fsync'ed in every owning shard's WAL "
            "(group commit) and searchable (exact delta layer); indexed = AdminService.Compact(wait=true) returned "
            "with every item in a graph",
            "ingest": f"SearchService.Upsert, {INGEST_BATCH} items per request (ids only, no metadata), "
            f"{INGEST_THREADS} client threads on one channel",
            "items_per_shard": {s.shard_id: s.count for s in compacted.shards},
            "ef_setting": "SearchRequest.ef per request",
            "query": "SearchService.Search, one packed float32 query, k=10",
            "batch": "SearchService.Search with all queries packed in one request",
            "concurrent": "each client thread calls the same stub (one channel)",
        }
        return {"ack_s": ack, "indexed_s": indexed}

    def request(self, queries: Matrix, ef: int) -> Any:
        return search_service_pb2.SearchRequest(collection=COLLECTION, queries=packed(queries), k=K, ef=ef)

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


class SingleNode(OursSystem):
    name = "ours-single-node"
    shape = "single node: python -m server --local-shard (the shard in the server process, 1 hop)"

    def start(self) -> str:
        self.proc = SingleNodeProcess(self.workdir)
        return self.proc.address

    def stop(self) -> None:
        if hasattr(self, "proc"):
            self.proc.stop()


class Cluster(OursSystem):
    def start(self) -> str:
        self.cluster = ClusterProcess(self.workdir / "cluster", shards=self.shards)
        self.cluster.start()
        return self.cluster.address

    def stop(self) -> None:
        if hasattr(self, "cluster"):
            self.cluster.stop()


class OneShard(Cluster):
    name = "ours-1-shard"
    shards = 1
    shape = "python -m server.cluster --shards 1: the public server in front of 1 shard process (2 hops)"


class ThreeShards(Cluster):
    name = "ours-3-shards"
    shards = 3
    shape = "python -m server.cluster --shards 3: the public server fanning out to 3 shard processes (2 hops)"


class Transport(PackedQuerySystem):
    """bench/transport_probe.py's servers over a raw hnswlib index of the same rows."""

    hops = 1
    backends = 1

    def cached_index(self, base: Matrix, labels: npt.NDArray[np.int64] | None = None) -> tuple[Path, float]:
        """The raw index over ``base`` and the seconds its build took. Built once per data set and
        size and kept in ``$VS_BENCH_CACHE`` (default bench/data/cache; the build is the same
        figure as the hnswlib peer's), so the 1- and 2-hop systems and later runs share it."""
        import hashlib

        import hnswlib

        cache = Path(os.environ.get("VS_BENCH_CACHE", REPO / "bench" / "data" / "cache"))
        labels = np.arange(len(base)) if labels is None else labels
        sample = base[:: max(1, len(base) // 1000)].tobytes() + labels[:: max(1, len(base) // 1000)].tobytes()
        digest = hashlib.blake2b(sample, digest_size=8).hexdigest()
        stem = f"hnsw-ip-M{HNSW_M}-efc{HNSW_EF_CONSTRUCTION}-{len(base)}x{base.shape[1]}-{digest}"
        path, timing = cache / f"{stem}.bin", cache / f"{stem}.build_s"
        if path.exists() and timing.exists():
            return path, float(timing.read_text())
        cache.mkdir(parents=True, exist_ok=True)
        index = hnswlib.Index(space="ip", dim=base.shape[1])
        index.init_index(max_elements=len(base), M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
        start = time.perf_counter()
        index.add_items(base, labels)
        built = time.perf_counter() - start
        index.save_index(str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)
        timing.write_text(f"{built:.3f}\n")
        return path, built

    def load(self, base: Matrix) -> dict[str, float]:
        from bench import transport_probe

        dim = base.shape[1]
        self.children = []
        built = 0.0
        for part in range(self.backends):  # backend i holds rows i, i + backends, ... (global labels)
            labels = np.arange(part, len(base), self.backends)
            path, secs = self.cached_index(np.ascontiguousarray(base[labels]), labels)
            built += secs
            self.children.append(transport_probe.Child(["--serve", "search", "--index", str(path), "--dim", str(dim)]))
        if self.hops == 2:
            targets = ",".join(child.address for child in self.children)
            self.children.append(transport_probe.Child(["--serve", "forward", "--target", targets]))
        options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
        self.channel = grpc.insecure_channel(self.children[-1].address, options=options)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        self.stub = shard_service_pb2_grpc.ShardServiceStub(self.channel)
        self.info = {
            "version": f"grpcio {pkg_version('grpcio')}, hnswlib {pkg_version('hnswlib')}",
            "shape": f"{self.hops} hop(s): "
            + ("client -> a" if self.hops == 1 else f"client -> b (forward) -> {self.backends} x a"),
            "index": "raw hnswlib.Index(space='ip'), add_items with all threads, saved and loaded by server (a); "
            "built once per data set and cached (ingest = that build's time)",
            "consistency": "no writes: the index is built before the servers start (ingest = the raw build)",
            "server": "(a) np.frombuffer + knn_query(k, ef from the request; 1 thread for 1 query, all for a batch); "
            "(b) a blocking call to (a) on one channel",
            "query": "ShardService.Search, one packed float32 query, k=10",
            "batch": "all queries packed in one request",
        }
        return {"ack_s": built, "indexed_s": built}

    def request(self, queries: Matrix, ef: int) -> Any:
        return shard_service_pb2.SearchRequest(collection="probe", queries=packed(queries), k=K, ef=ef)

    def search_one(self, query: Any) -> list[int]:
        reply = self.stub.Search(self.requests[query])
        return [int(x) for x in reply.results[0].ids]

    def search_batch(self, queries: Matrix) -> Labels:
        reply = self.stub.Search(self.request(queries, self.ef))
        return np.array([[int(x) for x in r.ids] for r in reply.results], dtype=np.int64)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()
        for child in reversed(getattr(self, "children", [])):
            child.stop()


class OneHop(Transport):
    name = "transport-1-hop"
    hops = 1


class TwoHops(Transport):
    name = "transport-2-hops"
    hops = 2


class TwoHopsThreeBackends(Transport):
    """The limit for the 3-shard shape: (b) fans each query out to three (a) servers, each over a
    third of the rows, in parallel, and merges their top k."""

    name = "transport-2-hops-3-backends"
    hops = 2
    backends = 3


OURS: dict[str, type[System]] = {
    "ours-single-node": SingleNode,
    "ours-1-shard": OneShard,
    "ours-3-shards": ThreeShards,
    "transport-1-hop": OneHop,
    "transport-2-hops": TwoHops,
    "transport-2-hops-3-backends": TwoHopsThreeBackends,
}

if __name__ == "__main__":
    sys.exit(worker_main(OURS))
