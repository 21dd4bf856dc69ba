"""Every system on the same data, in one run: our server in three shapes, the bare transport
limit over 1 and 2 hops, raw hnswlib, faiss, Chroma, pgvector and Milvus Lite.

    bash bench/setup_peers_env.sh && .venv-peers/bin/pip install torch==2.13.0 -r bench/peers_requirements.txt
    .venv-peers/bin/python bench/realdata.py                 # the real-embedding set, once
    .venv-peers/bin/python bench/compare.py                  # full run -> bench/results/compare.{md,json,png}
    .venv-peers/bin/python bench/compare.py --quick          # 20k rows, 2 settings -> bench/data/compare-quick/

Each system runs in its own child process, started with the interpreter of the virtualenv it lives
in (``--ours-python`` for bench/ours.py, ``--peers-python`` for bench/peers.py), and is measured by
the same code (bench/harness.py). The children run one after another, so no two systems share the
cores. Results: a markdown table, the JSON of every figure, a recall-versus-QPS plot, and the
targets of issue #8 evaluated as ratios of figures from this run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import DEFAULT_CLIENTS, DEFAULT_EF, PHASE_BUDGET_S, cpu_model, loadavg

ROOT = Path(__file__).resolve().parent.parent
OURS = (
    "transport-1-hop",
    "ours-single-node",
    "transport-2-hops",
    "ours-1-shard",
    "transport-2-hops-3-backends",
    "ours-3-shards",
)
PEERS = ("hnswlib", "faiss", "pgvector", "chroma", "milvus")
ALL_SYSTEMS = OURS + PEERS
WORKER_TIMEOUT_S = 3600.0
RECALL_TARGET = 0.97


# ---------------------------------------------------------------- running


def run_system(system: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs one worker child and returns its result (or why it has none)."""
    ours = system in OURS
    python = args.ours_python if ours else args.peers_python
    script = ROOT / "bench" / ("ours.py" if ours else "peers.py")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result_path = Path(fh.name)
    cmd = [str(python), str(script), "--worker", system, "--data", str(args.data), "--result", str(result_path)]
    cmd += ["--ef", *map(str, args.ef), "--warmup", str(args.warmup), "--clients", str(args.clients)]
    cmd += ["--budget-s", str(args.budget_s)]
    if args.n is not None:
        cmd += ["--n", str(args.n)]
    start = time.perf_counter()
    load_before = loadavg()
    try:
        proc = subprocess.run(cmd, timeout=WORKER_TIMEOUT_S, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        text = result_path.read_text() if result_path.stat().st_size else ""
        if text:
            result: dict[str, Any] = json.loads(text)
        else:
            result = {"system": system, "failed": f"worker exited with {proc.returncode} and no result"}
    except subprocess.TimeoutExpired:
        result = {"system": system, "failed": f"worker timed out after {WORKER_TIMEOUT_S:.0f} s"}
    except FileNotFoundError as exc:
        result = {"system": system, "skipped": f"cannot run {python}: {exc}"}
    finally:
        result_path.unlink(missing_ok=True)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["loadavg_before_after"] = [load_before, loadavg()]
    result["interpreter"] = str(python)
    return result


# ---------------------------------------------------------------- targets


def by_name(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["system"]: r for r in results if "searches" in r}


def first_at_recall(result: dict[str, Any] | None, recall: float = RECALL_TARGET) -> dict[str, Any] | None:
    """The lowest-ef search row whose single-client recall@10 reaches ``recall``."""
    if result is None:
        return None
    rows = sorted(result["searches"], key=lambda r: r["ef_search"])
    return next((r for r in rows if r["recall_at_10"] >= recall), None)


def row_at_ef(result: dict[str, Any] | None, ef: int) -> dict[str, Any] | None:
    if result is None:
        return None
    return next((r for r in result["searches"] if r["ef_search"] == ef), None)


def val(row: dict[str, Any] | None, key: str) -> Any:
    """``row[key]``, or None when there is no row."""
    return None if row is None else row.get(key)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


def evaluate_targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue #8's targets, each as a measured value, its goal and whether this run met it.

    Every system is compared at its own lowest ef that reaches recall@10 >= 0.97; the transport
    limit at the same ef as the shape it bounds.
    """
    sys_ = by_name(results)
    out: list[dict[str, Any]] = []

    def add(target: str, value: float | None, goal: str, met: bool | None, detail: str) -> None:
        out.append({"target": target, "value": value, "goal": goal, "met": met, "detail": detail})

    def at(name: str) -> dict[str, Any] | None:
        return first_at_recall(sys_.get(name))

    single, one, three = at("ours-single-node"), at("ours-1-shard"), at("ours-3-shards")
    pg, chroma = at("pgvector"), at("chroma")

    def describe(name: str, row: dict[str, Any] | None) -> str:
        if row is None:
            return f"{name}: no setting reached recall {RECALL_TARGET}"
        return f"{name} ef={row['ef_search']} recall {row['recall_at_10']:.4f} {row['single_qps']:,.0f} QPS"

    for peer, prow in (("pgvector", pg), ("chroma", chroma)):
        r = ratio(val(single, "single_qps"), val(prow, "single_qps"))
        add(
            f"single-node QPS / {peer} QPS (1 client, recall >= {RECALL_TARGET})",
            r,
            ">= 2.0",
            None if r is None else r >= 2.0,
            f"{describe('ours-single-node', single)}; {describe(peer, prow)}",
        )
    p99 = val(single, "p99_ms")
    add(
        "single-node p99 ms (1 client)",
        p99,
        "<= 1.5",
        None if p99 is None else p99 <= 1.5,
        describe("ours-single-node", single),
    )

    for shape, row, transport in (
        ("ours-single-node", single, "transport-1-hop"),
        ("ours-1-shard", one, "transport-2-hops"),
        ("ours-3-shards", three, "transport-2-hops"),
        ("ours-3-shards", three, "transport-2-hops-3-backends"),
    ):
        limit = row and row_at_ef(sys_.get(transport), row["ef_search"])
        for field, label in (("single_qps", "1 client"), ("concurrent_qps", f"{DEFAULT_CLIENTS} clients")):
            r = ratio(val(row, field), val(limit, field))
            add(
                f"{shape} QPS / {transport} QPS ({label}, same ef)",
                r,
                ">= 0.85",
                None if r is None else r >= 0.85,
                f"ef={row and row['ef_search']}: {val(row, field)} vs {val(limit, field)}",
            )

    for peer, prow in (("pgvector", pg), ("chroma", chroma)):
        r = ratio(val(one, "single_qps"), val(prow, "single_qps"))
        add(
            f"1-shard QPS / {peer} QPS (1 client, recall >= {RECALL_TARGET})",
            r,
            "> 1.0",
            None if r is None else r > 1.0,
            f"{describe('ours-1-shard', one)}; {describe(peer, prow)}",
        )
    for shape, row, goal in (("ours-1-shard", one, 2.5), ("ours-3-shards", three, 3.5)):
        p99 = val(row, "p99_ms")
        add(f"{shape} p99 ms (1 client)", p99, f"<= {goal}", None if p99 is None else p99 <= goal, describe(shape, row))

    for shape, row in (("ours-single-node", single), ("ours-1-shard", one), ("ours-3-shards", three)):
        raw_same = row and row_at_ef(sys_.get("hnswlib"), row["ef_search"])
        r = ratio(val(row, "batch_qps"), val(raw_same, "batch_qps"))
        add(
            f"{shape} batched QPS / raw hnswlib batched QPS (same ef)",
            r,
            ">= 0.7",
            None if r is None else r >= 0.7,
            f"ef={row and row['ef_search']}: {row and row['batch_qps']} vs {raw_same and raw_same['batch_qps']}",
        )

    raw_res = sys_.get("hnswlib")
    raw_build = val(val(raw_res, "ingest"), "indexed_rows_per_s")
    for shape in ("ours-single-node", "ours-1-shard", "ours-3-shards"):
        res = sys_.get(shape)
        ack = val(val(res, "ingest"), "ack_rows_per_s")
        add(
            f"{shape} acknowledged ingest rows/s (fsync on)",
            ack,
            ">= 20000",
            None if ack is None else ack >= 20_000,
            f"{res and res['n']} rows, batches of 1000 from 4 client threads",
        )
        built = val(val(res, "ingest"), "indexed_rows_per_s")
        r = ratio(built, raw_build)
        add(
            f"{shape} ingest + graph build rows/s / raw add_items rows/s",
            r,
            ">= 0.8",
            None if r is None else r >= 0.8,
            f"{built} vs {raw_build} rows/s (start of ingest until every item is in a graph)",
        )
    return out


# ---------------------------------------------------------------- reports


def fmt(value: Any, spec: str = ",.0f") -> str:
    return "–" if value is None else format(value, spec)


def memory_cell(res: dict[str, Any]) -> str:
    """The benchmark process's peak, then each group of other processes (by program) with its
    largest peak, and the sampled peak of their summed RSS when there are several."""
    rss = res.get("rss") or {}
    own = (rss.get("benchmark_process") or {}).get("vmhwm_mib")
    parts = [f"bench {own:,.0f}"] if own else []
    groups: dict[str, list[int]] = {}
    for name, entry in (rss.get("other_processes") or {}).items():
        label = name.replace("python -m ", "").split(":")[0].split()[0]
        if label in ("sh", "useradd", "initdb", "pg_ctl", "git"):  # short-lived helpers (pgserver, git rev-parse)
            continue
        group = groups.setdefault(label, [0, 0])
        group[0] += entry["processes"]
        group[1] = max(group[1], entry["max_vmhwm_mib"])
    for label, (count, peak) in sorted(groups.items()):
        parts.append(f"{label}{f' ×{count}' if count > 1 else ''} {peak:,}")
    if sum(count for count, _ in groups.values()) > 1 and rss.get("other_peak_sum_rss_mib"):
        parts.append(f"others' summed RSS {rss['other_peak_sum_rss_mib']:,}")
    return "; ".join(parts)


def markdown_table(results: list[dict[str, Any]], clients: int) -> str:
    lines = [
        f"| system | ingest ack rows/s | indexed after s | ef | recall@10 | QPS 1 client | p50 ms | p99 ms "
        f"| QPS {clients} clients | p99 ms {clients} clients | batch QPS | peak RSS MiB per process |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for res in results:
        if "searches" not in res:
            why = res.get("skipped") or res.get("failed") or "no result"
            lines.append(f"| {res['system']} | not measured: {why} | | | | | | | | | | |")
            continue
        ing = res["ingest"]
        total = res.get("queries")
        for i, row in enumerate(res["searches"]):
            cut = "†" if total and (row.get("single_queries") or total) < total else ""
            cut_c = "†" if total and (row.get("concurrent_queries") or total) < total else ""
            head = [res["system"], fmt(ing["ack_rows_per_s"]), fmt(ing["indexed_s"], ",.1f")] if i == 0 else [""] * 3
            cells = [
                *head,
                str(row["ef_search"]),
                fmt(row["recall_at_10"], ".4f"),
                fmt(row["single_qps"]) + cut,
                fmt(row["p50_ms"], ".3f"),
                fmt(row["p99_ms"], ".3f"),
                fmt(row.get("concurrent_qps")) + cut_c,
                fmt(row.get("concurrent_p99_ms"), ".3f"),
                fmt(row.get("batch_qps")),
                memory_cell(res) if i == 0 else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(targets: list[dict[str, Any]]) -> str:
    lines = ["| target | measured | goal | met | detail |", "| --- | ---: | ---: | :---: | --- |"]
    for t in targets:
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        value = t["value"]
        shown = "–" if value is None else (f"{value:,.0f}" if value >= 100 else f"{value:.3f}")
        lines.append(f"| {t['target']} | {shown} | {t['goal']} | {met} | {t['detail']} |")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], path: Path, title: str) -> str | None:
    """Recall@10 versus QPS (1 client and ``clients`` clients), log scale; None if no matplotlib."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        return f"no plot: {exc}"
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    colours = {res["system"]: plt.cm.tab20(i % 20) for i, res in enumerate(results)}
    for ax, field, label in (
        (axes[0], "single_qps", "1 client"),
        (axes[1], "concurrent_qps", f"{DEFAULT_CLIENTS} concurrent clients"),
    ):
        for res in results:
            rows = [r for r in res.get("searches", []) if r.get(field)]
            if not rows:
                continue
            name = res["system"]
            style = "-" if name.startswith("ours") else (":" if name.startswith("transport") else "--")
            marker = "o" if name.startswith("ours") else ("s" if name.startswith("transport") else "^")
            ax.plot(
                [r[field] for r in rows],
                [r["recall_at_10"] for r in rows],
                style,
                marker=marker,
                label=name,
                lw=1.6,
                color=colours[name],
            )
            for r in rows:
                ax.annotate(str(r["ef_search"]), (r[field], r["recall_at_10"]), fontsize=6, alpha=0.6)
        ax.set_xscale("log")
        ax.set_xlabel(f"queries per second, {label} (log scale)")
        ax.axhline(RECALL_TARGET, color="grey", lw=0.8, ls="--")
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(label)
    axes[0].set_ylabel("recall@10")
    axes[1].legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write_outputs(out: Path, meta: dict[str, Any], results: list[dict[str, Any]], final: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    targets = evaluate_targets(results)
    (out / "compare.json").write_text(
        json.dumps({"meta": meta, "targets": targets, "results": results}, indent=2, default=str) + "\n"
    )
    if not final:
        return
    n = next((r["n"] for r in results if "n" in r), "?")
    title = (
        f"{meta['data_name']}: n={n}, {meta['queries']} queries, M=16, ef_construction=200, k=10; "
        f"{meta['nproc']} cores, {meta['date_utc']}"
    )
    plot_note = plot(results, out / "compare.png", title)
    if plot_note:
        meta["plot"] = plot_note
    text = [
        f"# All systems on the same data, one run ({meta['date_utc']})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Data: {meta['data']} ({title})  ",
        f"Machine: {meta['nproc']} cores, {meta['cpu']}, Python {meta['python']}; "
        f"load average {meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end.",
        "",
        markdown_table(results, meta["clients"]),
        "",
        f"† the pass stopped after its time budget ({meta.get('budget_s', PHASE_BUDGET_S):g} s): QPS, latency and "
        "(for single client) recall over the queries answered by then (`single_queries` / `concurrent_queries` "
        "in the JSON).",
        "",
        f"## Targets (issue #8), at each system's lowest ef with recall@10 >= {RECALL_TARGET}",
        "",
        targets_table(targets),
        "",
    ]
    (out / "compare.md").write_text("\n".join(text))


def data_name(meta: dict[str, Any], data: Path) -> str:
    """A short name of the data set from its meta.json (realdata.py or synthdata.py)."""
    model = meta.get("model")
    if isinstance(model, dict):
        return f"{model.get('name', data.name)} embeddings of {meta.get('text_source', {}).get('package', '?')} phrases"
    return str(model or data.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "data" / "minilm")
    parser.add_argument("--n", type=int, default=None, help="use only the first N base rows (truth recomputed)")
    parser.add_argument("--systems", default=",".join(ALL_SYSTEMS))
    parser.add_argument("--ef", type=int, nargs="+", default=list(DEFAULT_EF))
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument(
        "--budget-s", type=float, default=PHASE_BUDGET_S, help="stop a search pass after this long (slow systems)"
    )
    parser.add_argument("--quick", action="store_true", help="--n 20000 --ef 64 128, output under bench/data")
    parser.add_argument("--ours-python", type=Path, default=ROOT / ".venv" / "bin" / "python")
    parser.add_argument("--peers-python", type=Path, default=ROOT / ".venv-peers" / "bin" / "python")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results (bench/data/compare-quick)")
    parser.add_argument("--report", type=Path, help="only rewrite compare.md/.png (and the targets) from this JSON")
    args = parser.parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        saved["meta"]["data_name"] = data_name(
            json.loads((ROOT / saved["meta"]["data"] / "meta.json").read_text())
            if (ROOT / saved["meta"]["data"] / "meta.json").exists()
            else {},
            Path(saved["meta"]["data"]),
        )
        write_outputs(args.out or args.report.parent, saved["meta"], saved["results"], final=True)
        print((args.out or args.report.parent).joinpath("compare.md").read_text())
        return 0
    if args.quick:
        args.n = args.n or 20_000
        if args.ef == list(DEFAULT_EF):
            args.ef = [64, 128]
    if args.out is None:
        args.out = ROOT / "bench" / ("data/compare-quick" if args.quick or args.n else "results")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in ALL_SYSTEMS]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(ALL_SYSTEMS)}")
    queries_meta = json.loads((args.data / "meta.json").read_text()) if (args.data / "meta.json").exists() else {}
    meta: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "loadavg_start": loadavg(),
        "hnsw": {"M": 16, "ef_construction": 200, "ef_search": args.ef, "k": 10},
        "clients": args.clients,
        "budget_s": args.budget_s,
        "data": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data),
        "data_name": data_name(queries_meta, args.data),
        "queries": (queries_meta.get("params") or {}).get("queries", "?"),
        "systems": systems,
    }
    results: list[dict[str, Any]] = []
    for system in systems:
        print(f"compare: {system} ...", file=sys.stderr, flush=True)
        res = run_system(system, args)
        if "skipped" in res or "failed" in res:
            print(f"compare: {system} NOT measured: {res.get('skipped') or res.get('failed')}", file=sys.stderr)
        results.append(res)
        write_outputs(args.out, meta, results, final=False)
    meta["loadavg_end"] = loadavg()
    write_outputs(args.out, meta, results, final=True)
    print((args.out / "compare.md").read_text())
    print(f"compare: wrote {args.out}/compare.{{md,json,png}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
