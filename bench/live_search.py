"""The search a fold's additions run beside (``_vsnative`` ``live_search``) against hnswlib's own.

While ``add_items`` inserts into an index, its searches take ``live_search`` (each link list copied
under its node's lock, only nodes whose insertion has ended read); otherwise hnswlib's lock-free
``searchKnn``. This builds one index and times both on the same queries in one process, alternating
(``_vsnative._force_live_search``), single-threaded, one query per call, and checks they return the
same labels.

Usage: ``python bench/live_search.py [--n 50000] [--dim 384] [--rounds 7] [--queries 500]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from shard import _vsnative


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=64, help="results asked for (the shard asks max(k, ef))")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    picks = rng.choice(args.n, args.queries, replace=False)
    queries = data[picks] + 0.05 * rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    index = _vsnative.Index("ip", args.dim)
    index.init_index(max_elements=args.n, M=16, ef_construction=100, random_seed=1)
    index.add_items(data, np.arange(args.n), num_threads=2)
    index.set_ef(1)

    def timed(live: bool) -> tuple[float, np.ndarray]:
        _vsnative._force_live_search(live)
        started = time.perf_counter()
        labels = [index.knn_query(queries[i : i + 1], k=args.k, num_threads=1)[0] for i in range(len(queries))]
        micros = (time.perf_counter() - started) / len(queries) * 1e6
        return micros, np.concatenate(labels)

    ratios = []
    for _ in range(args.rounds):
        fast, fast_labels = timed(False)
        live, live_labels = timed(True)
        same = float(np.mean(fast_labels == live_labels))
        ratios.append(live / fast)
        print(f"hnswlib {fast:7.1f} us  live {live:7.1f} us  live/hnswlib {live / fast:.3f}  same labels {same:.3f}")
    _vsnative._force_live_search(False)
    print(f"median live/hnswlib over {args.rounds} rounds: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
