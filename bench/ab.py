"""Same-run A/B of our own systems: the servers of a base commit against this checkout's.

compare.py ``--ab REF`` checks REF out into a temporary git worktree (under /tmp), builds its
stubs there (``python -m vsproto.build``), then runs each selected system of ours twice per round
on the same data: once with its server processes started from the worktree ("before") and once
from this checkout ("after"). The client side (harness, public API, stubs) is this checkout's in
both. Rounds alternate the order (before/after, then after/before). The report gives, per system
and ef, the after/before ratio of the medians over the rounds of single-client, concurrent and
batched QPS, and of acknowledged ingest. The worktree is removed at the end.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.report import fmt
from testkit.procutil import REPO, tree_env

AB_SYSTEMS = ("ours-single-node", "ours-1-shard", "ours-3-shards", "ours-shard-direct")
SEARCH_FIGURES = (("single_qps", "QPS 1 client"), ("concurrent_qps", "QPS 8 clients"), ("batch_qps", "batch QPS"))
RunSystem = Callable[[str, Path], dict[str, Any]]


class AbError(RuntimeError):
    """The base commit could not be checked out or built."""


def git(*args: str, cwd: Path = REPO) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise AbError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


@contextlib.contextmanager
def worktree(ref: str, python: Path) -> Iterator[tuple[Path, str]]:
    """A detached worktree of ``ref`` with its stubs built; removed on exit. Yields (path, sha)."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    tmp = Path(tempfile.mkdtemp(prefix=f"vs-ab-{sha[:9]}-"))
    tree = tmp / "tree"
    try:
        git("worktree", "add", "--detach", str(tree), sha)
        build = [str(python), "-m", "vsproto.build"]
        proc = subprocess.run(build, cwd=tree, env=tree_env(tree), capture_output=True, text=True)
        if proc.returncode:
            raise AbError(f"building the stubs of {ref} failed:\n{proc.stderr[-3000:]}")
        yield tree, sha
    finally:
        if tree.exists():
            with contextlib.suppress(AbError):
                git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(AbError):
            git("worktree", "prune")


def run_pairs(
    systems: list[str], before: Path, rounds: int, run_system: RunSystem, save: Callable[[list[dict[str, Any]]], None]
) -> list[dict[str, Any]]:
    """Every system, before and after, ``rounds`` times (order alternating); ``save`` after each run."""
    trees = {"before": before, "after": REPO}
    results: list[dict[str, Any]] = []
    for round_ in range(rounds):
        order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
        for system in systems:
            for variant in order:
                result = run_system(system, trees[variant])
                result.update(variant=variant, round=round_)
                results.append(result)
                save(results)
    return results


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarise(results: list[dict[str, Any]], systems: list[str]) -> list[dict[str, Any]]:
    """Per system (and ef): the median before and after, and after / before, of each figure."""
    return [summarise_system([r for r in results if r["system"] == system], system) for system in systems]


def summarise_system(runs: list[dict[str, Any]], system: str) -> dict[str, Any]:
    measured = {v: [r for r in runs if r["variant"] == v and "searches" in r] for v in ("before", "after")}
    failed = [
        f"{r['variant']} (round {r['round']}): {r.get('failed') or r.get('skipped')}"
        for r in runs
        if "searches" not in r
    ]

    def figure(get: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        return ratio_of({v: median([get(r) for r in rs]) for v, rs in measured.items()})

    def at_ef(ef: int, field: str) -> Callable[[dict[str, Any]], Any]:
        return lambda r: next((row.get(field) for row in r["searches"] if row["ef_search"] == ef), None)

    figures = [{"figure": "ingest ack rows/s", "ef": None, **figure(lambda r: r["ingest"]["ack_rows_per_s"])}]
    efs = sorted({row["ef_search"] for rs in measured.values() for r in rs for row in r["searches"]})
    for ef in efs:
        recall = figure(at_ef(ef, "recall_at_10"))
        for field, label in SEARCH_FIGURES:
            figures.append({"figure": label, "ef": ef, **figure(at_ef(ef, field)), "recall": recall})
    return {"system": system, "failed": failed, "figures": figures}


def ratio_of(values: dict[str, float | None]) -> dict[str, Any]:
    before, after = values["before"], values["after"]
    ratio = None if before is None or after is None or not before else round(after / before, 3)
    return {"before": before, "after": after, "ratio": ratio}


def markdown(meta: dict[str, Any], summary: list[dict[str, Any]]) -> str:
    lines = [
        f"# A/B: servers of {meta['after']} (after) vs {meta['before']} (before), {meta['date_utc']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Data: {meta['data']}, n={meta.get('n') or '?'}; ef {meta['ef']}; {meta['rounds']} round(s), medians; "
        f"{meta['nproc']} cores, load average {meta['loadavg_start']} -> {meta.get('loadavg_end')}.",
        "",
        "| system | figure | ef | before | after | after / before | recall@10 before / after |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entry in summary:
        for f in entry["figures"]:
            rec = f.get("recall")
            recall = "" if rec is None else f"{fmt(rec['before'], '.4f')} / {fmt(rec['after'], '.4f')}"
            lines.append(
                f"| {entry['system']} | {f['figure']} | {f['ef'] or ''} | {fmt(f['before'])} | {fmt(f['after'])} "
                f"| {fmt(f['ratio'], '.3f')} | {recall} |"
            )
        for why in entry["failed"]:
            lines.append(f"| {entry['system']} | not measured | | | | | {why} |")
    return "\n".join(lines) + "\n"


def write(out: Path, meta: dict[str, Any], results: list[dict[str, Any]], systems: list[str]) -> str:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results, systems)
    meta = {**meta, "n": meta.get("n") or next((r["n"] for r in results if "n" in r), None)}
    (out / "ab.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "results": results}, indent=2, default=str) + "\n"
    )
    text = markdown(meta, summary)
    (out / "ab.md").write_text(text)
    return text
