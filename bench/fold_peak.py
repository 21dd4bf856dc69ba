"""Peak RSS a small fold adds to a process holding a large graph (issue #19 item 1, the steady-update
case that bench/memory.py's bulk load does not run).

In one process (the ``Collection`` API, no server): ``--n`` rows of 384-d in a graph (explicit
compaction), then ``--folds`` times: upsert ``--step`` rows (half rewrite existing ids, half new),
trim the heap, reset the peak (``/proc/self/clear_refs`` 5), fold in the background mode (no
checkpoint due), and report VmHWM minus the RSS before the fold. Linux only.

Usage: ``python bench/fold_peak.py [--root DIR] [--n 50000] [--step 2500] [--folds 3]``
(``--root``: the source tree to import, e.g. a worktree of an older commit, for before/after).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def status() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, value = line.split(":", 1)
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--step", type=int, default=2_500)
    parser.add_argument("--folds", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    import numpy as np

    from core.spec import Metric, make_spec
    from shard import heap
    from shard.collection import Collection, CollectionOptions

    n, step = args.n, args.step
    data = np.random.default_rng(0).standard_normal((n + args.folds * step, args.dim)).astype(np.float32)
    options = CollectionOptions(compact_delta_items=10**9, compact_age_s=10**9, build_threads=2, checkpoint_rows=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        spec = make_spec("c", args.dim, Metric.INNER_PRODUCT.value)
        col = Collection.create(Path(tmp) / "c", spec, options)
        for lo in range(0, n, 10_000):
            hi = min(n, lo + 10_000)
            col.upsert([f"a{i}" for i in range(lo, hi)], data[lo:hi])
        col.compact()
        print(f"root {args.root}: graph of {n} x {args.dim}, folds of {step} rows (half rewrites)")
        for fold in range(args.folds):
            lo = n + fold * step
            rewrites = [f"a{i}" for i in range(fold * step, fold * step + step // 2)]
            ids = rewrites + [f"b{i}" for i in range(lo, lo + step - len(rewrites))]
            col.upsert(ids, data[lo : lo + len(ids)])
            heap.release_free_memory()
            before = status()["VmRSS"]
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # VmHWM := VmRSS
            started = time.perf_counter()
            col.compact(background=True)
            seconds = time.perf_counter() - started
            after = status()
            print(
                f"fold {fold}: RSS before {before:.1f} MiB, peak during the fold +{after['VmHWM'] - before:.1f} MiB, "
                f"after {after['VmRSS']:.1f} MiB, {seconds:.2f} s, graph {col.stats().graph_elements}"
            )
        col.close()


if __name__ == "__main__":
    main()
