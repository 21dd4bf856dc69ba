"""The main job for now: start a local shard, index a small seeded set, answer queries.

Run through ``bash scripts/demo.sh``. Starts ``python -m shard`` on a free loopback port with a
temporary data directory (or ``--data-dir``), upserts clustered vectors over gRPC, searches,
checks recall@10 against brute force, kills the shard with SIGKILL, restarts it and shows that
every acknowledged write is still there.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.datasets import data_and_queries, exact_top_k, recall_at_k
from tests.shardproc import ShardProcess


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="vs-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    shard = ShardProcess(root / "shard-0")
    client = shard.start()
    print(f"shard listening on {shard.address}, data in {shard.data_dir}")
    try:
        client.create_collection("demo", args.dim, "cosine")
        data, queries = data_and_queries(args.items, 200, args.dim, seed=42)
        ids = [f"item-{i}" for i in range(args.items)]
        started = time.perf_counter()
        for lo in range(0, args.items, 500):
            client.upsert("demo", ids[lo : lo + 500], data[lo : lo + 500])
        took = time.perf_counter() - started
        print(f"upserted {args.items} x {args.dim} vectors in {took:.2f}s ({args.items / took:,.0f}/s, fsync on)")
        client.compact("demo", wait=True)
        stats = client.stats("demo")
        print(f"compacted: {stats.graph_elements} in the graph, snapshot at seq {stats.snapshot_seq}")
        truth = exact_top_k(data, queries, 10, "cosine")
        results = client.search("demo", queries, 10)
        recall = recall_at_k(truth, [[h for h, _ in r] for r in results], ids)
        print(f"recall@10 over 200 queries: {recall:.3f}")
        print("nearest to query 0:", ", ".join(f"{i} ({d:.3f})" for i, d in results[0][:5]))
        client.upsert("demo", ["late-write"], queries[:1])
        client = shard.restart(signal.SIGKILL)
        print("killed the shard with SIGKILL and restarted it")
        top = client.search("demo", queries[:1], 1)[0][0]
        count = client.stats("demo").count
        print(f"after restart: {count} items, nearest to query 0 is {top[0]!r}")
        ok = recall >= 0.95 and top[0] == "late-write" and count == args.items + 1
        print("demo OK" if ok else "demo FAILED")
        return 0 if ok else 1
    finally:
        shard.stop()


if __name__ == "__main__":
    raise SystemExit(main())
