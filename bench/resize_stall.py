"""How long ``resize_index`` holds a native index's searches back (a fold's ``reserve``).

    .venv/bin/python bench/resize_stall.py                      # this tree
    .venv/bin/python bench/resize_stall.py --root /tmp/wt-base  # another tree (a git worktree), for before/after

Builds a ``shard._vsnative`` index of ``--n`` seeded random rows (``--dim``, M=16,
ef_construction 40: only the level-0 block's size matters here), then grows it ``--growths``
times by an eighth (what ``shard.graph.reserve`` asks for) and prints each ``resize_index`` call's
wall time. Checks that searches return the same labels after the growths and that inserts work.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    p.add_argument("--n", type=int, nargs="+", default=[50_000, 100_000])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--growths", type=int, default=5)
    args = p.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    import numpy as np

    from shard import _vsnative

    for n in args.n:
        rng = np.random.default_rng(0)
        data = rng.standard_normal((n, args.dim)).astype(np.float32)
        index = _vsnative.Index("ip", args.dim)
        index.init_index(n, 16, 40, 100)
        index.add_items(data, np.arange(n), num_threads=2)
        queries = data[:50]
        before = index.knn_query(queries, k=10)[0]
        capacity, times = n, []
        for _ in range(args.growths):
            capacity += capacity // 8
            started = time.perf_counter()
            index.resize_index(capacity)
            times.append((time.perf_counter() - started) * 1000)
        if not (index.knn_query(queries, k=10)[0] == before).all():
            raise SystemExit("labels changed across the growths")
        index.add_items(rng.standard_normal((1000, args.dim)).astype(np.float32), np.arange(n, n + 1000))
        if index.element_count != n + 1000:
            raise SystemExit("inserts after the growths failed")
        print(f"{args.root}: {n} x {args.dim}: resize_index ms " + " / ".join(f"{t:.1f}" for t in times))


if __name__ == "__main__":
    main()
