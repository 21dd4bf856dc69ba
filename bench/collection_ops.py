"""Upsert and search rates of one in-process ``Collection`` (no server): a quick A/B of engine
changes on their hot paths (e.g. the graph's id table, bench/results/memory.md).

A 20,000 x 384 collection (seeded), 1,000-row upserts of new ids, a compaction, the same ids
written again (each supersedes a graph label), a compaction, then 3 rounds of 2,000 single-query
searches (k=10, ef=64; the best round) and one round of 100-query batches. Run it for each tree
alternately (A, B, A, B) and compare within the run: this machine's noise is larger than the
differences such changes make.

Usage: ``python bench/collection_ops.py [--root DIR] [--n 20000]`` (``--root``: the source tree to
import, e.g. a worktree of an older commit).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    import numpy as np

    from core.spec import Metric, make_spec
    from shard.collection import Collection, CollectionOptions

    n, dim, batch = args.n, 384, 1_000
    rng = np.random.default_rng(0)
    data = rng.standard_normal((n, dim)).astype(np.float32)
    queries = rng.standard_normal((2_000, dim)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_spec("c", dim, Metric.INNER_PRODUCT.value)
        col = Collection.create(Path(tmp) / "c", spec, CollectionOptions(build_threads=2))
        rates = []
        for _ in range(2):  # new ids, then the same ids again (graph labels superseded)
            started = time.perf_counter()
            for lo in range(0, n, batch):
                col.upsert([f"id-{i}" for i in range(lo, lo + batch)], data[lo : lo + batch])
            rates.append(n / (time.perf_counter() - started))
            col.compact()
        for i in range(200):
            col.search(queries[i : i + 1], 10, 64)
        single = []
        for _ in range(3):
            started = time.perf_counter()
            for i in range(len(queries)):
                col.search(queries[i : i + 1], 10, 64)
            single.append(len(queries) / (time.perf_counter() - started))
        started = time.perf_counter()
        for lo in range(0, len(queries), 100):
            col.search(queries[lo : lo + 100], 10, 64)
        batched = len(queries) / (time.perf_counter() - started)
        col.close()
    print(
        f"{args.root}: upsert new {rates[0]:,.0f}/s, rewrite {rates[1]:,.0f}/s, "
        f"single-query QPS {max(single):,.0f}, batched {batched:,.0f} queries/s"
    )


if __name__ == "__main__":
    main()
