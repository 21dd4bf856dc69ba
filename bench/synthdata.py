"""The synthetic data set for bench/compare.py, in the same layout as bench/realdata.py's.

    .venv/bin/python bench/synthdata.py                        # 100k x 512 -> bench/data/synthetic-100000x512
    .venv/bin/python bench/synthdata.py --n 1000000            # the 1M option
    .venv/bin/python bench/compare.py --data bench/data/synthetic-100000x512 ...

Clustered, embedding-like vectors from ``tests.datasets.data_and_queries`` (seeded), L2-normalised
so that inner product = cosine, as for the real set. Files: ``base.npy`` (n x dim float32),
``queries.npy`` (held-out, from the same generator), ``truth.npy`` (exact top-10 by inner product
in float64, ties to the lower index) and ``meta.json`` (written last: its presence marks a
complete set; a rerun with the same parameters does nothing).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.datasets import data_and_queries

ROOT = Path(__file__).resolve().parent.parent
K = 10


def unit_rows(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def exact_top_k(base: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """Top-k by inner product in float64 over chunks of the base (memory ~ queries x chunk)."""
    q64 = queries.astype(np.float64)
    best_scores = np.full((len(queries), k), -np.inf)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    chunk = 16_384
    for lo in range(0, len(base), chunk):
        scores = q64 @ base[lo : lo + chunk].astype(np.float64).T
        ids = np.arange(lo, lo + scores.shape[1], dtype=np.int64)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
        # sort by (-score, id): ties go to the lower index
        order = np.lexsort((all_ids, -all_scores), axis=1)[:, :k]
        best_scores = np.take_along_axis(all_scores, order, axis=1)
        best_ids = np.take_along_axis(all_ids, order, axis=1)
    return best_ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "bench" / "data" / f"synthetic-{args.n}x{args.dim}"
    params = {"n": args.n, "dim": args.dim, "queries": args.queries, "seed": args.seed, "k": K}
    meta_path = out / "meta.json"
    if meta_path.exists() and not args.force and json.loads(meta_path.read_text()).get("params") == params:
        print(f"synthdata: {out} is up to date")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data, queries = data_and_queries(args.n, args.queries, args.dim, args.seed)
    base, held_out = unit_rows(data), unit_rows(queries)
    generated = time.perf_counter() - start
    truth = exact_top_k(base, held_out, K)
    np.save(out / "base.npy", base)
    np.save(out / "queries.npy", held_out)
    np.save(out / "truth.npy", truth)
    total = round(time.perf_counter() - start, 1)
    meta: dict[str, object] = {
        "params": params,
        "model": f"synthetic clustered {args.dim}-d (tests.datasets.data_and_queries, unit rows)",
        "timings_s": {"generate": round(generated, 1), "total": total},
        "command": shlex.join(["python", *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"synthdata: wrote {out} in {total} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
