"""Issue #19 item 3: how each system's figures grow from a smaller to a larger run of
bench/compare.py on the same data (100k and 1M rows of one 1M-row set), as bench/results/scale.md.

    S=ours-single-node,ours-3-shards,hnswlib,pgvector
    .venv/bin/python bench/datasets.py synthetic --n 1000000 --dim 384
    .venv-peers/bin/python bench/compare.py --data bench/data/synthetic-1000000x384 --n 100000 \\
        --systems $S --ef 32 64 128 --out bench/results/scale-100k
    .venv-peers/bin/python bench/compare.py --data bench/data/synthetic-1000000x384 \\
        --systems $S --ef 32 64 128 --out bench/results/scale-1m
    .venv/bin/python bench/scale.py bench/results/scale-100k bench/results/scale-1m

Each system is read at its lowest ef whose single-client recall@10 reaches 0.95 in that run (the
issue's bar), so a figure's growth includes the ef the larger graph needs. Peak RSS is the
system's own processes: the summed peak of our server and shard processes; the largest postgres
process for pgvector (its processes share the buffer cache, so their sum counts it many times);
the benchmark process itself for in-process hnswlib (which also holds the harness's copy of the
base rows and queries: 1.5 GB at 1M x 384). Everything after the ``<!-- notes -->`` line of an
existing scale.md is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report import first_at_recall, fmt, memory_cell

RECALL = 0.95
NOTES = "<!-- notes -->"


def load(run: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    data = json.loads((run / "compare.json").read_text())
    return data["meta"], {r["system"]: r for r in data["results"]}


def peak_mib(result: dict[str, Any]) -> float | None:
    """The system's own peak RSS (see the module docstring)."""
    rss = result.get("rss") or {}
    others = rss.get("other_processes") or {}
    if not others:
        return (rss.get("benchmark_process") or {}).get("vmhwm_mib")
    postgres = [entry["max_vmhwm_mib"] for name, entry in others.items() if name.startswith("postgres")]
    if postgres:
        return float(max(postgres))
    if rss.get("other_peak_sum_rss_mib"):
        return float(rss["other_peak_sum_rss_mib"])
    return float(max(entry["max_vmhwm_mib"] for entry in others.values()))


def figures(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if result is None or "searches" not in result:
        return None
    row = first_at_recall(result, RECALL)
    ingest = result.get("ingest") or {}
    return {
        "n": result["n"],
        "indexed_s": ingest.get("indexed_s"),
        "ef": None if row is None else row["ef_search"],
        "recall": None if row is None else row["recall_at_10"],
        "qps": None if row is None else row["single_qps"],
        "p50": None if row is None else row["p50_ms"],
        "p99": None if row is None else row["p99_ms"],
        "qps8": None if row is None else row.get("concurrent_qps"),
        "peak": peak_mib(result),
        "memory": memory_cell(result),
    }


def growth(small: float | None, large: float | None) -> str:
    return "–" if small is None or large is None or not small else f"{large / small:.2f}x"


def render(small_dir: Path, large_dir: Path) -> str:
    small_meta, small = load(small_dir)
    large_meta, large = load(large_dir)
    lines = [
        "# From 100k to 1M vectors (issue #19 item 3)",
        "",
        "`bench/scale.py` (see its docstring): two runs of `bench/compare.py` on the same data, each system",
        f"at its lowest ef with single-client recall@10 >= {RECALL} in that run.",
        "",
    ]
    for meta, where in ((small_meta, small_dir), (large_meta, large_dir)):
        lines.append(
            f"- `{where}`: `{meta.get('command', '')}` ({meta.get('date_utc', '')}; {meta.get('cpu', '')}, "
            f"{meta.get('nproc', '')} cores; load average {meta.get('loadavg_start')} at the start, "
            f"{meta.get('loadavg_end')} at the end)"
        )
    lines += [
        "",
        "| system | rows | indexed after s | ef | recall@10 | QPS 1 client | p50 ms | p99 ms | QPS 8 clients "
        "| peak RSS MiB (own processes) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for system in small:
        rows = [figures(small.get(system)), figures(large.get(system))]
        for row in rows:
            if row is None:
                continue
            lines.append(
                f"| {system} | {row['n']:,} | {fmt(row['indexed_s'], ',.1f')} | {fmt(row['ef'], 'd')} "
                f"| {fmt(row['recall'], '.4f')} | {fmt(row['qps'])} | {fmt(row['p50'], '.3f')} "
                f"| {fmt(row['p99'], '.3f')} "
                f"| {fmt(row['qps8'])} | {fmt(row['peak'])} |"
            )
        a, b = rows
        if a is not None and b is not None:
            lines.append(
                f"| {system}: growth | {growth(a['n'], b['n'])} | {growth(a['indexed_s'], b['indexed_s'])} | | "
                f"| {growth(a['qps'], b['qps'])} | {growth(a['p50'], b['p50'])} | {growth(a['p99'], b['p99'])} "
                f"| {growth(a['qps8'], b['qps8'])} | {growth(a['peak'], b['peak'])} |"
            )
    lines += ["", "Peak RSS per process as compare.py reports it:", ""]
    for system in small:
        for runs in (small, large):
            row = figures(runs.get(system))
            if row is not None:
                lines.append(f"- {system}, {row['n']:,} rows: {row['memory']}")
    lines += [""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("small", type=Path, help="compare.py --out of the smaller run")
    p.add_argument("large", type=Path, help="compare.py --out of the larger run")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "scale.md")
    args = p.parse_args()
    text = render(args.small, args.large)
    if args.out.exists():
        old = args.out.read_text()
        if NOTES in old:
            text += "\n" + old[old.index(NOTES) :]
    args.out.write_text(text)
    print(f"scale: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
