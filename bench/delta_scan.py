"""The exact scan of a delta layer (``exact.search`` as shard/planner.py ``search_delta`` calls
it): one query against N unfolded rows, per metric, with the rows' squared norms kept by the
delta (what the shard does) against recomputing them per query (what it did before: ``norms``
not passed). Both run in the same process, alternating, so the ratio is what to read; also the
whole ``search_delta`` (visibility, ids) with kept norms, and the scan split over ``--threads``
threads at every size (the shard splits only past ``exact.PARALLEL_MIN_VALUES``).

    .venv/bin/python bench/delta_scan.py [--rows 2500 5000 10000 20000] [--reps 2000]

Prints a markdown table; bench/results/delta-scan.md holds a run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.machine import cpu_model, git_commit, loadavg
from shard import blas, exact, planner
from shard.delta import Delta

ROOT = Path(__file__).resolve().parent.parent


def micros(fn: Callable[[], object], reps: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - started) / reps * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[2500, 5000, 10000, 20000])
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--reps", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="the split scan's threads (search_threads)")
    args = p.parse_args()
    blas.limit_threads()  # as every shard process does (shard/blas.py)
    rng = np.random.default_rng(7)
    print(f"{cpu_model()}, code {git_commit(ROOT)}, load average {loadavg()}, dim {args.dim}, k 10, 1 query\n")
    print(
        f"| rows | metric | kept norms us | recomputed us | recomputed / kept | search_delta us "
        f"| split over {args.threads} us | 1 thread / split |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in args.rows:
        delta = Delta(args.dim, keep_norms=True)
        for lo in range(0, n, 500):
            rows = rng.standard_normal((500, args.dim)).astype(np.float32)
            delta.append([f"r{i}" for i in range(lo, lo + 500)], rows, lo + 1)
        query = rng.standard_normal((1, args.dim)).astype(np.float32)
        for space in ("l2", "ip"):
            a, b, c, d = measure(delta, query, space, args.rounds, args.reps, args.threads)
            print(f"| {n:,} | {space} | {a:.0f} | {b:.0f} | {b / a:.2f}x | {c:.0f} | {d:.0f} | {a / d:.2f}x |")


def measure(
    delta: Delta, query: np.ndarray, space: str, rounds: int, reps: int, threads: int
) -> tuple[float, float, float, float]:
    """Medians over alternating rounds (us): kept norms, recomputed norms, the whole search_delta
    (one thread), kept norms split over ``threads``."""
    blocks = list(delta.blocks())
    vectors = [b.vectors for b in blocks]
    norms = [b.norms for b in blocks]
    kept: list[float] = []
    recomputed: list[float] = []
    whole: list[float] = []
    split: list[float] = []
    threshold = exact.PARALLEL_MIN_VALUES
    for _ in range(rounds):
        kept.append(micros(lambda: exact.search(query, vectors, space, 10, None, norms), reps))
        recomputed.append(micros(lambda: exact.search(query, vectors, space, 10, None), reps))
        whole.append(micros(lambda: planner.search_delta(delta, None, query, 10, delta.rows + 1, space), reps))
        exact.PARALLEL_MIN_VALUES = 1  # split whatever the size, to show where it pays
        try:
            split.append(micros(lambda: exact.search(query, vectors, space, 10, None, norms, threads), reps))
        finally:
            exact.PARALLEL_MIN_VALUES = threshold
    return tuple(statistics.median(xs) for xs in (kept, recomputed, whole, split))  # type: ignore[return-value]


if __name__ == "__main__":
    main()
