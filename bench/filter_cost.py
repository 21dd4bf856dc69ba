"""The cost of one filtered query, per path, one thread: the constants of docs/filtered-search.md §2.

Usage: ``.venv/bin/python bench/filter_cost.py [--data bench/data/minilm] [--n 100000] [--queries 200]``

1. Data: with ``--data DIR`` a set of bench/datasets.py (``base.npy``'s first ``--n`` rows,
   ``queries.npy``'s first ``--queries``: real MiniLM embeddings for ``bench/data/minilm``); else a
   seeded clustered set (``testkit.datasets.embedding_like``, unit rows, ``--dim`` 384). An
   inner-product HNSW graph (M 16, ef_construction 200 = core.spec's defaults) is built by
   ``hnswlib.Index`` and saved to ``bench/data/`` (reused by later runs with the same data and
   parameters). The same file is loaded into ``hnswlib.Index`` and ``shard._vsnative.Index``;
   both get ``set_ef(1)`` and are asked for ``max(ef, k)`` results, as ``shard/graph.py`` does.
2. Allowed sets at each selectivity (50/20/10/5/2/1%), two kinds: ``random`` (a seeded random
   subset) and ``structured`` (``row % 100 < 100 * s``: bench/datasets.py's ``cat < s``). Per set:
   the native mask search with ``strategy="sweep"`` (hnswlib's traversal) at ef and at
   ``ef * sqrt(s)`` allowed results (the sweep's exploration grows like ef / s, so fewer allowed
   results give the recall of an unfiltered search at ef), ``strategy="acorn"`` at ef and at
   ``--acorn-efs``, and ``exact_query`` over the set's labels. ACORN cells also report the work
   per query (distances, two-hop link lists read, from ``_vsnative._acorn_stats``).
3. Every cell runs the same queries one at a time (``num_threads=1``) after a warm-up; it reports
   mean and median wall microseconds and the median thread CPU microseconds per query (steadier on
   the shared machine), and the ratio of the median to the native unfiltered search at ef of this
   run. The cells run in turn, ``--rounds`` times; a slow cell stops after ``--cell-budget-s`` in
   all (its query count is in the table).
4. Graph cells report recall@k against brute force over the allowed rows (float64); unfiltered
   cells against the exact top-k. Exact cells at fixed sizes (0.5k-25k random labels) compare
   native ``exact_query`` with numpy (``graph.vectors`` gather from the memory-mapped graph +
   ``shard.exact.search``, as the shard's fallback) and the gather alone.

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
from core.spec import DEFAULT_EF_CONSTRUCTION, DEFAULT_M  # noqa: E402
from shard import exact, hnsw  # noqa: E402
from shard.graph import map_index_vectors  # noqa: E402
from testkit.datasets import embedding_like, unit_rows  # noqa: E402

GRAPH_SELECTIVITIES = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01)
MASK_KINDS = ("random", "structured")
CALLBACK_SELECTIVITIES = (0.5, 0.1, 0.01)
EXACT_SIZES = (500, 2_500, 5_000, 10_000, 25_000)
SPACE = "ip"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average: {machine.loadavg()}"


def load_set(args: argparse.Namespace) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], str]:
    """Base rows, queries, and the tag of the graph file name."""
    if args.data is not None:
        base = np.load(args.data / "base.npy", mmap_mode="r")
        data = np.ascontiguousarray(base[: args.n], dtype=np.float32)
        queries = np.ascontiguousarray(np.load(args.data / "queries.npy")[: args.queries], dtype=np.float32)
        return data, queries, args.data.name
    # Same distribution (the generator's shape depends on dim and seed only), separate streams:
    # the rows do not depend on --queries, so the cached graph fits any query count.
    data = unit_rows(embedding_like(args.n, args.dim, args.seed))
    queries = unit_rows(embedding_like(args.queries, args.dim, args.seed))
    return data, queries, f"s{args.seed}"


def build_graph(data: npt.NDArray[np.float32], tag: str, args: argparse.Namespace) -> tuple[Path, float | None]:
    """The saved graph file; the build seconds when it was built by this run (None: reused)."""
    digest = hashlib.sha256(data.tobytes()).hexdigest()[:10]
    shape = f"{len(data)}x{data.shape[1]}"
    params = f"m{args.m}-efc{args.ef_construction}-{digest}"
    # (the synthetic name keeps the order of the files cached before --data existed)
    name = f"filter-cost-{tag}-{shape}-{params}.hnsw" if args.data else f"filter-cost-{shape}-{tag}-{params}.hnsw"
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
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], list[npt.NDArray[np.int64]]]:
    """Wall and thread-CPU microseconds of ``fn(queries[i:i+1])`` per query (stops after
    ``budget_s``), and ``keep`` of each result (only that is kept: holding whole results would
    grow the heap during the cell)."""
    for i in range(min(warmup, len(queries))):
        fn(queries[i : i + 1])
    wall: list[float] = []
    cpu: list[float] = []
    results: list[npt.NDArray[np.int64]] = []
    deadline = time.perf_counter() + budget_s
    for i in range(len(queries)):
        q = queries[i : i + 1]
        start_cpu = time.thread_time_ns()
        start = time.perf_counter_ns()
        out = fn(q)
        wall.append((time.perf_counter_ns() - start) / 1e3)
        cpu.append((time.thread_time_ns() - start_cpu) / 1e3)
        results.append(keep(out))
        del out
        if time.perf_counter() > deadline and len(wall) >= 10:
            break
    return np.array(wall), np.array(cpu), results


def recall(found: list[npt.NDArray[np.int64]], truth: npt.NDArray[np.int64], k: int) -> float:
    hits = sum(len(np.intersect1d(row[:k], truth[i, :k])) for i, row in enumerate(found))
    return hits / (len(found) * min(k, truth.shape[1]))


def truth_over(
    data: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], labels: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.int64]:
    """Exact top-k labels among ``labels`` (inner-product distance, ties to the smaller label)."""
    out = np.empty((len(queries), min(k, len(labels))), dtype=np.int64)
    for lo in range(0, len(queries), 50):
        dist = 1.0 - queries[lo : lo + 50].astype(np.float64) @ data[labels].astype(np.float64).T
        for row in range(len(dist)):
            out[lo + row] = labels[np.lexsort((labels, dist[row]))[: out.shape[1]]]
    return out


def allowed_mask(kind: str, selectivity: float, n: int, rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    if kind == "random":
        mask = np.zeros(n, dtype=bool)
        mask[rng.choice(n, size=max(1, round(n * selectivity)), replace=False)] = True
        return mask
    return np.arange(n) % 100 < max(1, round(100 * selectivity))


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not hnsw.NATIVE:
        raise SystemExit("shard._vsnative is not built (python -m shard.native.build) or VS_NATIVE=0")
    from shard import _vsnative

    data, queries, tag = load_set(args)
    n = len(data)
    path, built_s = build_graph(data, tag, args)
    ref = hnswlib.Index(space=SPACE, dim=data.shape[1])
    ref.load_index(str(path))
    ref.set_ef(1)
    nat = _vsnative.Index(SPACE, data.shape[1])
    nat.load_index(str(path))
    nat.set_ef(1)
    mapped = map_index_vectors(path, data.shape[1], n)
    assert mapped is not None, "the graph file does not map"
    vectors, internal_of_label = mapped
    k, ef = args.k, args.ef
    wanted = max(ef, k)
    rng = np.random.default_rng(args.seed + 1)
    cells: list[dict[str, Any]] = []

    def cell(
        group: str,
        path_name: str,
        fn: Callable[[npt.NDArray[np.float32]], Any],
        labels_of: Callable[[Any], npt.NDArray[np.int64]],
        truth: npt.NDArray[np.int64] | None,
        **info: Any,
    ) -> dict[str, Any]:
        """Registers a cell; they run after all are known, ``--rounds`` times in turn."""
        spec: dict[str, Any] = {
            "group": group,
            "path": path_name,
            "selectivity": None,
            "kind": None,
            "rows": None,
            "ef": None,
            **info,
            "fn": fn,
            "labels_of": labels_of,
            "truth": truth,
            "wall": [],
            "cpu": [],
            "work": {"queries": 0, "distances": 0, "lists": 0, "expansions": 0, "seeds": 0},
            "found": None,
        }
        cells.append(spec)
        return spec

    full_truth = truth_over(data, queries, np.arange(n, dtype=np.int64), k)
    # The base of every ratio: the native unfiltered search (what the shard runs; it has the
    # huge-page level-0 block, which hnswlib's own module has not).
    for e in [max(e, k) for e in (ef, *args.ref_efs)]:
        cell(
            "unfiltered",
            "native knn_query, unfiltered",
            lambda q, e=e: nat.knn_query(q, k=e, num_threads=1),  # type: ignore[misc]
            lambda r: r[0][0].astype(np.int64),
            full_truth,
            ef=e,
        )
    cell(
        "unfiltered",
        "hnswlib knn_query, unfiltered",
        lambda q: ref.knn_query(q, k=wanted, num_threads=1),
        lambda r: r[0][0].astype(np.int64),
        full_truth,
        ef=wanted,
    )
    masks: dict[tuple[str, float], npt.NDArray[np.bool_]] = {}
    for selectivity in GRAPH_SELECTIVITIES:
        for kind in MASK_KINDS:
            masks[kind, selectivity] = allowed_mask(kind, selectivity, n, rng)
    for selectivity in CALLBACK_SELECTIVITIES:
        masks.setdefault(("random", selectivity), allowed_mask("random", selectivity, n, rng))
    truths = {key: truth_over(data, queries, np.flatnonzero(m), k) for key, m in masks.items()}
    for selectivity in GRAPH_SELECTIVITIES:
        for kind in MASK_KINDS:
            mask = masks[kind, selectivity]
            truth = truths[kind, selectivity]
            matched = int(mask.sum())
            common = {"selectivity": selectivity, "kind": kind, "rows": matched}
            scaled = max(k, round(ef * selectivity**0.5))
            for strategy, e in (("sweep", wanted), ("sweep", scaled)):
                cell(
                    "graph",
                    f"native {strategy}" + ("" if e == wanted else ", ef·√s"),
                    lambda q, mask=mask, e=e, strategy=strategy: hnsw.knn_allowed(  # type: ignore[misc]
                        nat, q, e, mask, num_threads=1, strategy=strategy
                    ),
                    lambda r: r[0][0],
                    truth,
                    ef=e,
                    **common,
                )
            for e in dict.fromkeys(max(x, k) for x in (wanted, *args.acorn_efs)):
                cell(
                    "graph",
                    "native acorn",
                    lambda q, mask=mask, e=e: hnsw.knn_allowed(  # type: ignore[misc]
                        nat, q, e, mask, num_threads=1, strategy="acorn"
                    ),
                    lambda r: r[0][0],
                    truth,
                    ef=e,
                    acorn=True,
                    **common,
                )
            labels = np.flatnonzero(mask).astype(np.int64)
            cell(
                "graph",
                "native exact_query",
                lambda q, labels=labels: hnsw.exact_labels(nat, q, labels, k, num_threads=1),  # type: ignore[misc]
                lambda r: r[0][0],
                truth,
                **common,
            )
    for selectivity in CALLBACK_SELECTIVITIES:
        mask = masks["random", selectivity]
        asked = min(wanted, int(mask.sum()))
        cell(
            "callback",
            "hnswlib knn_query, Python filter=",
            lambda q, mask=mask, e=asked: ref.knn_query(  # type: ignore[misc]
                q, k=e, num_threads=1, filter=lambda label: bool(mask[label])
            ),
            lambda r: r[0][0].astype(np.int64),
            truths["random", selectivity],
            selectivity=selectivity,
            kind="random",
            rows=int(mask.sum()),
            ef=wanted,
        )
    for size in EXACT_SIZES:
        if size > n:
            continue
        labels = np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)
        common = {"selectivity": size / n, "kind": "random", "rows": size}
        native_row = cell(
            "exact",
            "native exact_query",
            lambda q, labels=labels: hnsw.exact_labels(nat, q, labels, k, num_threads=1),  # type: ignore[misc]
            lambda r: r[0][0],
            None,
            **common,
        )

        def numpy_exact(q: npt.NDArray[np.float32], labels: npt.NDArray[np.int64] = labels) -> Any:
            gathered = np.asarray(vectors[internal_of_label[labels]], dtype=np.float32)
            order, best = exact.search(q, gathered, SPACE, k)
            return labels[order], best

        numpy_row = cell("exact", "numpy gather + exact.search", numpy_exact, lambda r: r[0][0], None, **common)
        cell(
            "exact",
            "numpy gather alone",
            lambda q, labels=labels: np.asarray(vectors[internal_of_label[labels]], dtype=np.float32),  # type: ignore[misc]
            lambda r: np.empty(0, dtype=np.int64),
            None,
            **common,
        )
        native_row["pair"] = numpy_row
    for round_no in range(args.rounds):
        for spec in cells:
            _vsnative._acorn_stats()
            wall, cpu, found = per_query(
                spec["fn"], spec["labels_of"], queries, args.warmup, args.cell_budget_s / args.rounds
            )
            work = _vsnative._acorn_stats()
            if spec.get("acorn"):
                for key in spec["work"]:
                    spec["work"][key] += work[key]
            spec["wall"].append(wall)
            spec["cpu"].append(cpu)
            if spec["found"] is None:
                spec["found"] = found
            print(
                f"round {round_no + 1}: {label_of(spec)}: median {np.median(wall):.0f} us, cpu "
                f"{np.median(cpu):.0f} us ({len(wall)} queries)",
                file=sys.stderr,
                flush=True,
            )
    rows: list[dict[str, Any]] = []
    for spec in cells:
        wall = np.concatenate(spec["wall"])
        cpu = np.concatenate(spec["cpu"])
        found = spec["found"]
        row = {key: spec[key] for key in ("group", "path", "selectivity", "kind", "rows", "ef")}
        row.update(
            queries=len(wall),
            mean_us=float(wall.mean()),
            median_us=float(np.median(wall)),
            cpu_median_us=float(np.median(cpu)),
            recall=recall(found, spec["truth"], k) if spec["truth"] is not None else None,
        )
        work = spec["work"]
        if work["queries"]:
            row["work"] = {key: work[key] / work["queries"] for key in ("expansions", "distances", "lists", "seeds")}
        if "pair" in spec:
            pair = spec["pair"]["found"]
            row["agrees_with_numpy"] = float(np.mean([np.array_equal(a, b) for a, b in zip(found, pair, strict=False)]))
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["ratio"] = row["median_us"] / base["median_us"]
        row["cpu_ratio"] = row["cpu_median_us"] / base["cpu_median_us"]
    return {
        "graph_file": path.name,
        "built_s": built_s,
        "rows": rows,
        "build_flags": _vsnative.BUILD_FLAGS,
        "simd": _vsnative.SIMD,
        "acorn_model": acorn_model(rows),
    }


def label_of(spec: dict[str, Any]) -> str:
    parts = [spec["path"]]
    if spec["selectivity"] is not None:
        parts.append(f"{fmt_pct(spec['selectivity'])}{' ' + spec['kind'] if spec['kind'] else ''}")
    if spec["ef"] is not None:
        parts.append(f"ef {spec['ef']}")
    if spec["group"] == "exact":
        parts.append(f"{spec['rows']} rows")
    return ", ".join(parts)


def acorn_model(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Least squares over the ACORN cells: CPU µs per query ≈ a·distances + b·lists + c."""
    points = [r for r in rows if r.get("work")]
    if len(points) < 4:
        return None
    x = np.array([[r["work"]["distances"], r["work"]["lists"], 1.0] for r in points])
    y = np.array([r["cpu_median_us"] for r in points])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    fitted = x @ coef
    return {
        "us_per_distance": float(coef[0]),
        "us_per_list": float(coef[1]),
        "us_fixed": float(coef[2]),
        "max_rel_error": float(np.max(np.abs(fitted - y) / y)),
    }


