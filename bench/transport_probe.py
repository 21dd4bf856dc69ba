"""Bare transport probe: what one and two Python gRPC hops cost around a raw hnswlib search.

    python bench/transport_probe.py [--n 20000] [--dim 384] [--ef 32] [--queries 2000] [--json OUT]
    python bench/transport_probe.py --quick        # n=5000, 500 queries, well under 30 s

No project server code is involved. The probe builds a raw hnswlib index (space ip on
L2-normalised vectors, M=16, ef_construction=200), saves it to a temporary file, and starts two
child processes of this same script (hidden ``--serve`` mode):

* (a) a minimal gRPC server whose only work per ``ShardService.Search`` is ``np.frombuffer`` of
  the packed float32 query, ``knn_query(k=10)`` on the loaded index, and a ``SearchResponse`` with
  the labels (as strings) and distances. A request whose ``collection`` is ``"echo"`` gets an
  empty ``SearchResponse`` without searching;
* (b) a pass-through server that forwards every Search to (a) over one reused channel with a plain
  blocking call and returns the reply.

One client (one reused channel, blocking calls, one query per request, requests built before the
clock starts, ``--warmup`` calls first) then measures: raw hnswlib in-process, 1 hop (client → a),
2 hops (client → b → a), and the echo over 1 and 2 hops. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import hnswlib
import numpy as np
import numpy.typing as npt

from bench.shard_bench import cpu_model, now_utc, version_of
from tests.datasets import data_and_queries
from vsproto.v1 import shard_service_pb2, shard_service_pb2_grpc, types_pb2

Matrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]

K = 10
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
ECHO = "echo"
SERVER_WORKERS = max(8, 4 * (os.cpu_count() or 1))  # the same pool size as our servers
READY_TIMEOUT_S = 60.0


# ====================================================================== helpers
def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def normalise(x: Matrix) -> Matrix:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def exact_top_k(data: Matrix, queries: Matrix, k: int, chunk: int = 256) -> Labels:
    """Exact top-k by inner product (vectors already normalised), float64, ties to the lower index."""
    data64 = data.astype(np.float64)
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        dist = -(queries[start : start + chunk].astype(np.float64) @ data64.T)
        out[start : start + chunk] = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return out


def recall(truth: Labels, found: Sequence[Sequence[int]]) -> float:
    k = truth.shape[1]
    hits = sum(len(set(truth[q].tolist()) & set(list(found[q])[:k])) for q in range(len(found)))
    return hits / (k * len(found))


def summary(samples_s: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(samples_s, dtype=np.float64)
    total = float(arr.sum())
    return {
        "qps": len(arr) / total,
        "p50_ms": float(np.percentile(arr, 50) * 1000.0),
        "p99_ms": float(np.percentile(arr, 99) * 1000.0),
        "mean_ms": total / len(arr) * 1000.0,
    }


# ====================================================================== servers (child side)
class SearchServicer(shard_service_pb2_grpc.ShardServiceServicer):
    """Server (a): frombuffer + knn_query, nothing else.

    ``k`` and ``ef`` come from the request when set (ef through ``set_ef``, changed only when a
    request asks for another value; the benchmarks keep one ef per phase). One query is searched
    on the calling thread, a batch on all cores.
    """

    def __init__(self, index: Any, dim: int, ef: int) -> None:
        self.index = index
        self.dim = dim
        self.ef = ef
        self.lock = threading.Lock()

    def Search(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.collection == ECHO:
            return shard_service_pb2.SearchResponse()
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
    """Server (b): forwards to (a) over one reused channel with a plain blocking call. With
    several targets (a fan-out, as a router in front of several shards), the calls run in
    parallel (the first on the calling thread, the others on a pool of long-lived threads) and
    the replies are merged by distance into the top k per query."""

    def __init__(self, targets: list[str]) -> None:
        self.channels = [grpc.insecure_channel(t) for t in targets]
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
    servicer: Any
    if args.serve == "search":
        index = hnswlib.Index(space="ip", dim=args.dim)
        index.load_index(args.index)
        index.set_ef(args.ef)
        servicer = SearchServicer(index, args.dim, args.ef)
    else:
        servicer = ForwardServicer(args.target.split(","))
    server = grpc.server(ThreadPoolExecutor(max_workers=SERVER_WORKERS))
    shard_service_pb2_grpc.add_ShardServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)
    # The parent holds our stdin open; EOF means it exited (even by SIGKILL), so we stop too.
    sys.stdin.read()
    server.stop(grace=None)
    return 0


# ====================================================================== client side
class Child:
    """A ``--serve`` child process of this script, killed on exit whatever happens."""

    def __init__(self, argv: list[str]) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = self._read_port()

    def _read_port(self) -> int:
        stdout = self.proc.stdout
        assert stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(READY_TIMEOUT_S)
        if not line or not line[0].startswith("PORT "):
            self.stop()
            raise RuntimeError(f"server child did not start (got {line!r}, rc={self.proc.poll()})")
        return int(line[0].split()[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=5)


def timed(call: Callable[[int], Any], count: int, warmup: int) -> tuple[list[float], list[Any]]:
    for i in range(warmup):
        call(i % count)
    samples: list[float] = []
    results: list[Any] = []
    clock = time.perf_counter
    for i in range(count):
        t0 = clock()
        out = call(i)
        samples.append(clock() - t0)
        results.append(out)
    return samples, results


def grpc_mode(address: str, requests: list[Any], warmup: int) -> tuple[list[float], list[Any]]:
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=READY_TIMEOUT_S)
        stub = shard_service_pb2_grpc.ShardServiceStub(channel)
        return timed(lambda i: stub.Search(requests[i]), len(requests), warmup)


def run_probe(args: argparse.Namespace) -> dict[str, Any]:
    machine = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "grpcio": version_of("grpcio"),
        "hnswlib": version_of("hnswlib"),
        "numpy": version_of("numpy"),
        "loadavg_at_start": loadavg(),
    }
    started = now_utc()
    t_start = time.perf_counter()

    data_raw, queries_raw = data_and_queries(args.n, args.queries, args.dim, args.seed)
    data, queries = normalise(data_raw), normalise(queries_raw)
    truth = exact_top_k(data, queries, K)

    index = hnswlib.Index(space="ip", dim=args.dim)
    index.init_index(max_elements=args.n, M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, random_seed=args.seed)
    t0 = time.perf_counter()
    index.add_items(data, np.arange(args.n), num_threads=machine["nproc"])
    build_s = time.perf_counter() - t0
    index.set_ef(args.ef)

    modes: dict[str, dict[str, Any]] = {}

    def raw_call(i: int) -> Labels:
        labels, _ = index.knn_query(queries[i : i + 1], k=K, num_threads=1)
        return labels[0]

    samples, found = timed(raw_call, len(queries), args.warmup)
    modes["raw hnswlib, in-process"] = {**summary(samples), "recall": recall(truth, [f.tolist() for f in found])}

    search_requests = [
        shard_service_pb2.SearchRequest(
            collection="probe",
            k=K,
            queries=types_pb2.Vectors(dimension=args.dim, packed=queries[i].astype("<f4").tobytes()),
        )
        for i in range(len(queries))
    ]
    echo_requests = [
        shard_service_pb2.SearchRequest(
            collection=ECHO,
            k=K,
            queries=types_pb2.Vectors(dimension=args.dim, packed=queries[i].astype("<f4").tobytes()),
        )
        for i in range(len(queries))
    ]

    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="transport_probe_") as tmp:
        index_path = str(Path(tmp) / "index.bin")
        index.save_index(index_path)
        try:
            a = Child(["--serve", "search", "--index", index_path, "--dim", str(args.dim), "--ef", str(args.ef)])
            children.append(a)
            b = Child(["--serve", "forward", "--target", a.address])
            children.append(b)
            for name, address, reqs, searches in (
                ("gRPC 1 hop (client → a)", a.address, search_requests, True),
                ("gRPC 2 hops (client → b → a)", b.address, search_requests, True),
                ("echo 1 hop (no search)", a.address, echo_requests, False),
                ("echo 2 hops (no search)", b.address, echo_requests, False),
            ):
                samples, replies = grpc_mode(address, reqs, args.warmup)
                entry: dict[str, Any] = summary(samples)
                if searches:
                    entry["recall"] = recall(truth, [[int(x) for x in r.results[0].ids] for r in replies])
                modes[name] = entry
        finally:
            for child in reversed(children):
                child.stop()

    return {
        "probe": "bare transport limit",
        "command": shlex.join([sys.executable, *sys.argv]),
        "started_utc": started,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "params": {
            "n": args.n,
            "dim": args.dim,
            "queries": args.queries,
            "ef": args.ef,
            "k": K,
            "M": HNSW_M,
            "ef_construction": HNSW_EF_CONSTRUCTION,
            "seed": args.seed,
            "warmup": args.warmup,
            "server_workers": SERVER_WORKERS,
            "space": "ip on L2-normalised vectors",
        },
        "raw_build_s": round(build_s, 2),
        "modes": modes,
        "machine": {**machine, "loadavg_at_end": loadavg()},
    }


def render(report: dict[str, Any]) -> str:
    p = report["params"]
    m = report["machine"]
    lines = [
        f"Bare transport probe: n={p['n']} dim={p['dim']} ef={p['ef']} k={p['k']} queries={p['queries']} "
        f"(warm-up {p['warmup']}), {report['started_utc']}",
        f"machine: nproc={m['nproc']}, {m['cpu_model']}, load {m['loadavg_at_start']} -> {m['loadavg_at_end']}",
        "",
        "| mode | QPS | p50 ms | p99 ms | recall@10 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, e in report["modes"].items():
        rec = f"{e['recall']:.4f}" if "recall" in e else "–"
        lines.append(f"| {name} | {e['qps']:,.0f} | {e['p50_ms']:.3f} | {e['p99_ms']:.3f} | {rec} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="data set size (default 20000; 5000 with --quick)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--ef", type=int, default=32)
    ap.add_argument("--queries", type=int, default=None, help="measured queries (default 2000; 500 with --quick)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="n=5000, 500 queries")
    ap.add_argument("--json", type=Path, default=None, help="write every figure, the machine and the command here")
    # Hidden child mode.
    ap.add_argument("--serve", choices=["search", "forward"], help=argparse.SUPPRESS)
    ap.add_argument("--index", help=argparse.SUPPRESS)
    ap.add_argument("--target", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.n is None:
        args.n = 5000 if args.quick else 20000
    if args.queries is None:
        args.queries = 500 if args.quick else 2000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve(args)
    report = run_probe(args)
    print(render(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
