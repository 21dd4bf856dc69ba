"""The benchmark's data sets: build them once, load them for every system.

    .venv/bin/python bench/datasets.py synthetic [--n 100000] [--dim 512]    # -> bench/data/synthetic-NxDIM
    .venv-peers/bin/python bench/datasets.py minilm [--quick]                # -> bench/data/minilm[-quick]

A set is a directory: ``base.npy`` (n x dim float32, unit rows), ``queries.npy`` (held out, unit
rows), ``truth.npy`` (queries x 10 int64: the exact top-10 by inner product = cosine, from
testkit.truth), ``meta.json`` (parameters, timings, command; written last, so its presence marks a
complete set, and a rerun with the same parameters does nothing unless ``--force``); the MiniLM
set also has ``texts.json``. Sets:

* ``synthetic``: clustered, embedding-like vectors from ``testkit.datasets.data_and_queries``
  (seeded), L2-normalised;
* ``minilm``: all-MiniLM-L6-v2 embeddings (384-d) of English phrases (bench/minilm.py; needs
  ``.venv-peers``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model
from testkit.datasets import data_and_queries, unit_rows
from testkit.truth import exact_top_k

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
K = 10

Matrix = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


def load_data(
    data: Path, n: int | None, n_queries: int | None = None, with_truth: bool = True
) -> tuple[Matrix, Matrix, Labels, str]:
    """Base rows (the first ``n``), queries (the first ``n_queries``) and the exact top-K;
    recomputed when ``n`` cuts the base (with ``with_truth=False``: truth.npy as stored, never
    recomputed, for callers that bring their own)."""
    base = np.load(data / "base.npy", mmap_mode="r")
    queries = np.ascontiguousarray(np.load(data / "queries.npy")[:n_queries], dtype=np.float32)
    truth = np.load(data / "truth.npy")[:n_queries].astype(np.int64)
    if n is None or n >= base.shape[0] or not with_truth:
        return np.ascontiguousarray(base[:n], dtype=np.float32), queries, truth[:, :K], "truth.npy"
    sub = np.ascontiguousarray(base[:n], dtype=np.float32)
    return sub, queries, exact_top_k(sub, queries, K), f"exact top-{K} recomputed over the first {n} rows"


# ---------------------------------------------------------------- row fields and filters (issue #15)
#
# Every row of every set has the same metadata, a function of its row index only (so the first n
# rows of a set have the same fields whatever n): int attributes ``cat`` = row % 100 and
# ``cat1000`` = row % 1000, and the tag ``t5`` on about 5% of the rows, chosen by a hash of the
# row index (splitmix64) so that it is independent of ``cat``. A filter is a small JSON tree that
# each system translates into its own form (bench/ours.py, bench/peers.py):
#   {"eq": [field, int]}, {"lt": [field, int]}, {"tag": name}, {"and": [filter, ...]}, or None.

TAG = "t5"
TAG_SHARE = 0.05
FIELD_NAMES = ("cat", "cat1000")
FilterSpec = dict[str, Any] | None
FILTERS: dict[str, FilterSpec] = {  # by short name (bench/filtered.py --filters)
    "none": None,
    "cat1000=7": {"eq": ["cat1000", 7]},  # 0.1%
    "cat=7": {"eq": ["cat", 7]},  # 1%
    "cat<10": {"lt": ["cat", 10]},  # 10%
    "cat<50": {"lt": ["cat", 50]},  # 50%
    f"tag={TAG}": {"tag": TAG},  # ~5%
    f"cat<50&tag={TAG}": {"and": [{"lt": ["cat", 50]}, {"tag": TAG}]},  # ~2.5%
}


def splitmix64(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The splitmix64 finaliser, vectorised (uint64 arithmetic wraps)."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class RowFields:
    """The metadata of rows 0..n-1: ``ints[name]`` (int64 columns) and ``tagged`` (the rows
    carrying ``TAG``)."""

    def __init__(self, n: int) -> None:
        rows = np.arange(n, dtype=np.int64)
        self.n = n
        self.ints: dict[str, npt.NDArray[np.int64]] = {"cat": rows % 100, "cat1000": rows % 1000}
        threshold = np.uint64(int(TAG_SHARE * 2.0**64))
        self.tagged: npt.NDArray[np.bool_] = splitmix64(rows.astype(np.uint64)) < threshold

    def tags(self, row: int) -> list[str]:
        return [TAG] if self.tagged[row] else []

    def mask(self, spec: FilterSpec) -> npt.NDArray[np.bool_]:
        """The rows ``spec`` matches (the ground truth of every system's translation)."""
        if spec is None:
            return np.ones(self.n, dtype=bool)
        (op, arg), *rest = spec.items()
        if rest:
            raise ValueError(f"a filter node has one key: {spec}")
        if op == "eq":
            return self.ints[arg[0]] == int(arg[1])
        if op == "lt":
            return self.ints[arg[0]] < int(arg[1])
        if op == "tag":
            return self.tagged.copy() if arg == TAG else np.zeros(self.n, dtype=bool)
        if op == "and":
            out = np.ones(self.n, dtype=bool)
            for child in arg:
                out &= self.mask(child)
            return out
        raise ValueError(f"unknown filter node {op!r}")


def filtered_truth(base: Matrix, queries: Matrix, mask: npt.NDArray[np.bool_], k: int = K) -> Labels:
    """The exact top-k over only the rows in ``mask`` (testkit.truth, ties to the lower row),
    as row indices of ``base``; fewer than k columns when fewer rows match."""
    rows = np.flatnonzero(mask)
    if len(rows) == len(base):
        return exact_top_k(base, queries, k)
    if len(rows) == 0:
        return np.empty((len(queries), 0), dtype=np.int64)
    return rows[exact_top_k(np.ascontiguousarray(base[rows]), queries, min(k, len(rows)))]


def is_complete(out: Path, params: dict[str, Any]) -> bool:
    meta = out / "meta.json"
    if not meta.is_file() or json.loads(meta.read_text()).get("params") != params:
        return False
    return all((out / f).is_file() for f in ("base.npy", "queries.npy", "truth.npy"))


def write_set(out: Path, base: Matrix, queries: Matrix, meta: dict[str, Any], texts: Any = None) -> float:
    """Computes the truth, writes the set (meta.json last) and returns the truth's seconds."""
    start = time.perf_counter()
    truth = exact_top_k(base, queries, K)
    truth_s = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)
    np.save(out / "base.npy", base)
    np.save(out / "queries.npy", queries)
    np.save(out / "truth.npy", truth)
    if texts is not None:
        (out / "texts.json").write_text(json.dumps(texts, ensure_ascii=False))
    meta["timings_s"]["truth"] = round(truth_s, 3)
    meta.update(
        command=shlex.join(["python", *sys.argv]),
        date_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return truth_s


def synthetic(args: argparse.Namespace) -> int:
    out = args.out or DATA / f"synthetic-{args.n}x{args.dim}"
    params = {"n": args.n, "dim": args.dim, "queries": args.queries, "seed": args.seed, "k": K}
    if is_complete(out, params) and not args.force:
        print(f"datasets: {out} is up to date")
        return 0
    start = time.perf_counter()
    data, queries = data_and_queries(args.n, args.queries, args.dim, args.seed)
    generated = time.perf_counter() - start
    meta: dict[str, Any] = {
        "params": params,
        "model": f"synthetic clustered {args.dim}-d (testkit.datasets.data_and_queries, unit rows)",
        "timings_s": {"generate": round(generated, 1)},
    }
    write_set(out, unit_rows(data), unit_rows(queries), meta)
    print(f"datasets: wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


def minilm(args: argparse.Namespace) -> int:
    from bench import minilm as lm

    if args.quick:
        args.n, args.queries = 5000, 100
    out = args.out or DATA / ("minilm-quick" if args.quick else "minilm")
    params = {
        "n": args.n,
        "queries": args.queries,
        "k": K,
        "seed": args.seed,
        "vocab": args.vocab,
        "max_words": args.max_words,
        "max_length": args.max_length,
    }
    if is_complete(out, params) and not args.force:
        print(f"datasets: {out} already holds this data set (use --force to rebuild)")
        return 0
    t0 = time.perf_counter()
    texts, source = lm.make_texts(args.n + args.queries, args.seed, args.vocab, args.max_words)
    query_texts, base_texts = texts[: args.queries], texts[args.queries :]
    assert not set(query_texts) & set(base_texts)
    t_texts = time.perf_counter() - t0
    print(f"datasets: {len(texts)} distinct texts in {t_texts:.1f} s, e.g. {texts[:5]}", flush=True)
    t1 = time.perf_counter()
    path = lm.model_path()
    encoder = lm.Encoder(path, args.threads, args.max_length)
    t_load = time.perf_counter() - t1
    t2 = time.perf_counter()
    base = lm.encode_all(encoder, base_texts, args.batch_size, "base")
    queries = lm.encode_all(encoder, query_texts, args.batch_size, "queries")
    t_encode = time.perf_counter() - t2
    norms = np.linalg.norm(base, axis=1)
    meta: dict[str, Any] = {
        "params": params,
        "model": {
            "name": lm.MODEL_NAME,
            "package": lm.MODEL_PACKAGE,
            "path": str(path),
            "loader": "transformers AutoTokenizer/AutoModel, mean pooling over attention mask, L2 normalisation",
            "dim": lm.DIM,
        },
        "packages": lm.package_versions(),
        "python": platform.python_version(),
        "text_source": source,
        "norms": {"min": float(norms.min()), "max": float(norms.max())},
        "timings_s": {"texts": round(t_texts, 3), "model_load": round(t_load, 3), "encode": round(t_encode, 3)},
        "encode_rate_texts_per_s": round(len(texts) / t_encode, 1),
        "batch_size": args.batch_size,
        "torch_threads": args.threads,
        "machine": {"nproc": os.cpu_count(), "cpu": cpu_model(), "load_avg": os.getloadavg()},
    }
    write_set(out, base, queries, meta, texts={"base": base_texts, "queries": query_texts})
    print(f"datasets: wrote {out} in {time.perf_counter() - t0:.1f} s total", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sets = parser.add_subparsers(dest="set", required=True)
    syn = sets.add_parser("synthetic", help="clustered synthetic vectors (seeded)")
    syn.add_argument("--n", type=int, default=100_000)
    syn.add_argument("--dim", type=int, default=512)
    syn.add_argument("--queries", type=int, default=1000)
    syn.set_defaults(run=synthetic)
    real = sets.add_parser("minilm", help="all-MiniLM-L6-v2 embeddings of English phrases (.venv-peers)")
    real.add_argument("--n", type=int, default=100_000, help="base texts")
    real.add_argument("--queries", type=int, default=1000, help="held-out query texts")
    real.add_argument("--quick", action="store_true", help="5,000 base + 100 queries, into bench/data/minilm-quick")
    real.add_argument("--batch-size", type=int, default=256)
    real.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    real.add_argument("--vocab", type=int, default=50_000, help="words taken from wordfreq")
    real.add_argument("--max-words", type=int, default=5, help="longest phrase in words")
    real.add_argument("--max-length", type=int, default=128, help="tokenizer truncation")
    real.set_defaults(run=minilm)
    for sub in (syn, real):
        sub.add_argument("--seed", type=int, default=7)
        sub.add_argument("--out", type=Path, default=None, help="default bench/data/<set name>")
        sub.add_argument("--force", action="store_true", help="rebuild even if --out already holds this set")
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