def fmt_pct(value: float) -> str:
    s = 100 * value
    return f"{s:.0f}%" if s >= 1 else f"{s:.1f}%"


def fmt_sel(row: dict[str, Any]) -> str:
    return "100%" if row["selectivity"] is None else fmt_pct(row["selectivity"])


def markdown(result: dict[str, Any]) -> str:
    data = (
        f"`{result['data']}`, first {result['n']:,} rows x {result['dim']}-d, the first {result['queries']} queries"
        if result["data"]
        else f"{result['n']:,} x {result['dim']}-d seeded clustered unit rows (testkit.datasets.embedding_like,"
        f" seed {result['seed']}), {result['queries']} queries from the same distribution"
    )
    rows = result["rows"]
    base = rows[0]
    lines = [
        "# Filtered search: cost of one query per path (docs/filtered-search.md §2)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- Date: {result['date']}; commit {result['commit']}; {result['cpus']} CPUs ({result['cpu_model']}); "
        f"total run {result['total_s']:.0f} s",
        f"- `uptime` at start: `{result['uptime_start']}`; at end: `{result['uptime_end']}`",
        f"- Data: {data}; graph: hnswlib {result['hnswlib']} `{SPACE}`, M {result['m']}, ef_construction"
        f" {result['ef_construction']} (`bench/data/{result['graph_file']}`"
        + (f", built in {result['built_s']:.0f} s" if result["built_s"] is not None else ", reused")
        + ")",
        f"- Graph cells: ef {result['ef']}, k {result['k']} (ef 1 on the index, max(ef, k) ="
        f" {max(result['ef'], result['k'])} results asked unless the row says otherwise, the first k kept);"
        f" one query per call, `num_threads=1`; shard._vsnative flags: `{result['build_flags']}`, distance"
        f" kernels: {result['simd']}",
        "- Allowed sets: `random` = a seeded random subset, `structured` = `row % 100 < 100·s` (the"
        " benchmark's `cat < s`; the rows are in random order, so it is random in the vector space"
        " too, but contiguous in label blocks)",
        f"- µs = median wall time per query; cpu µs = median thread CPU time; × = median / median of the"
        f" native unfiltered search at ef {base['ef']} of this run ({base['median_us']:.0f} µs wall,"
        f" {base['cpu_median_us']:.0f} µs cpu, recall {base['recall']:.3f}); recall@{result['k']} against"
        " brute force over the allowed rows",
        "",
        "## Unfiltered",
        "",
        "| path | ef | queries | µs | cpu µs | × | recall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if row["group"] == "unfiltered":
            lines.append(
                f"| {row['path']} | {row['ef']} | {row['queries']} | {row['median_us']:,.0f} |"
                f" {row['cpu_median_us']:,.0f} | {row['ratio']:.2f} | {row['recall']:.3f} |"
            )
    lines += [
        "",
        "## Filtered graph search and exact search over the allowed labels",
        "",
        "ACORN work per query: expansions / distances computed / two-hop link lists read.",
        "",
        "| allowed | set | rows | path | ef | queries | µs | cpu µs | × | recall | ACORN work |",
        "| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if row["group"] != "graph":
            continue
        work = row.get("work")
        work_s = f"{work['expansions']:.0f} / {work['distances']:,.0f} / {work['lists']:,.0f}" if work else ""
        lines.append(
            f"| {fmt_sel(row)} | {row['kind']} | {row['rows']:,} | {row['path']} | {row['ef'] or ''} |"
            f" {row['queries']} | {row['median_us']:,.0f} | {row['cpu_median_us']:,.0f} | {row['ratio']:.2f} |"
            f" {row['recall']:.3f} | {work_s} |"
        )
    model = result.get("acorn_model")
    if model:
        lines += [
            "",
            f"ACORN cost fit over its cells (cpu µs ≈ a·distances + b·lists + c): a = {model['us_per_distance']:.3f}"
            f" µs, b = {model['us_per_list']:.3f} µs, c = {model['us_fixed']:.0f} µs (largest relative error"
            f" {model['max_rel_error']:.0%}).",
        ]
    lines += [
        "",
        "## hnswlib's Python filter= and exact search at fixed sizes",
        "",
        "| path | allowed | rows | queries | µs | cpu µs | × | recall |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if row["group"] not in ("callback", "exact"):
            continue
        rec = "" if row["recall"] is None else f"{row['recall']:.3f}"
        lines.append(
            f"| {row['path']} | {fmt_sel(row)} | {row['rows']:,} | {row['queries']} | {row['median_us']:,.0f} |"
            f" {row['cpu_median_us']:,.0f} | {row['ratio']:.2f} | {rec} |"
        )
    exact_rows = [r for r in rows if r.get("agrees_with_numpy") is not None]
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
    parser.add_argument("--data", type=Path, default=None, help="a bench/datasets.py set (e.g. bench/data/minilm)")
    parser.add_argument("--n", type=int, default=50_000, help="rows (default 50,000)")
    parser.add_argument("--dim", type=int, default=384, help="synthetic rows only")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--m", type=int, default=DEFAULT_M)
    parser.add_argument("--ef-construction", type=int, default=DEFAULT_EF_CONSTRUCTION)
    parser.add_argument("--ef", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ref-efs", type=int, nargs="*", default=[96, 128], help="more unfiltered cells")
    parser.add_argument("--acorn-efs", type=int, nargs="*", default=[48, 96], help="more ACORN cells")
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
        "data": None if args.data is None else str(args.data),
        **{key: getattr(args, key) for key in ("n", "queries", "seed", "m", "ef_construction", "ef", "k")},
    }
    print(info["uptime_start"], file=sys.stderr, flush=True)
    result = {**info, **run(args)}
    result["dim"] = args.dim if args.data is None else int(np.load(args.data / "queries.npy", mmap_mode="r").shape[1])
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
