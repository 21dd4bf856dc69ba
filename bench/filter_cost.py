"""The cost of one filtered query, per path, one thread: the constants of docs/filtered-search.md §2.

Usage: ``.venv/bin/python bench/filter_cost.py [--n 50000] [--queries 200]``

1. A seeded clustered set (``testkit.datasets.embedding_like``, unit rows, ``--dim`` 384) and an
   inner-product HNSW graph (M 16, ef_construction 100) built by ``hnswlib.Index`` and saved to
   ``bench/data/`` (reused by later runs with the same parameters). The same file is loaded into
   ``hnswlib.Index`` and ``shard._vsnative.Index``; both get ``set_ef(1)`` and are asked for
   ``max(ef, k)`` results, as ``shard/graph.py`` does.
2. Allowed sets are seeded random label subsets at each selectivity. Every cell runs the same
   queries one at a time (``num_threads=1``) after a warm-up; it reports the mean and median
   microseconds per query and the ratio of the median to the unfiltered hnswlib search of this run.
   The cells run in turn, ``--rounds`` times (load spikes of the shared machine spread over all
   of them); a slow cell stops after ``--cell-budget-s`` in all (its query count is in the table).
3. Graph cells also report recall@k against brute force over the allowed rows; exact cells are
   checked against each other (native vs numpy).
4. numpy exact = ``graph.vectors`` as the shard does it (gather rows of the memory-mapped
   ``graph.hnsw``, ``shard.graph.map_index_vectors``) + ``shard.exact.search``; the gather alone
   is also timed.

Writes ``--out`` (markdown) and the same figures as JSON next to it. The machine is shared: read
the ratios, which compare cells of one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import hnswlib  # noqa: E402

from bench import machine  # noqa: E402
from shard import exact, hnsw  # noqa: E402
from shard.graph import map_index_vectors  # noqa: E402
from testkit.datasets import embedding_like, unit_rows  # noqa: E402

GRAPH_SELECTIVITIES = (0.5, 0.2, 0.1, 0.05, 0.01)
CALLBACK_SELECTIVITIES = (0.5, 0.1, 0.01)
EXACT_SIZES = (500, 2_500, 5_000, 10_000, 25_000)
SPACE = "ip"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average: {machine.loadavg()}"


def build_graph(data: npt.NDArray[np.float32], args: argparse.Namespace) -> tuple[Path, float | None]:
    """The saved graph file; the build seconds when it was built by this run (None: reused)."""
    digest = hashlib.sha256(data.tobytes()).hexdigest()[:10]
    name = f"filter-cost-{len(data)}x{data.shape[1]}-s{args.seed}-m{args.m}-efc{args.ef_construction}-{digest}.hnsw"
    path = ROOT / "bench" / "data" / name
    if path.is_file():
        return path, None
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"building {name} ({args.build_threads} threads)", file=sys.stderr, flush=True)
    start = time.perf_counter()
    index = hnswlib.Index(space=SPACE, dim=data.shape[1])
    index.init_index(max_elements=len(data), M=args.m, ef_construction=args.ef_construction, random_seed=100)
    index.add_items(data, np.arange(len(data)), num_threads=args.build_threads)
    built_s = time.perf_counter() - start
    tmp = path.with_suffix(".tmp")
    index.save_index(str(tmp))
    os.replace(tmp, path)
    return path, built_s


def per_query(
    fn: Callable[[npt.NDArray[np.float32]], Any],
    keep: Callable[[Any], npt.NDArray[np.int64]],
    queries: npt.NDArray[np.float32],
    warmup: int,
    budget_s: float,
) -> tuple[npt.NDArray[np.float64], list[npt.NDArray[np.int64]]]:
    """Microseconds of ``fn(queries[i:i+1])`` per query (stops after ``budget_s``), and ``keep`` of
    each result (only that is kept: holding whole results would grow the heap during the cell)."""
    for i in range(min(warmup, len(queries))):
        fn(queries[i : i + 1])
    times: list[float] = []
    results: list[npt.NDArray[np.int64]] = []
    deadline = time.perf_counter() + budget_s
    for i in range(len(queries)):
        q = queries[i : i + 1]
        start = time.perf_counter_ns()
        out = fn(q)
        times.append((time.perf_counter_ns() - start) / 1e3)
        results.append(keep(out))
        del out
        if time.perf_counter() > deadline and len(times) >= 10:
            break
    return np.array(times), results


def recall(found: list[npt.NDArray[np.int64]], truth: npt.NDArray[np.int64], k: int) -> float:
    hits = sum(len(np.intersect1d(row[:k], truth[i, :k])) for i, row in enumerate(found))
    return hits / (len(found) * k)


def truth_over(
    data: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.int64]:
    """Exact top-k labels among ``labels`` (inner-product distance, ties to the smaller label)."""
    dist = 1.0 - queries.astype(np.float64) @ data[labels].astype(np.float64).T
    out = np.empty((len(queries), min(k, len(labels))), dtype=np.int64)
    for row in range(len(queries)):
        out[row] = labels[np.lexsort((labels, dist[row]))[: out.shape[1]]]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not hnsw.NATIVE:
        raise SystemExit("shard._vsnative is not built (python -m shard.native.build) or VS_NATIVE=0")
    from shard import _vsnative

    # Same distribution (the generator's shape depends on dim and seed only), separate streams:
    # the rows do not depend on --queries, so the cached graph fits any query count.
    data = unit_rows(embedding_like(args.n, args.dim, args.seed))
    queries = unit_rows(embedding_like(args.queries, args.dim, args.seed))
    path, built_s = build_graph(data, args)
    ref = hnswlib.Index(space=SPACE, dim=args.dim)
    ref.load_index(str(path))
    ref.set_ef(1)
    nat = _vsnative.Index(SPACE, args.dim)
    nat.load_index(str(path))
    nat.set_ef(1)
    mapped = map_index_vectors(path, args.dim, args.n)
    assert mapped is not None, "the graph file does not map"
    vectors, internal_of_label = mapped
    k, ef = args.k, args.ef
    wanted = max(ef, k)
    rng = np.random.default_rng(args.seed + 1)
    cells: list[dict[str, Any]] = []

    def cell(
        group: str,
        path_name: str,
        selectivity: float | None,
        rows_scored: int | None,
        fn: Callable[[npt.NDArray[np.float32]], Any],
        labels_of: Callable[[Any], npt.NDArray[np.int64]],
        truth: npt.NDArray[np.int64] | None,
    ) -> dict[str, Any]:
        """Registers a cell; they run after all are known, ``--rounds`` times in turn."""
        spec: dict[str, Any] = {
            "group": group,
            "path": path_name,
            "selectivity": selectivity,
            "rows": rows_scored,
            "fn": fn,
            "labels_of": labels_of,
            "truth": truth,
            "times": [],
            "found": None,
        }
        cells.append(spec)
        return spec

    all_labels = np.arange(args.n, dtype=np.int64)
    full_truth = truth_over(data, queries, all_labels, k)
    cell(
        "graph",
        "hnswlib knn_query, unfiltered",
        None,
        None,
        lambda q: ref.knn_query(q, k=wanted, num_threads=1),
        lambda r: r[0][0].astype(np.int64),
        full_truth,
    )
    cell(
        "graph",
        "native knn_query, unfiltered",
        None,
        None,
        lambda q: nat.knn_query(q, k=wanted, num_threads=1),
        lambda r: r[0][0].astype(np.int64),
        full_truth,
    )
    masks: dict[float, npt.NDArray[np.bool_]] = {}
    for selectivity in sorted({*GRAPH_SELECTIVITIES, *CALLBACK_SELECTIVITIES}, reverse=True):
        mask = np.zeros(args.n, dtype=bool)
        mask[rng.choice(args.n, size=max(1, round(args.n * selectivity)), replace=False)] = True
        masks[selectivity] = mask
    truths = {s: truth_over(data, queries, np.flatnonzero(m), k) for s, m in masks.items()}
    # As Collection._search_graph_filtered: never more results than allowed rows (hnswlib raises).
    asked = {s: min(wanted, int(m.sum())) for s, m in masks.items()}
    for selectivity in GRAPH_SELECTIVITIES:
        mask = masks[selectivity]
        cell(
            "graph",
            "native knn_query, allowed mask",
            selectivity,
            None,
            lambda q, mask=mask, n=asked[selectivity]: hnsw.knn_allowed(nat, q, n, mask, num_threads=1),  # type: ignore[misc]
            lambda r: r[0][0],
            truths[selectivity],
        )
    for selectivity in CALLBACK_SELECTIVITIES:
        mask = masks[selectivity]
        cell(
            "graph",
            "hnswlib knn_query, Python filter=",
            selectivity,
            None,
            lambda q, mask=mask, n=asked[selectivity]: ref.knn_query(  # type: ignore[misc]
                q, k=n, num_threads=1, filter=lambda label: bool(mask[label])
            ),
            lambda r: r[0][0].astype(np.int64),
            truths[selectivity],
        )
    for size in EXACT_SIZES:
        if size > args.n:
            continue
        labels = np.sort(rng.choice(args.n, size=size, replace=False)).astype(np.int64)
        native_row = cell(
            "exact",
            "native exact_query",
            size / args.n,
            size,
            lambda q, labels=labels: hnsw.exact_labels(nat, q, labels, k, num_threads=1),  # type: ignore[misc]
            lambda r: r[0][0],
            None,
        )

        def numpy_exact(q: npt.NDArray[np.float32], labels: npt.NDArray[np.int64] = labels) -> Any:
            gathered = np.asarray(vectors[internal_of_label[labels]], dtype=np.float32)
            order, best = exact.search(q, gathered, SPACE, k)
            return labels[order], best

        numpy_row = cell(
            "exact", "numpy gather + exact.search", size / args.n, size, numpy_exact, lambda r: r[0][0], None
        )
        cell(
            "exact",
            "numpy gather alone",
            size / args.n,
            size,
            lambda q, labels=labels: np.asarray(vectors[internal_of_label[labels]], dtype=np.float32),  # type: ignore[misc]
            lambda r: np.empty(0, dtype=np.int64),
            None,
        )
        native_row["pair"] = numpy_row
    for round_no in range(args.rounds):
        for spec in cells:
            times, found = per_query(
                spec["fn"], spec["labels_of"], queries, args.warmup, args.cell_budget_s / args.rounds
            )
            spec["times"].append(times)
            if spec["found"] is None:
                spec["found"] = found
            sel = "" if spec["selectivity"] is None else f" {spec['selectivity']:.0%}"
            scored = "" if spec["rows"] is None else f" {spec['rows']} rows"
            print(
                f"round {round_no + 1}: {spec['path']}{sel}{scored}: mean {times.mean():.0f} us, "
                f"median {np.median(times):.0f} us ({len(times)} queries)",
                file=sys.stderr,
                flush=True,
            )
    rows: list[dict[str, Any]] = []
    for spec in cells:
        times = np.concatenate(spec["times"])
        found = spec["found"]
        row = {key: spec[key] for key in ("group", "path", "selectivity", "rows")}
        row.update(
            queries=len(times),
            mean_us=float(times.mean()),
            median_us=float(np.median(times)),
            recall=recall(found, spec["truth"], k) if spec["truth"] is not None else None,
        )
        if "pair" in spec:
            pair = spec["pair"]["found"]
            row["agrees_with_numpy"] = float(np.mean([np.array_equal(a, b) for a, b in zip(found, pair, strict=False)]))
        rows.append(row)
    base = rows[0]["median_us"]
    for row in rows:
        row["ratio"] = row["median_us"] / base
    return {"graph_file": path.name, "built_s": built_s, "rows": rows, "build_flags": _vsnative.BUILD_FLAGS}


def fmt_sel(row: dict[str, Any]) -> str:
    if row["selectivity"] is None:
        return "100%"
    s = 100 * row["selectivity"]
    return f"{s:.0f}%" if s >= 1 else f"{s:.1f}%"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Filtered search: cost of one query per path (docs/filtered-search.md §2)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- Date: {result['date']}; commit {result['commit']}; {result['cpus']} CPUs ({result['cpu_model']}); "
        f"total run {result['total_s']:.0f} s",
        f"- `uptime` at start: `{result['uptime_start']}`; at end: `{result['uptime_end']}`",
        f"- Data: {result['n']:,} x {result['dim']}-d seeded clustered unit rows (testkit.datasets.embedding_like,"
        f" seed {result['seed']}), {result['queries']} queries from the same distribution; graph: hnswlib"
        f" {result['hnswlib']} "
        f"`{SPACE}`, M {result['m']}, ef_construction {result['ef_construction']} (`bench/data/{result['graph_file']}`"
        + (f", built in {result['built_s']:.0f} s" if result["built_s"] is not None else ", reused")
        + ")",
        f"- Graph cells: ef {result['ef']}, k {result['k']} (ef 1 on the index, max(ef, k) ="
        f" {max(result['ef'], result['k'])} asked, as shard/graph.py, at most the allowed count); exact cells:"
        f" k {result['k']}; one query per call, `num_threads=1`; shard._vsnative flags: `{result['build_flags']}`",
        "- ratio = median / median of the unfiltered hnswlib search of this run (medians: the machine is"
        " shared); recall@k against brute force over the allowed rows",
        "",
        "| path | allowed | rows scored | queries | mean µs | median µs | ratio | recall@k |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["rows"]:
        rec = "" if row["recall"] is None else f"{row['recall']:.3f}"
        rows_scored = "" if row["rows"] is None else f"{row['rows']:,}"
        lines.append(
            f"| {row['path']} | {fmt_sel(row)} | {rows_scored} | {row['queries']} | {row['mean_us']:,.0f} | "
            f"{row['median_us']:,.0f} | {row['ratio']:.2f} | {rec} |"
        )
    exact_rows = [r for r in result["rows"] if r.get("agrees_with_numpy") is not None]
    if exact_rows:
        agree = min(r["agrees_with_numpy"] for r in exact_rows)
        lines += ["", f"Native and numpy exact results agree on {agree:.1%} of the queries (labels, in order) or more."]
    lines += [
        "",
        "## Interpretation",
        "",
        "(Written by hand after a run; a rerun rewrites the file and leaves this placeholder.)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="rows (default 50,000)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="each cell runs this often, the cells in turn")
    parser.add_argument("--cell-budget-s", type=float, default=4.0, help="a slow cell stops after this many seconds")
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "filter-cost.md")
    args = parser.parse_args(argv)
    command = " ".join(["python bench/filter_cost.py", *(sys.argv[1:] if argv is None else argv)])
    start = time.perf_counter()
    info: dict[str, Any] = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": machine.git_commit(ROOT),
        "cpus": os.cpu_count(),
        "cpu_model": machine.cpu_model(),
        "platform": platform.platform(),
        "uptime_start": uptime(),
        "loadavg_start": machine.loadavg(),
        "hnswlib": machine.pkg_version("hnswlib"),
        "numpy": np.__version__,
        **{key: getattr(args, key) for key in ("n", "dim", "queries", "seed", "m", "ef_construction", "ef", "k")},
    }
    print(info["uptime_start"], file=sys.stderr, flush=True)
    result = {**info, **run(args)}
    result["uptime_end"] = uptime()
    result["loadavg_end"] = machine.loadavg()
    result["total_s"] = time.perf_counter() - start
    print(result["uptime_end"], file=sys.stderr, flush=True)
    text = markdown(result)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
