"""compare.py's reports: the targets of issue #8 evaluated on one run's results, the markdown
table, the recall-versus-QPS plot, and the files they go to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.harness import DEFAULT_CLIENTS, PHASE_BUDGET_S

RECALL_TARGET = 0.97


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
    """A short name of the data set from its meta.json (written by bench/datasets.py)."""
    model = meta.get("model")
    if isinstance(model, dict):
        return f"{model.get('name', data.name)} embeddings of {meta.get('text_source', {}).get('package', '?')} phrases"
    return str(model or data.name)
