"""What the Python SDK costs a caller against the raw generated stubs, in the same run.

One single-node server (``python -m server --local-shard``), N random vectors loaded with the
SDK's ``bulk_upsert`` and folded into the graph; then rounds that alternate the two clients, one
caller each, the same queries in the same order: (a) the raw stubs, with the request built per
query as a caller without the SDK must (pack the vector, fill the message) and the reply read into
(id, distance) pairs; (b) ``Client.search(collection, vector, k=...)``, which also converts the
reply's metadata into ``Metadata`` objects. Both ask for metadata (the SDK's default).

    .venv/bin/python bench/sdk_overhead.py [--n 20000] [--dim 128] [--queries 300] [--rounds 5]

Writes ``bench/results/sdk-overhead.md``: QPS and p50/p99 per client (median over rounds) and
the ratio SDK / stubs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vectorsearch_client import Client

from testkit.serverproc import SingleNodeProcess
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

OUT = Path(__file__).resolve().parent / "results" / "sdk-overhead.md"
K = 10


def stubs_round(stub: pb_grpc.SearchServiceStub, queries: np.ndarray) -> list[float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        request = pb.SearchRequest(
            collection="bench",
            queries=types_pb2.Vectors(dimension=q.shape[0], packed=q.astype("<f4").tobytes()),
            k=K,
            include_metadata=True,
        )
        reply = stub.Search(request)
        hits = [(h.id, h.distance) for h in reply.results[0].hits]
        times.append(time.perf_counter() - t0)
        assert len(hits) == K
    return times


def sdk_round(client: Client, queries: np.ndarray) -> list[float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        hits = client.search("bench", q, k=K)
        times.append(time.perf_counter() - t0)
        assert len(hits) == K
    return times


def summary(rounds: list[list[float]]) -> dict[str, float]:
    qps = statistics.median(len(r) / sum(r) for r in rounds)
    p50 = statistics.median(float(np.percentile(r, 50)) for r in rounds) * 1000
    p99 = statistics.median(float(np.percentile(r, 99)) for r in rounds) * 1000
    return {"qps": qps, "p50": p50, "p99": p99}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rng = np.random.default_rng(17)
    data = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        server = SingleNodeProcess(Path(tmp) / "node")
        address = server.start()
        try:
            with Client(address, timeout=60) as client, grpc.insecure_channel(address) as channel:
                client.create_collection("bench", args.dim)
                client.bulk_upsert("bench", [f"v{i}" for i in range(args.n)], data, progress=False)
                client.compact("bench", wait=True)
                stub = pb_grpc.SearchServiceStub(channel)
                stubs_round(stub, queries[:50])  # warm both paths
                sdk_round(client, queries[:50])
                raw: list[list[float]] = []
                sdk: list[list[float]] = []
                for _ in range(args.rounds):
                    raw.append(stubs_round(stub, queries))
                    sdk.append(sdk_round(client, queries))
        finally:
            server.stop()
    a, b = summary(raw), summary(sdk)
    lines = [
        "# Python SDK vs raw stubs (single client, single node)",
        "",
        f"`.venv/bin/python bench/sdk_overhead.py --n {args.n} --dim {args.dim} --queries {args.queries} "
        f"--rounds {args.rounds}`: {args.n} random {args.dim}-d vectors, k={K}, metadata asked, rounds alternating "
        "the clients; medians over rounds. Machine: 2 shared cores (noisy: read the ratio, not the times).",
        "",
        "| client | QPS | p50 ms | p99 ms |",
        "|---|---:|---:|---:|",
        f"| raw stubs | {a['qps']:.0f} | {a['p50']:.2f} | {a['p99']:.2f} |",
        f"| SDK `Client.search` | {b['qps']:.0f} | {b['p50']:.2f} | {b['p99']:.2f} |",
        "",
        f"SDK / stubs QPS: **{b['qps'] / a['qps']:.2f}x**; p50 {b['p50'] / a['p50']:.2f}x.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
