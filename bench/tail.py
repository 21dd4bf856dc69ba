"""Issue #19 item 4: single-client tail latency, idle and while background compaction folds.

    .venv/bin/python bench/tail.py --data bench/data/synthetic-150000x384      # 50k rows -> bench/results/tail.*
    .venv/bin/python bench/tail.py --data ... --quick                          # 10k rows, 20 s windows
    .venv/bin/python bench/tail.py --data ... --label before --server-root /tmp/wt-base   # before/after rows

Per shape (``--shapes``: ``single-node``, ``1-shard``, ``3-shards``, started as bench/ours.py starts
them, plus ``--metrics-listen 127.0.0.1:0`` to count the folds): load the first ``--n`` rows of the
set (Upserts of 1,000 rows from 4 threads, bench/ours.py's ingest), ``Compact(wait=true)``, then
one client thread searches (one query per call, k=10, ``--ef``, the set's queries in a cycle) for
``--window-s`` seconds twice:

(a) idle: nothing else runs;
(b) loaded: a writer process streams new rows (the set's rows after the first ``--n``, new ids)
    at ``--rate`` rows/s in Upserts of ``--batch`` rows on a fixed schedule, starting
    ``--lead-s`` before the window, so the delta fills and the shards' background compaction
    (every 10,000 pending rows, or 30 s) folds it into the graph again and again meanwhile.

Latency is the client's wall time per call (p50, p99, p99.9, max). The folds that completed in
the window are the difference of ``vs_compactions_total`` scraped from every process that owns a
shard before and after it (with the mean fold time from ``vs_compaction_duration_seconds``); a
loaded window is valid only with at least 2. Recall@10 is against the exact top-10 over the base
rows plus the streamed rows acknowledged before the call started. The target: p99 <= 2 x p50 in
every shape and condition.

Outputs (``--out``, default bench/results): ``tail.json`` holds every run by ``--label`` (a new
run replaces its label's rows and keeps the others); ``tail.md`` has the table of every label, the
commands and the machine. ``--py-spy DIR`` records the shard-owning processes (and the server)
with py-spy during each loaded window instead of measuring clean numbers (profiling runs only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import numpy.typing as npt

from bench.datasets import K, load_data
from bench.machine import cpu_model, git_commit, loadavg
from bench.rss import RssSampler

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ("single-node", "1-shard", "3-shards")
TARGET = 2.0
MIN_FOLDS = 2
CANDIDATES = 128  # streamed rows kept per query for the loaded recall's truth


# ---------------------------------------------------------------- the systems


def make_system(shape: str, workdir: Path, sampler: RssSampler) -> Any:
    """bench/ours.py's system for ``shape``, started with a metrics endpoint per process."""
    from bench import ours
    from testkit.clusterproc import ClusterProcess
    from testkit.serverproc import SingleNodeProcess

    metrics = ("--metrics-listen", "127.0.0.1:0")

    class TailSingleNode(ours.SingleNode):
        def start(self) -> str:
            self.proc = SingleNodeProcess(self.workdir / "single", *metrics, root=self.root)
            return self.proc.start()

        def metrics_files(self) -> list[Path]:
            return [self.workdir / "single" / "server.ready.metrics"]

        def pids(self) -> dict[str, int]:
            assert self.proc.proc is not None
            return {"server": self.proc.proc.pid}

    class TailCluster(ours.Cluster):
        def start(self) -> str:
            self.cluster = ClusterProcess(self.workdir / "cluster", *metrics, shards=self.shards, root=self.root)
            self.cluster.start()
            return self.cluster.address

        def metrics_files(self) -> list[Path]:
            return [self.workdir / "cluster" / f"shard-{i}.ready.metrics" for i in range(self.shards)]

        def pids(self) -> dict[str, int]:
            assert self.cluster.proc is not None
            out = {"server": self.cluster.proc.pid}
            out.update({f"shard-{i}": self.cluster.shard_pid(i) for i in range(self.shards)})
            return out

    class TailOneShard(TailCluster):
        name, shards = "ours-1-shard", 1

    class TailThreeShards(TailCluster):
        name, shards = "ours-3-shards", 3

    kinds: dict[str, type[ours.PublicApi]] = {
        "single-node": TailSingleNode,
        "1-shard": TailOneShard,
        "3-shards": TailThreeShards,
    }
    return kinds[shape](workdir, sampler)


