"""The main job: a local cluster on embedded defaults that indexes items and answers queries.

Run through ``bash scripts/demo.sh``. Starts ``python -m server.cluster`` (3 shard processes
and the public gRPC server; metadata in SQLite) in a temporary directory (or ``--data-dir``),
indexes seeded embedding-like vectors with image metadata through the public API, searches
with and without a metadata filter and checks recall@10 against brute force, kills one shard
with SIGKILL to show a partial answer that names it, restarts the cluster on the same data
and shows that every acknowledged write is back. (Embedding images and text with CLIP via
Triton comes with the embeddings issue; vectors stand in for them here.)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testkit.clusterproc import ClusterProcess
from testkit.datasets import data_and_queries
from testkit.truth import exact_top_k, recall_at_k
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import types_pb2


def packed(matrix: np.ndarray[Any, Any]) -> types_pb2.Vectors:
    return types_pb2.Vectors(dimension=matrix.shape[1], packed=np.ascontiguousarray(matrix, dtype="<f4").tobytes())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="vs-demo-"))
    cluster = ClusterProcess(root / "cluster", shards=3)
    stub = cluster.start()
    print(f"cluster up: public API on {cluster.address}, data in {cluster.data_dir}")
    try:
        spec = types_pb2.CollectionSpec(name="images", dimension=args.dim, metric=types_pb2.METRIC_COSINE)
        stub.CreateCollection(pb.CreateCollectionRequest(spec=spec))
        data, queries = data_and_queries(args.items, 200, args.dim, seed=42)
        ids = [f"img-{i}" for i in range(args.items)]
        started = time.perf_counter()
        for lo in range(0, args.items, 1000):
            request = pb.UpsertRequest(collection="images", vectors=packed(data[lo : lo + 1000]))
            for i in range(lo, min(lo + 1000, args.items)):
                item = request.items.add(id=ids[i])
                item.metadata.uri = f"file:///photos/{i:06d}.jpg"
                item.metadata.tags.append("outdoor" if i % 10 == 0 else "indoor")
                item.metadata.attributes["year"].int_value = 2000 + i % 25
            stub.Upsert(request)
        took = time.perf_counter() - started
        print(f"indexed {args.items} items ({args.dim}-d, with metadata) in {took:.2f}s, fsync on")
        reply = stub.Search(pb.SearchRequest(collection="images", queries=packed(queries), k=10, include_metadata=True))
        recall = recall_at_k(
            exact_top_k(data, queries, 10, "cosine"), [[h.id for h in r.hits] for r in reply.results], ids
        )
        print(f"recall@10 over 200 queries: {recall:.3f}")
        print(
            "nearest to query 0:", ", ".join(f"{h.metadata.uri} ({h.distance:.3f})" for h in reply.results[0].hits[:3])
        )
        outdoor = pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value="outdoor")))
        reply = stub.Search(pb.SearchRequest(collection="images", queries=packed(queries), k=10, filter=outdoor))
        subset = [i for i in range(args.items) if i % 10 == 0]
        truth = exact_top_k(data[subset], queries, 10, "cosine")
        filtered = recall_at_k(truth, [[h.id for h in r.hits] for r in reply.results], [ids[i] for i in subset])
        print(f"filtered (tag 'outdoor', 10% of items) recall@10: {filtered:.3f}")
        stub.Upsert(
            pb.UpsertRequest(collection="images", items=[pb.ItemMetadata(id="late-write")], vectors=packed(queries[:1]))
        )
        os.kill(cluster.shard_pid(1), signal.SIGKILL)
        time.sleep(0.2)
        partial = stub.Search(pb.SearchRequest(collection="images", queries=packed(queries[:1]), k=10))
        print(f"killed shard-1 with SIGKILL: partial={partial.partial}, failed shards {list(partial.failed_shards)}")
        cluster.stop()
        stub = cluster.start()
        count = stub.DescribeCollection(pb.DescribeCollectionRequest(collection="images")).count
        top = stub.Search(pb.SearchRequest(collection="images", queries=packed(queries[:1]), k=1)).results[0].hits[0].id
        print(f"restarted the cluster on the same data: {count} items, nearest to query 0 is {top!r}")
        ok = recall >= 0.95 and filtered >= 0.95 and partial.partial and count == args.items + 1 and top == "late-write"
        print("demo OK" if ok else "demo FAILED")
        return 0 if ok else 1
    finally:
        cluster.stop()


if __name__ == "__main__":
    raise SystemExit(main())
