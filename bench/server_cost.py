"""The server's own CPU cost per request, in process: the public servicer called directly, in
the single-node shape (server + local shard in one process), with no client, socket or
second process sharing the cores. It isolates what the code costs per request from the gRPC
transport and the client, which on a noisy 2-core machine vary by +-20% between runs of the
end-to-end harness.

    .venv/bin/python bench/server_cost.py --data bench/data/synthetic-5000x384
    .venv/bin/python bench/server_cost.py --data bench/data/synthetic-5000x384 --ab 0ff9185 --rounds 5

A run (one child process, started in the tree it measures): create a collection, upsert the
data set through ``Upsert`` in batches of ``--batch`` (timed: microseconds per item), compact,
then call ``Search`` with each held-out query (one vector, k=10) ``--passes`` times per ef and
keep the fastest pass (microseconds per query; also the share of it spent in hnswlib). With
``--ab REF`` the base commit's tree (a temporary worktree, bench/ab.py) and this checkout are
measured alternately for ``--rounds`` rounds and the report gives after/before ratios of the
medians; a ratio below 1 is a cheaper server.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def measure(tree: Path, data: Path, batch: int, passes: int, efs: list[int], n_queries: int) -> dict[str, Any]:
    """One run in ``tree`` (imported from there); see the module docstring."""
    import numpy as np

    sys.path.insert(0, str(tree))
    from server.main import ServerProcess, add_arguments
    from server.service import AdminServicer, SearchServicer
    from vectorsearch.v1 import admin_service_pb2 as admin_pb
    from vectorsearch.v1 import search_service_pb2 as pb
    from vectorsearch.v1 import types_pb2 as types_pb

    base = np.load(data / "base.npy").astype(np.float32)
    queries = np.load(data / "queries.npy").astype(np.float32)[:n_queries]
    dim = base.shape[1]
    workdir = tempfile.mkdtemp(prefix="vs-cost-")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--local-shard",
            f"{workdir}/shard",
            "--database-url",
            f"sqlite:///{workdir}/meta.db",
            "--listen",
            "127.0.0.1:0",
        ]
    )
    server = ServerProcess(args)  # not started: no port is served, no refresher runs
    search = SearchServicer(server.engine)
    admin = AdminServicer(server.topology, server.engine)
    context: Any = _Context()  # duck-typed grpc.ServicerContext
    spec = types_pb.CollectionSpec(name="cost", dimension=dim, metric=types_pb.METRIC_COSINE)
    search.CreateCollection(pb.CreateCollectionRequest(spec=spec), context)

    started = time.perf_counter()
    for start in range(0, len(base), batch):
        rows = base[start : start + batch]
        items = [pb.ItemMetadata(id=str(i)) for i in range(start, start + len(rows))]
        vectors = types_pb.Vectors(dimension=dim, packed=rows.tobytes())
        search.Upsert(pb.UpsertRequest(collection="cost", items=items, vectors=vectors), context)
    upsert_us = (time.perf_counter() - started) / len(base) * 1e6
    admin.Compact(admin_pb.CompactRequest(collection="cost", wait=True), context)

    import hnswlib

    # hnswlib alone on the same data and parameters: the share of the cost that is the index
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=len(base), M=16, ef_construction=200, random_seed=1)
    index.add_items(base / np.linalg.norm(base, axis=1, keepdims=True), np.arange(len(base)))
    out: dict[str, Any] = {"n": len(base), "dim": dim, "upsert_us_per_item": round(upsert_us, 2), "search": {}}
    for ef in efs:
        requests = [
            pb.SearchRequest(
                collection="cost", queries=types_pb.Vectors(dimension=dim, packed=q.tobytes()), k=10, ef=ef
            )
            for q in queries
        ]
        for request in requests[: min(200, len(requests))]:  # warm-up
            search.Search(request, context)
        best = float("inf")
        for _ in range(passes):
            started = time.perf_counter()
            for request in requests:
                search.Search(request, context)
            best = min(best, time.perf_counter() - started)
        index.set_ef(ef)
        raw = float("inf")
        for _ in range(passes):
            started = time.perf_counter()
            for q in queries:
                index.knn_query(q[None, :], k=10)
            raw = min(raw, time.perf_counter() - started)
        out["search"][str(ef)] = {
            "us_per_query": round(best / len(requests) * 1e6, 1),
            "hnswlib_us_per_query": round(raw / len(requests) * 1e6, 1),
        }
    server.stop()
    return out


class _Context:
    """The part of grpc.ServicerContext the servicers use, for direct calls."""

    def time_remaining(self) -> float:
        return 60.0

    def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"{code}: {details}")

    def is_active(self) -> bool:
        return True

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def peer(self) -> str:
        return "in-process"

    def set_code(self, code: Any) -> None:
        pass

    def set_details(self, details: str) -> None:
        pass


def run_child(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    from testkit.procutil import tree_env

    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(tree),
        "--data",
        str(args.data.resolve()),
        "--batch",
        str(args.batch),
        "--passes",
        str(args.passes),
        "--queries",
        str(args.queries),
        "--ef",
        *map(str, args.ef),
    ]
    proc = subprocess.run(command, cwd=tree, env=tree_env(tree), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"server_cost: the run in {tree} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def figures(result: dict[str, Any]) -> dict[str, float]:
    """The figures of one run, by label (microseconds; lower is cheaper)."""
    out = {"upsert, us per item": float(result["upsert_us_per_item"])}
    for ef, search in result["search"].items():
        out[f"Search ef={ef}, us per query"] = search["us_per_query"]
        out[f"Search ef={ef}, us per query outside hnswlib"] = search["us_per_query"] - search["hnswlib_us_per_query"]
    return out


def ab_report(results: list[dict[str, Any]], command: str, before_sha: str) -> str:
    def median(variant: str, label: str) -> float:
        return statistics.median(figures(r)[label] for r in results if r["variant"] == variant)

    lines = [
        f"# Server cost per request, in process: this checkout (after) vs {before_sha[:9]} (before)",
        "",
        f"Command: `{command}`  ",
        f"Rounds: {max(r['round'] for r in results) + 1}; medians; n={results[0]['n']}, dim={results[0]['dim']}; "
        "lower is cheaper.",
        "",
        "| figure | before | after | after / before |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label in figures(results[0]):
        before, after = median("before", label), median("after", label)
        lines.append(f"| {label} | {before:.1f} | {after:.1f} | {after / before:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a data set directory (bench/datasets.py)")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--ef", type=int, nargs="+", default=[64])
    p.add_argument("--ab", metavar="REF", help="measure REF's tree against this checkout's")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, help="write server_cost.{md,json} here")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.data, args.batch, args.passes, args.ef, args.queries)))
        return 0

    from bench.ab import worktree
    from testkit.procutil import REPO

    command = "python bench/server_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if not args.ab:
        print(json.dumps(run_child(REPO, args), indent=1))
        return 0
    results: list[dict[str, Any]] = []
    with worktree(args.ab, Path(sys.executable)) as (before, sha):
        trees = {"before": before, "after": REPO}
        for round_ in range(args.rounds):
            order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
            for variant in order:
                result = run_child(trees[variant], args)
                result.update(variant=variant, round=round_)
                print(f"server_cost: round {round_} {variant}: {json.dumps(result)}", file=sys.stderr)
                results.append(result)
    report = ab_report(results, command, sha)
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "server_cost.md").write_text(report)
        (args.out / "server_cost.json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