def scrape(files: list[Path]) -> dict[str, float]:
    """Folds completed (``vs_compactions_total`` of the bench collection), the compaction
    histogram's sum and count, and the rows in the deltas, summed over the processes' metrics
    endpoints."""
    out = {"folds": 0.0, "seconds_sum": 0.0, "seconds_count": 0.0, "delta": 0.0}
    for path in files:
        address = path.read_text().strip()
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        for line in text.splitlines():
            if line.startswith('vs_compactions_total{collection="bench"}'):
                out["folds"] += float(line.split()[-1])
            elif line.startswith('vs_collection_delta_items{collection="bench"}'):
                out["delta"] += float(line.split()[-1])
            elif line.startswith("vs_compaction_duration_seconds_sum"):
                out["seconds_sum"] += float(line.split()[-1])
            elif line.startswith("vs_compaction_duration_seconds_count"):
                out["seconds_count"] += float(line.split()[-1])
    return out


# ---------------------------------------------------------------- the writer (a process of its own)


def writer_main(
    address: str,
    data: str,
    first: int,
    rows: int,
    rate: float,
    batch: int,
    acked: Any,
    go: Any,
    stop: Any,
    results: Any,
) -> None:
    """Streams rows ``first..first+rows`` of the set as new items at ``rate`` rows/s, ``batch``
    per Upsert, on a fixed schedule (a late batch is sent at once, never skipped); ``acked``
    counts the rows acknowledged so far. Puts its own figures on ``results`` when stopped."""
    from vectorsearch_client import Client

    base = np.load(Path(data) / "base.npy", mmap_mode="r")
    stream = np.ascontiguousarray(base[first : first + rows], dtype=np.float32)
    client = Client(address, timeout=60.0)
    interval = batch / rate
    latencies: list[float] = []
    late = 0
    go.wait()
    start = time.perf_counter()
    sent = 0
    error = ""
    try:
        while not stop.is_set() and sent + batch <= rows:
            due = start + (sent // batch) * interval
            now = time.perf_counter()
            if due > now:
                stop.wait(due - now)
                if stop.is_set():
                    break
            elif now - due > interval:
                late += 1
            ids = [f"s{i}" for i in range(sent, sent + batch)]
            t0 = time.perf_counter()
            upserted = client.upsert("bench", ids, stream[sent : sent + batch])
            latencies.append(time.perf_counter() - t0)
            if upserted != batch:
                raise RuntimeError(f"upserted {upserted} of {batch}")
            sent += batch
            acked.value = sent
    except Exception as exc:  # reported by the parent
        error = f"{type(exc).__name__}: {exc}"
    elapsed = time.perf_counter() - start
    client.close()
    times = np.asarray(latencies or [0.0])
    results.put(
        {
            "rows": sent,
            "seconds": round(elapsed, 2),
            "rows_per_s": round(sent / elapsed, 1) if elapsed else 0.0,
            "upsert_p50_ms": round(float(np.percentile(times, 50)) * 1e3, 2),
            "upsert_p99_ms": round(float(np.percentile(times, 99)) * 1e3, 2),
            "late_batches": late,
            "error": error,
        }
    )


# ---------------------------------------------------------------- measuring


def summary(times: npt.NDArray[np.float64]) -> dict[str, Any]:
    p50, p99, p999 = (float(np.percentile(times, q)) * 1e3 for q in (50, 99, 99.9))
    return {
        "queries": len(times),
        "qps": round(len(times) / float(times.sum()), 1),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "p999_ms": round(p999, 3),
        "max_ms": round(float(times.max()) * 1e3, 3),
        "p99_over_p50": round(p99 / p50, 2),
    }


def search_rows(system: Any, query: int, n: int) -> list[int]:
    """One Search of a prepared query; the hits as row numbers (``s{j}``, streamed row j: ``n + j``)."""
    hits = system.search_hits(system.requests[query])  # Client.search, partial results refused
    return [n + int(h.id[1:]) if h.id.startswith("s") else int(h.id) for h in hits]


def search_window(
    system: Any, prepared: list[Any], window_s: float, acked: Any | None, n: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.int64], list[list[int]]]:
    """One client, the queries in a cycle, for ``window_s`` seconds: call times, query index,
    rows acknowledged by the writer when each call started, the hits as row numbers."""
    times: list[float] = []
    which: list[int] = []
    seen: list[int] = []
    found: list[list[int]] = []
    clock = time.perf_counter
    end = clock() + window_s
    i = 0
    while True:
        q = i % len(prepared)
        before = acked.value if acked is not None else 0
        t0 = clock()
        if t0 > end:
            break
        ids = search_rows(system, prepared[q], n)
        times.append(clock() - t0)
        which.append(q)
        seen.append(before)
        found.append(ids)
        i += 1
    return np.asarray(times), np.asarray(which), np.asarray(seen), found


