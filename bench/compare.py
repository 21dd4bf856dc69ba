"""Every system on the same data, in one run, measured by the same harness: our server in its
shapes, the bare transport limit over 1 and 2 hops, raw hnswlib, faiss, Chroma, pgvector and
Milvus Lite. With ``--ab REF``: our own systems, servers of REF against this checkout's.

    .venv-peers/bin/python bench/compare.py                  # full run -> bench/results/compare.{md,json,png}
    .venv-peers/bin/python bench/compare.py --quick          # 20k rows, 2 settings -> bench/data/compare-quick/
    .venv/bin/python bench/compare.py --systems ours-single-node,ours-1-shard --data DIR --n 20000
    .venv/bin/python bench/compare.py --ab 0ff9185 --systems ours-single-node,ours-1-shard --data DIR

Each system runs in its own child process, started with the interpreter of the virtualenv it lives
in (``--ours-python`` for bench/ours.py, ``--peers-python`` for bench/peers.py; this script itself
needs only numpy). The children run one after another, so no two systems share the cores. See
bench/README.md.
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

from bench import ab
from bench.harness import DEFAULT_CLIENTS, DEFAULT_EF, PHASE_BUDGET_S
from bench.machine import cpu_model, git_commit, loadavg
from bench.report import data_name, write_outputs

ROOT = Path(__file__).resolve().parent.parent
OURS = (
    "transport-1-hop",
    "ours-shard-direct",
    "ours-single-node",
    "transport-2-hops",
    "ours-1-shard",
    "transport-2-hops-3-backends",
    "ours-3-shards",
)
PEERS = ("hnswlib", "faiss", "pgvector", "chroma", "milvus")
ALL_SYSTEMS = OURS + PEERS
WORKER_TIMEOUT_S = 3600.0


def run_system(system: str, args: argparse.Namespace, server_root: Path | None = None) -> dict[str, Any]:
    """Runs one worker child and returns its result (or why it has none). ``server_root``: the
    source tree our servers start from (default: this checkout)."""
    ours = system in OURS
    python = args.ours_python if ours else args.peers_python
    script = ROOT / "bench" / ("ours.py" if ours else "peers.py")
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result_path = Path(fh.name)
    cmd = [str(python), str(script), "--worker", system, "--data", str(args.data), "--result", str(result_path)]
    cmd += ["--ef", *map(str, args.ef), "--warmup", str(args.warmup), "--clients", str(args.clients)]
    cmd += ["--budget-s", str(args.budget_s)]
    cmd += [] if args.n is None else ["--n", str(args.n)]
    cmd += [] if args.queries is None else ["--queries", str(args.queries)]
    env = dict(os.environ, VS_BENCH_SERVER_ROOT=str(server_root)) if server_root else None
    start = time.perf_counter()
    load_before = loadavg()
    try:
        proc = subprocess.run(cmd, timeout=WORKER_TIMEOUT_S, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
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
    if "failed" in result or "skipped" in result:
        print(f"compare: {system} NOT measured: {result.get('skipped') or result.get('failed')}", file=sys.stderr)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "data" / "minilm", help="a bench/datasets.py set")
    parser.add_argument("--n", type=int, default=None, help="use only the first N base rows (truth recomputed)")
    parser.add_argument("--queries", type=int, default=None, help="use only the first N queries")
    parser.add_argument("--systems", default=None, help=f"comma-separated, default all: {','.join(ALL_SYSTEMS)}")
    parser.add_argument("--ef", type=int, nargs="+", default=list(DEFAULT_EF))
    parser.add_argument("--clients", type=int, default=DEFAULT_CLIENTS)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument(
        "--budget-s", type=float, default=PHASE_BUDGET_S, help="stop a search pass after this long (slow systems)"
    )
    parser.add_argument("--quick", action="store_true", help="--n 20000 --ef 64 128, output under bench/data")
    parser.add_argument("--ours-python", type=Path, default=ROOT / ".venv" / "bin" / "python")
    parser.add_argument("--peers-python", type=Path, default=ROOT / ".venv-peers" / "bin" / "python")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results (bench/data/compare-quick, ab)")
    parser.add_argument("--report", type=Path, help="only rewrite compare.md/.png (and the targets) from this JSON")
    parser.add_argument("--ab", metavar="REF", help=f"A/B: servers of REF vs this checkout (systems: {ab.AB_SYSTEMS})")
    parser.add_argument("--ab-rounds", type=int, default=1, help="before/after pairs per system (order alternates)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = args.n or 20_000
        if args.ef == list(DEFAULT_EF):
            args.ef = [64, 128]
    allowed = ab.AB_SYSTEMS if args.ab else ALL_SYSTEMS
    args.systems = [s.strip() for s in (args.systems or ",".join(allowed)).split(",") if s.strip()]
    unknown = [s for s in args.systems if s not in allowed]
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(allowed)}")
    if args.out is None and not args.report:
        quick = args.quick or args.n
        args.out = ROOT / "bench" / ("data/ab" if args.ab else "data/compare-quick" if quick else "results")
    return args


def run_meta(args: argparse.Namespace) -> dict[str, Any]:
    data_meta = json.loads((args.data / "meta.json").read_text()) if (args.data / "meta.json").exists() else {}
    return {
        "command": shlex.join(["python", *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "loadavg_start": loadavg(),
        "hnsw": {"M": 16, "ef_construction": 200, "ef_search": args.ef, "k": 10},
        "ef": args.ef,
        "n": args.n,
        "clients": args.clients,
        "budget_s": args.budget_s,
        "data": str(args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data),
        "data_name": data_name(data_meta, args.data),
        "queries": args.queries or (data_meta.get("params") or {}).get("queries", "?"),
        "systems": args.systems,
    }


def rewrite_report(args: argparse.Namespace) -> int:
    saved = json.loads(args.report.read_text())
    data = ROOT / saved["meta"]["data"]
    data_meta = json.loads((data / "meta.json").read_text()) if (data / "meta.json").exists() else {}
    saved["meta"]["data_name"] = data_name(data_meta, Path(saved["meta"]["data"]))
    out = args.out or args.report.parent
    write_outputs(out, saved["meta"], saved["results"], final=True)
    print((out / "compare.md").read_text())
    return 0


def compare(args: argparse.Namespace, meta: dict[str, Any]) -> int:
    results: list[dict[str, Any]] = []
    for system in args.systems:
        print(f"compare: {system} ...", file=sys.stderr, flush=True)
        results.append(run_system(system, args))
        write_outputs(args.out, meta, results, final=False)
    meta["loadavg_end"] = loadavg()
    write_outputs(args.out, meta, results, final=True)
    print((args.out / "compare.md").read_text())
    print(f"compare: wrote {args.out}/compare.{{md,json,png}}", file=sys.stderr)
    return 0


def compare_ab(args: argparse.Namespace, meta: dict[str, Any]) -> int:
    def run(system: str, tree: Path) -> dict[str, Any]:
        print(f"compare: {system} from {tree} ...", file=sys.stderr, flush=True)
        return run_system(system, args, server_root=tree)

    with ab.worktree(args.ab, args.ours_python) as (tree, sha):
        meta.update(before=f"{args.ab} ({sha[:9]}, a worktree)", after=f"this checkout ({git_commit(ROOT)})")
        meta.update(rounds=args.ab_rounds)

        def save(results: list[dict[str, Any]]) -> None:
            ab.write(args.out, meta, results, args.systems)

        results = ab.run_pairs(args.systems, tree, args.ab_rounds, run, save)
    meta["loadavg_end"] = loadavg()
    print(ab.write(args.out, meta, results, args.systems))
    print(f"compare: wrote {args.out}/ab.{{md,json}}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return rewrite_report(args)
    meta = run_meta(args)
    if not args.ab:
        return compare(args, meta)
    try:
        return compare_ab(args, meta)
    except ab.AbError as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
