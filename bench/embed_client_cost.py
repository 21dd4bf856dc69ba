"""Client CPU per embedded item: ``server.embedding`` as it is against the same package at an
older commit (``--old-ref``, by default the tritonclient ``InferInput``/``async_infer`` client that
bench/results/clip-embedding.md measured), one Triton serving the random CLIP, same run.

Usage: ``.venv/bin/python bench/embed_client_cost.py [--rounds 3] [--seconds 3]``

1. ``clipmodel.random`` (seed 0) exported by ``clipmodel.export`` with the default
   ``ServingOptions`` (dynamic batching on), served by one ``clipmodel.triton_process``.
2. The old package is ``git show REF:server/embedding/...`` written to a temporary directory
   that goes first on the worker's ``sys.path`` (the repository is not touched).
3. Each cell is a fresh worker process (``--worker``): ``clients`` threads sharing one
   ``TritonEmbedder`` (cache off), each calling ``embed_texts`` with ``per_call`` texts back to
   back; ``--warm-s`` of warm-up, then ``--seconds`` measured. Client CPU = the worker's
   ``time.process_time()`` over the measured window (every thread of the process, gRPC's
   included) / items; Triton CPU = tritonserver + its python-backend stubs over the same window;
   avg batch = Triton's inference count / execution count.
4. Rounds alternate the order (old, new / new, old) per cell. Writes ``--out`` (markdown) and the
   same figures as JSON next to it. The machine is shared: compare old and new within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import machine  # noqa: E402
from bench.clip_embedding import drive, group_cpu_s, texts  # noqa: E402

OLD_REF = "3f99e70"  # server/embedding with tritonclient's InferInput / async_infer / InferResult
PATHS = ("old", "new")
CALL_TIMEOUT_S = 30.0
PROTOCOL = "@@ "


def parse_cells(text: str) -> list[tuple[int, int]]:
    """``"1x1,32x1,1x32"`` -> [(clients, texts per call), ...]."""
    cells = []
    for part in text.split(","):
        clients, per_call = part.lower().split("x")
        cells.append((int(clients), int(per_call)))
    return cells


def write_old_package(ref: str, into: Path) -> str:
    """``server/__init__.py`` and ``server/embedding/*`` as of ``ref`` under ``into``; the commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", ref, "server/embedding/"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in ["server/__init__.py", *names]:
        data = subprocess.run(["git", "show", f"{ref}:{name}"], cwd=ROOT, check=True, capture_output=True).stdout
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        (into / name).write_bytes(data)
    return commit


# -- worker: one cell in its own process ----------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    if args.code:
        sys.path.insert(0, args.code)
    import server.embedding as package
    from core.errors import DomainError
    from server.embedding import TEXT, TritonEmbedder, make_cache

    expected = Path(args.code or ROOT).resolve()
    assert Path(package.__file__).resolve().is_relative_to(expected), package.__file__
    captions = texts()
    per_call = args.per_call

    embedder = TritonEmbedder(args.url, cache=make_cache("off"))
    embedder.embed_texts(captions[:1], timeout=CALL_TIMEOUT_S)  # identity read, channel up

    def call(i: int) -> bool:
        start = (i * per_call) % len(captions)
        batch = [captions[(start + j) % len(captions)] for j in range(per_call)]
        try:
            embedder.embed_texts(batch, timeout=CALL_TIMEOUT_S)
        except DomainError:
            return False
        return True

    marks: dict[str, Any] = {}

    def between() -> None:
        stats = embedder.model_stats(TEXT)
        marks["before"] = (stats.inference_count, stats.execution_count, sum(group_cpu_s(args.pgid)))

    result = drive(call, args.clients, args.warm_s, args.seconds, between)
    stats = embedder.model_stats(TEXT)
    triton_cpu_s = sum(group_cpu_s(args.pgid)) - marks["before"][2]
    embedder.close()
    latencies = sorted(result["latencies_s"])
    calls = len(latencies)
    out = {
        "calls": calls,
        "items": calls * per_call,
        "errors": result["errors"],
        "elapsed_s": result["elapsed_s"],
        "client_cpu_s": result["client_cpu_s"],
        "triton_cpu_s": triton_cpu_s,
        "inferences": stats.inference_count - marks["before"][0],
        "executions": stats.execution_count - marks["before"][1],
        "p50_ms": 1e3 * latencies[calls // 2] if calls else None,
    }
    print(PROTOCOL + json.dumps(out), flush=True)


def run_cell(
    path: str, code: Path | None, url: str, pgid: int, clients: int, per_call: int, args: argparse.Namespace
) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--url", url, "--pgid", str(pgid)]
    command += ["--clients", str(clients), "--per-call", str(per_call)]
    command += ["--seconds", str(args.seconds), "--warm-s", str(args.warm_s)]
    if code is not None:
        command += ["--code", str(code)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)
    line = next(x for x in done.stdout.splitlines() if x.startswith(PROTOCOL))
    cell = json.loads(line[len(PROTOCOL) :])
    cell.update(path=path, clients=clients, per_call=per_call)
    return cell


# -- report -------------------------------------------------------------------------------------


def figures(cells: list[dict[str, Any]]) -> dict[str, float]:
    items = sum(c["items"] for c in cells)
    elapsed = sum(c["elapsed_s"] for c in cells)
    executions = sum(c["executions"] for c in cells)
    return {
        "items_s": items / elapsed,
        "client_ms": 1e3 * sum(c["client_cpu_s"] for c in cells) / items,
        "triton_ms": 1e3 * sum(c["triton_cpu_s"] for c in cells) / items,
        "client_cores": sum(c["client_cpu_s"] for c in cells) / elapsed,
        "batch": sum(c["inferences"] for c in cells) / executions if executions else float("nan"),
        "p50_ms": statistics.median(c["p50_ms"] for c in cells if c["p50_ms"] is not None),
        "errors": sum(c["errors"] for c in cells),
        "items": items,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Embedding client CPU per item: tritonclient wrappers (old) vs prebuilt ModelInfer bytes (new)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"- Date: {result['date']}; commit {result['commit']}; {result['cpus']} CPUs ({result['cpu_model']}); "
        f"total run {result['total_s']:.0f} s",
        f"- `uptime` at start: `{result['uptime_start']}`; at end: `{result['uptime_end']}`",
        f"- old = `server/embedding` at {result['old_commit']} (tritonclient `InferInput` + `async_infer` + "
        "`InferResult.as_numpy`, one request per item); new = the working tree",
        f"- Model: `{result['identity']}` (random CLIP), default serving options (dynamic batching on)",
        f"- Text only; cache off; {result['rounds']} round(s) of {result['seconds']} s per cell after "
        f"{result['warm_s']} s of warm-up, order old/new alternating per round, each cell a fresh worker process; "
        "client CPU = the worker's process CPU (all threads) / items; Triton CPU = tritonserver + stubs / items",
        "",
        "| clients x texts per call | path | items/s | client CPU ms/item | client cores | Triton CPU ms/item "
        "| avg batch | p50 ms per call | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    summary = []
    for key in result["cell_keys"]:
        clients, per_call = key
        by_path = {}
        for path in PATHS:
            cells = [
                c for c in result["cells"] if (c["clients"], c["per_call"], c["path"]) == (clients, per_call, path)
            ]
            f = figures(cells)
            by_path[path] = f
            lines.append(
                f"| {clients} x {per_call} | {path} | {f['items_s']:,.0f} | {f['client_ms']:.3f} | "
                f"{f['client_cores']:.2f} | {f['triton_ms']:.3f} | {f['batch']:.1f} | {f['p50_ms']:.2f} | "
                f"{f['errors']} |"
            )
        rounds_cpu = []
        rounds_rate = []
        for r in range(result["rounds"]):
            per = {
                p: figures(
                    [
                        c
                        for c in result["cells"]
                        if (c["clients"], c["per_call"], c["path"], c["round"]) == (clients, per_call, p, r)
                    ]
                )
                for p in PATHS
            }
            rounds_cpu.append(per["new"]["client_ms"] / per["old"]["client_ms"])
            rounds_rate.append(per["new"]["items_s"] / per["old"]["items_s"])
        summary.append(
            f"| {clients} x {per_call} | {by_path['new']['client_ms'] / by_path['old']['client_ms']:.2f} "
            f"({', '.join(f'{x:.2f}' for x in rounds_cpu)}) | "
            f"{by_path['new']['items_s'] / by_path['old']['items_s']:.2f} "
            f"({', '.join(f'{x:.2f}' for x in rounds_rate)}) |"
        )
    lines += [
        "",
        "## New / old (pooled; per round in brackets)",
        "",
        "| clients x texts per call | client CPU per item new/old | items/s new/old |",
        "| --- | --- | --- |",
        *summary,
        "",
        "## Interpretation",
        "",
        "(Written by hand after a run; a rerun rewrites everything above and leaves this placeholder.)",
        "",
    ]
    return "\n".join(lines)


def uptime() -> str:
    return subprocess.run(["uptime"], check=True, capture_output=True, text=True).stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, order old/new alternating (default 3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell (default 3)")
    parser.add_argument("--warm-s", type=float, default=0.5, help="warm-up seconds per cell (default 0.5)")
    parser.add_argument("--cells", default="1x1,32x1,1x32", help="CLIENTSxTEXTS_PER_CALL, comma-separated")
    parser.add_argument(
        "--old-ref", default=OLD_REF, help=f"git commit of the old server/embedding (default {OLD_REF})"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "embed-client-cost.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--pgid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--per-call", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--code", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return

    from clipmodel import export, random
    from clipmodel.triton_process import TritonProcess

    began = time.monotonic()
    command = "python bench/embed_client_cost.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:]))
    result: dict[str, Any] = {
        "command": command.strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": machine.git_commit(ROOT),
        "cpus": os.cpu_count(),
        "cpu_model": machine.cpu_model(),
        "uptime_start": uptime(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warm_s": args.warm_s,
        "cell_keys": parse_cells(args.cells),
        "cells": [],
    }
    print(result["uptime_start"], file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="embed-client-cost-") as tmp_name:
        tmp = Path(tmp_name)
        old_code = tmp / "old"
        result["old_commit"] = write_old_package(args.old_ref, old_code)
        weights = random.save(tmp / "weights", seed=0)
        result["identity"] = export.export(weights, tmp / "repo").id
        with TritonProcess(tmp / "repo", tmp / "triton") as server:
            server.start()
            for r in range(args.rounds):
                for clients, per_call in result["cell_keys"]:
                    for path in PATHS if r % 2 == 0 else PATHS[::-1]:
                        code = old_code if path == "old" else None
                        cell = run_cell(path, code, server.grpc_url, server.pid, clients, per_call, args)
                        cell["round"] = r
                        result["cells"].append(cell)
                        print(
                            f"round {r} {clients}x{per_call} {path}: {cell['items'] / cell['elapsed_s']:,.0f} items/s, "
                            f"client {1e3 * cell['client_cpu_s'] / cell['items']:.3f} ms/item, "
                            f"batch {cell['inferences'] / max(1, cell['executions']):.1f}",
                            file=sys.stderr,
                            flush=True,
                        )
    result["uptime_end"] = uptime()
    result["total_s"] = time.monotonic() - began
    print(result["uptime_end"], file=sys.stderr, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(result))
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