def recall(found: list[list[int]], which: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    hits = sum(len(set(f[:K]) & set(truth[q].tolist())) for f, q in zip(found, which, strict=True))
    return hits / (K * len(found))


def loaded_recall(
    found: list[list[int]],
    which: npt.NDArray[np.int64],
    seen: npt.NDArray[np.int64],
    base: npt.NDArray[np.float32],
    stream: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    truth: npt.NDArray[np.int64],
) -> float:
    """Recall@10 against the exact top-10 over the base rows and the streamed rows acknowledged
    before each call (streamed row j has id ``n + j`` here, ``s{j}`` on the server)."""
    n = len(base)
    top = int(seen.max()) if len(seen) else 0
    base_scores = np.einsum("qd,qkd->qk", queries, base[truth])  # inner product of each true row
    cand_rows = np.zeros((len(queries), 0), dtype=np.int64)
    cand_scores = np.zeros((len(queries), 0), dtype=np.float32)
    if top:
        scores = queries @ stream[:top].T
        keep = min(CANDIDATES, top)
        cand_rows = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        cand_scores = np.take_along_axis(scores, cand_rows, axis=1)
    hits = 0
    for ids, q, m in zip(found, which.tolist(), seen.tolist(), strict=True):
        rows = cand_rows[q]
        ok = rows < m
        s_rows, s_scores = rows[ok], cand_scores[q][ok]
        if len(s_rows) < min(K, m):  # too few candidates below m: exact over stream[:m]
            s_scores = stream[:m] @ queries[q]
            s_rows = np.arange(m)
        ids_all = np.concatenate([truth[q], s_rows + n])
        scores_all = np.concatenate([base_scores[q], s_scores])
        best = set(ids_all[np.argsort(-scores_all, kind="stable")[:K]].tolist())
        hits += len(best & set(ids[:K]))
    return hits / (K * len(found))


def py_spy(pids: dict[str, int], seconds: float, out: Path, shape: str) -> list[subprocess.Popen[bytes]]:
    exe = Path(sys.executable).with_name("py-spy")
    procs = []
    out.mkdir(parents=True, exist_ok=True)
    for name, pid in pids.items():
        target = out / f"{shape}-{name}.txt"
        cmd = [str(exe), "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "--threads", "--idle"]
        cmd += ["--nonblocking", "-f", "raw", "-o", str(target)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
    return procs


def run_shape(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    base, queries, truth, truth_source = load_data(args.data, args.n, args.queries)
    n = len(base)
    all_rows = np.load(args.data / "base.npy", mmap_mode="r")
    stream_rows = min(len(all_rows) - n, int(args.rate * (args.window_s + args.lead_s + 10)))
    if stream_rows < args.rate * (args.window_s + args.lead_s):
        raise SystemExit(f"{args.data} has only {len(all_rows) - n} rows after the first {n}: too few to stream")
    result: dict[str, Any] = {"shape": shape, "n": n, "dim": int(base.shape[1]), "ef": args.ef}
    result["truth"] = truth_source
    with tempfile.TemporaryDirectory(prefix=f"bench-tail-{shape}-") as tmp, RssSampler() as sampler:
        system = make_system(shape, Path(tmp), sampler)
        try:
            start = time.perf_counter()
            system.load(base)
            result["load_s"] = round(time.perf_counter() - start, 1)
            print(f"tail: {shape}: {n} rows loaded and compacted in {result['load_s']} s", file=sys.stderr)
            prepared = system.prepare_queries(queries)
            system.set_ef(args.ef)
            for i in range(args.warmup):
                search_rows(system, prepared[i % len(prepared)], n)
            files = system.metrics_files()
            # (a) idle
            before = scrape(files)
            times, which, _, found = search_window(system, prepared, args.window_s, None, n)
            after = scrape(files)
            result["idle"] = {
                **summary(times),
                "recall_at_10": round(recall(found, which, truth), 4),
                "folds": int(after["folds"] - before["folds"]),
                "loadavg": loadavg(),
            }
            print(f"tail: {shape} idle {result['idle']}", file=sys.stderr, flush=True)
            # (b) loaded: the writer streams new rows from --lead-s before the window to its end
            ctx = mp.get_context("spawn")
            acked, go, stop, results = ctx.Value("q", 0), ctx.Event(), ctx.Event(), ctx.Queue()
            address = system.proc.address if shape == "single-node" else system.cluster.address
            writer_args = (address, str(args.data), n, stream_rows, args.rate, args.batch, acked, go, stop, results)
            writer = ctx.Process(target=writer_main, args=writer_args, daemon=True)
            writer.start()
            time.sleep(1.0)  # its imports and data, before the schedule starts
            go.set()
            time.sleep(args.lead_s)
            spies = py_spy(system.pids(), args.window_s, args.py_spy, shape) if args.py_spy else []
            before = scrape(files)
            times, which, seen, found = search_window(system, prepared, args.window_s, acked, n)
            after = scrape(files)
            stop.set()
            wrote = results.get(timeout=120)
            writer.join(timeout=30)
            for spy in spies:
                spy.wait(timeout=60)
            folds = int(after["folds"] - before["folds"])
            fold_count = after["seconds_count"] - before["seconds_count"]
            stream = np.ascontiguousarray(all_rows[n : n + stream_rows], dtype=np.float32)
            result["loaded"] = {
                **summary(times),
                "recall_at_10": round(loaded_recall(found, which, seen, base, stream, queries, truth), 4),
                "folds": folds,
                "mean_fold_s": round((after["seconds_sum"] - before["seconds_sum"]) / fold_count, 2)
                if fold_count
                else None,
                "valid": folds >= MIN_FOLDS,
                "delta_rows_start_end": [int(before["delta"]), int(after["delta"])],
                "writer": wrote,
                "rows_streamed_in_window": int(seen.max() - seen.min()) if len(seen) else 0,
                "loadavg": loadavg(),
            }
            print(f"tail: {shape} loaded {result['loaded']}", file=sys.stderr, flush=True)
            if wrote["error"]:
                raise RuntimeError(f"writer failed: {wrote['error']}")
            result["code"] = system.info.get("code", {})
        finally:
            system.close()
    return result


# ---------------------------------------------------------------- report


def ratio_cell(row: dict[str, Any]) -> str:
    ratio = row["p99_over_p50"]
    return f"**{ratio:.2f}** ({'meets' if ratio <= TARGET else 'misses'} {TARGET:g}x)"


def markdown(saved: dict[str, Any]) -> str:
    lines = [
        "# Tail latency with background compaction (issue #19 item 4)",
        "",
        "`bench/tail.py` (see its docstring). Target: single-client p99 <= 2 x p50 in every shape, idle and",
        "while a writer streams upserts so that background compaction folds during the window. A loaded",
        f"row is valid only when >= {MIN_FOLDS} folds completed inside its window (summed over the shards).",
        "",
        "| run | shape | condition | QPS | p50 ms | p99 ms | p99.9 ms | max ms | p99/p50 | recall@10 | folds |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for label, run in saved["runs"].items():
        for shape in run["results"]:
            for condition in ("idle", "loaded"):
                row = shape.get(condition)
                if not row:
                    continue
                folds = str(row["folds"])
                if condition == "loaded":
                    folds += f" (mean {row['mean_fold_s']} s)" if row.get("mean_fold_s") else ""
                    folds += "" if row["valid"] else " INVALID"
                lines.append(
                    f"| {label} | {shape['shape']} | {condition} | {row['qps']:,.0f} | {row['p50_ms']:.2f} | "
                    f"{row['p99_ms']:.2f} | {row['p999_ms']:.2f} | {row['max_ms']:.1f} | {ratio_cell(row)} | "
                    f"{row['recall_at_10']:.3f} | {folds} |"
                )
    lines += ["", "## Runs", ""]
    for label, run in saved["runs"].items():
        meta = run["meta"]
        lines += [
            f"- **{label}** ({meta['date_utc']}, code {meta['code']}): `{meta['command']}`",
            f"  - {meta['n']:,} x {meta['dim']} rows of `{meta['data']}`, ef {meta['ef']}, k {K}, windows of "
            f"{meta['window_s']:g} s; writer {meta['rate']:g} rows/s in Upserts of {meta['batch']} (new ids), "
            f"from {meta['lead_s']:g} s before the loaded window",
            f"  - {meta['cpu']}, {meta['nproc']} cores, load average at start {meta['loadavg_start']}",
        ]
        for shape in run["results"]:
            loaded = shape.get("loaded") or {}
            writer = loaded.get("writer") or {}
            if writer:
                lines.append(
                    f"  - {shape['shape']}: loaded in {shape['load_s']} s; writer {writer['rows_per_s']:,.0f} rows/s, "
                    f"Upsert p50 {writer['upsert_p50_ms']} ms / p99 {writer['upsert_p99_ms']} ms, "
                    f"{writer['late_batches']} late batches; rows in the deltas at the start and end of the "
                    f"loaded window {loaded.get('delta_rows_start_end')}"
                )
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, label: str, meta: dict[str, Any], results: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tail.json"
    saved: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    saved["runs"][label] = {"meta": meta, "results": results}
    path.write_text(json.dumps(saved, indent=2) + "\n")
    md = out / "tail.md"
    notes = ""
    if md.exists():  # keep what follows the generated part (findings written by hand)
        text = md.read_text()
        marker = "<!-- notes -->"
        notes = text[text.index(marker) :] if marker in text else ""
    md.write_text(markdown(saved) + ("\n" + notes if notes else ""))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT / "bench" / "data" / "synthetic-150000x384")
    p.add_argument("--n", type=int, default=None, help="base rows (default 50,000; --quick 10,000)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--ef", type=int, default=32)
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--window-s", type=float, default=None, help="each measurement window (default 30; --quick 20)")
    p.add_argument("--lead-s", type=float, default=3.0, help="the writer starts this long before the window")
    p.add_argument("--rate", type=float, default=2000.0, help="streamed rows per second")
    p.add_argument("--batch", type=int, default=200, help="rows per Upsert of the writer")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="10k rows, 20 s windows")
    p.add_argument("--label", default="run", help="the rows' name in tail.json/md (a rerun replaces its rows)")
    p.add_argument("--server-root", type=Path, default=None, help="run the servers from this source tree")
    p.add_argument("--py-spy", type=Path, default=None, help="record py-spy profiles of the loaded windows here")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = p.parse_args(argv)
    args.n = args.n or (10_000 if args.quick else 50_000)
    args.window_s = args.window_s or (20.0 if args.quick else 30.0)
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = set(args.shapes) - set(SHAPES)
    if unknown:
        p.error(f"unknown shapes {sorted(unknown)}; choose from {', '.join(SHAPES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.server_root is not None:
        os.environ["VS_BENCH_SERVER_ROOT"] = str(args.server_root.resolve())
    server_root = Path(os.environ.get("VS_BENCH_SERVER_ROOT") or ROOT)
    data = args.data.relative_to(ROOT) if args.data.is_relative_to(ROOT) else args.data
    meta: dict[str, Any] = {
        "command": shlex.join(["python", "bench/tail.py", *(argv if argv is not None else sys.argv[1:])]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code": git_commit(server_root) + ("" if server_root == ROOT else f" ({server_root})"),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "loadavg_start": loadavg(),
        "data": str(data),
        "n": args.n,
        "dim": int(np.load(args.data / "base.npy", mmap_mode="r").shape[1]),
        **{k: getattr(args, k) for k in ("ef", "window_s", "lead_s", "rate", "batch", "queries")},
    }
    results = []
    for shape in args.shapes:
        print(f"tail: {shape} ...", file=sys.stderr, flush=True)
        results.append(run_shape(shape, args))
        if not args.py_spy:
            write_outputs(args.out, args.label, meta, results)
    if not args.py_spy:
        print((args.out / "tail.md").read_text())
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
