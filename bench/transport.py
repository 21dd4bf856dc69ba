"""The bare transport limit: minimal gRPC servers around a raw hnswlib index, as systems of the
harness (``transport-1-hop``, ``transport-2-hops``, ``transport-2-hops-3-backends``).

No project server code is involved. Raw hnswlib builds the index over the same rows (``add_items``
on all cores; that build is the "ingest" figure, cached in ``$VS_BENCH_CACHE``, default
bench/data/cache), then child processes of this script (hidden ``--serve`` mode) serve it:

* (a) ``--serve search``: per ``ShardService.Search``, ``np.frombuffer`` of the packed queries,
  ``knn_query`` (k and ef from the request; one thread for one query, all cores for a batch) and a
  ``SearchResponse``; nothing else;
* (b) ``--serve forward``: forwards each Search to (a) with a blocking call on one channel; with
  several (a) servers (each over a share of the rows) it calls them in parallel (the first on its
  own thread, the others on a pool of long-lived threads) and merges their top k by distance.

Every server uses the same thread-pool size as ours (max(8, 4 x cores)). A child exits when its
parent closes its stdin, so it stops even if the parent is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datasets import DATA, K
from bench.harness import HNSW_EF_CONSTRUCTION, HNSW_M, Labels, Matrix, PreparedQuerySystem
from bench.machine import pkg_version
from testkit.shard_client import pack
from vsproto.v1 import shard_service_pb2, shard_service_pb2_grpc

SERVER_WORKERS = max(8, 4 * (os.cpu_count() or 1))  # the same pool size as our servers
READY_TIMEOUT_S = 60.0
MAX_MESSAGE = 256 << 20
GRPC_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]


# ---------------------------------------------------------------- servers (child side)


class SearchServicer(shard_service_pb2_grpc.ShardServiceServicer):
    """Server (a): frombuffer + knn_query, nothing else. ef changes only when a request asks
    for another value (the harness keeps one ef per phase)."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self.ef = 0
        self.lock = threading.Lock()

    def Search(self, request: Any, context: grpc.ServicerContext) -> Any:
        q = np.frombuffer(request.queries.packed, dtype=np.float32).reshape(-1, request.queries.dimension)
        if request.ef and request.ef != self.ef:
            with self.lock:
                self.index.set_ef(request.ef)
                self.ef = request.ef
        labels, distances = self.index.knn_query(q, k=request.k or K, num_threads=1 if len(q) == 1 else -1)
        return shard_service_pb2.SearchResponse(
            results=[
                shard_service_pb2.QueryResult(ids=[str(x) for x in row], distances=dist)
                for row, dist in zip(labels.tolist(), distances.tolist(), strict=True)
            ]
        )


class ForwardServicer(shard_service_pb2_grpc.ShardServiceServicer):
    """Server (b): forwards to one (a), or fans out to several and merges their top k."""

    def __init__(self, targets: list[str]) -> None:
        self.channels = [grpc.insecure_channel(t, options=GRPC_OPTIONS) for t in targets]
        self.stubs = [shard_service_pb2_grpc.ShardServiceStub(c) for c in self.channels]
        self.pool = ThreadPoolExecutor(max_workers=4 * SERVER_WORKERS)

    def Search(self, request: Any, context: grpc.ServicerContext) -> Any:
        if len(self.stubs) == 1:
            return self.stubs[0].Search(request)
        futures = [self.pool.submit(stub.Search, request) for stub in self.stubs[1:]]
        replies = [self.stubs[0].Search(request), *(f.result() for f in futures)]
        k = request.k or K
        out = shard_service_pb2.SearchResponse()
        for q in range(len(replies[0].results)):
            ids = [i for r in replies for i in r.results[q].ids]
            dist = np.array([d for r in replies for d in r.results[q].distances], dtype=np.float32)
            order = np.argsort(dist, kind="stable")[:k].tolist()
            out.results.add(ids=[ids[i] for i in order], distances=dist[order].tolist())
        return out


def serve(args: argparse.Namespace) -> int:
    """Child mode: start the server, print ``PORT <n>``, run until stdin closes (parent gone)."""
    import hnswlib

    servicer: Any
    if args.serve == "search":
        index = hnswlib.Index(space="ip", dim=args.dim)
        index.load_index(args.index)
        servicer = SearchServicer(index)
    else:
        servicer = ForwardServicer(args.target.split(","))
    server = grpc.server(ThreadPoolExecutor(max_workers=SERVER_WORKERS), options=GRPC_OPTIONS)
    shard_service_pb2_grpc.add_ShardServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    sys.stdin.read()  # the parent holds our stdin open; EOF means it exited (even by SIGKILL)
    server.stop(grace=None)
    return 0


class Child:
    """A ``--serve`` child process of this script, stopped by closing its stdin."""

    def __init__(self, argv: list[str]) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        stdout = self.proc.stdout
        assert stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(READY_TIMEOUT_S)
        if not line or not line[0].startswith("PORT "):
            self.stop()
            raise RuntimeError(f"server child did not start (got {line!r}, rc={self.proc.poll()})")
        self.address = f"127.0.0.1:{int(line[0].split()[1])}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)


# ---------------------------------------------------------------- systems (client side)


def cached_index(base: Matrix, labels: npt.NDArray[np.int64]) -> tuple[Path, float]:
    """The raw index over ``base`` and the seconds its build took. Built once per data set and
    size and kept in ``$VS_BENCH_CACHE`` (default bench/data/cache), so the transport systems and
    later runs share it."""
    import hnswlib

    cache = Path(os.environ.get("VS_BENCH_CACHE", DATA / "cache"))
    step = max(1, len(base) // 1000)
    digest = hashlib.blake2b(base[::step].tobytes() + labels[::step].tobytes(), digest_size=8).hexdigest()
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


class Transport(PreparedQuerySystem):
    hops = 1
    backends = 1

    def load(self, base: Matrix) -> dict[str, float]:
        self.children: list[Child] = []
        built = 0.0
        for part in range(self.backends):  # backend i holds rows i, i + backends, ... (global labels)
            labels = np.arange(part, len(base), self.backends)
            path, secs = cached_index(np.ascontiguousarray(base[labels]), labels)
            built += secs
            self.children.append(Child(["--serve", "search", "--index", str(path), "--dim", str(base.shape[1])]))
        if self.hops == 2:
            targets = ",".join(child.address for child in self.children)
            self.children.append(Child(["--serve", "forward", "--target", targets]))
        self.channel = grpc.insecure_channel(self.children[-1].address, options=GRPC_OPTIONS)
        grpc.channel_ready_future(self.channel).result(timeout=READY_TIMEOUT_S)
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
        return shard_service_pb2.SearchRequest(collection="probe", queries=pack(queries), k=K, ef=ef)

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


class TwoHops(Transport):
    name = "transport-2-hops"
    hops = 2


class TwoHopsThreeBackends(Transport):
    """The limit for the 3-shard shape: (b) fans each query out to three (a) servers."""

    name = "transport-2-hops-3-backends"
    hops = 2
    backends = 3


TRANSPORT = {cls.name: cls for cls in (OneHop, TwoHops, TwoHopsThreeBackends)}


def main(argv: list[str] | None = None) -> int:
    """The hidden ``--serve`` child mode (the systems run inside bench/ours.py's workers)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=["search", "forward"], required=True)
    parser.add_argument("--index", help="(search) the saved hnswlib index")
    parser.add_argument("--dim", type=int, help="(search) its dimension")
    parser.add_argument("--target", help="(forward) comma-separated addresses of the (a) servers")
    return serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
