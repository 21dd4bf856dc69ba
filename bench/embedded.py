"""The embedded shape (issue #19 item 5) against Chroma's embedded client and raw hnswlib, one run.

    .venv/bin/python bench/embedded.py [--n 50000] [--dim 384] [--queries 500] [--rounds 3]
        [--target 0.95] [--peers-python .venv-peers/bin/python] [--out bench/results/embedded.md]

Systems, each in its own child process holding its index for the whole run:

- ``ours``: ``vectorsearch_client.open(DIR)`` (this checkout's SDK and server package, in
  ``.venv``): ``bulk_upsert`` in batches of 1,000 (every batch fsync'ed in the shard's log before
  it is acknowledged), ``compact(wait=True)``, then ``search(..., include_metadata=False)``, the
  equivalent of Chroma's ``include=[]``. ``ours+meta`` is the same process with the SDK's default,
  ``include_metadata=True`` (a second read per query for the hits' metadata).
- ``chroma``: ``chromadb.PersistentClient`` (``bench/peers.py`` ``ChromaPeer``, in
  ``.venv-peers``), ``collection.query(..., include=[])``.
- ``hnswlib``: raw ``hnswlib.Index`` in process (``bench/peers.py`` ``HnswlibPeer``), one thread
  per query: the ceiling.

Same data (seeded synthetic, embedding-like, unit rows, ``testkit.datasets``), HNSW M=16,
ef_construction=200, inner product, k=10. ef is tuned per system: the lowest of ``--ef`` whose
recall@10 over the queries reaches ``--target``. Then ``--rounds`` rounds on the tuned ef, each
measuring every system once with one client (``--warmup`` calls first, then every query once,
QPS = queries / sum of call times), the order rotated per round; only one system runs at a time
(the others wait on their stdin). The machine is shared and noisy: read the per-round ratios
(ours / chroma), whose median the report gives.

Children speak one JSON object per line on stdin/stdout (their library output goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.datasets import K
from bench.harness import HNSW_EF_CONSTRUCTION, HNSW_M, Matrix, System, latency_summary
from bench.machine import cpu_model, git_commit, loadavg
from testkit.truth import recall_at_k

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "embedded.md"
DEFAULT_EF = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384)
SYSTEMS = ("ours", "chroma", "hnswlib")
WORKERS = {"ours": "ours", "ours+meta": "ours", "chroma": "chroma", "hnswlib": "hnswlib"}


# ---------------------------------------------------------------- the systems (in the children)


class OursEmbedded(System):
    name = "ours"
    include_metadata = False

    def load(self, base: Matrix) -> dict[str, float]:
        import vectorsearch_client as vs

        self.client = vs.open(self.workdir / "ours", timeout=3600.0)
        n = base.shape[0]
        self.client.create_collection(
            "bench", base.shape[1], "inner_product", m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION
        )
        start = time.perf_counter()
        self.client.bulk_upsert("bench", [str(i) for i in range(n)], base, batch_size=1000, progress=False)
        ack = time.perf_counter() - start
        stats = self.client.compact("bench", timeout=3600.0)
        indexed = time.perf_counter() - start
        if sum(s.graph_elements for s in stats) != n:
            raise RuntimeError(f"not every row is in the graph after compact: {stats}")
        self.info = {
            "version": f"this checkout ({git_commit(ROOT)})",
            "index": "vectorsearch_client.open(dir): the single-node engine in process, WAL fsync on",
            "ingest": "bulk_upsert, batches of 1,000, then compact(wait=True)",
            "search": "client.search(collection, vector, k=10, ef=ef, include_metadata=False)",
        }
        return {"ack_s": ack, "indexed_s": indexed}

    def set_ef(self, ef: int) -> None:
        self.ef = ef

    def search_one(self, query: Any) -> list[int]:
        hits = self.client.search("bench", query, k=K, ef=self.ef, include_metadata=self.include_metadata)
        return [int(h.id) for h in hits]

    def close(self) -> None:
        self.client.close()


def make_system(name: str, workdir: Path) -> System:
    if name == "ours":
        return OursEmbedded(workdir, None)  # type: ignore[arg-type]
    from bench.peers import ChromaPeer, HnswlibPeer

    peer = {"chroma": ChromaPeer, "hnswlib": HnswlibPeer}[name]
    return peer(workdir, None)  # type: ignore[arg-type]


def worker(name: str, data: Path) -> int:
    """A child: loads the data into ``name``, then answers commands until ``quit``."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # library chatter goes to stderr, the protocol keeps stdout
    base = np.load(data / "base.npy")
    queries = np.load(data / "queries.npy")
    truth = np.load(data / "truth.npy")
    workdir = Path(tempfile.mkdtemp(prefix=f"emb-{name}-", dir=data))
    system = make_system(name, workdir)
    loaded = system.load(base)
    prepared = system.prepare_queries(queries)
    current_ef = -1
    out.write(json.dumps({"ready": True, "load": loaded, "info": system.info}) + "\n")
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        if command["ef"] != current_ef:
            system.set_ef(command["ef"])
            current_ef = command["ef"]
        if hasattr(system, "include_metadata"):
            system.include_metadata = bool(command.get("metadata", False))
        for i in range(command.get("warmup", 0)):
            system.search_one(prepared[i % len(prepared)])
        times = np.empty(len(prepared))
        found = np.full((len(prepared), K), -1, dtype=np.int64)
        clock = time.perf_counter
        for i, q in enumerate(prepared):
            t0 = clock()
            ids = system.search_one(q)
            times[i] = clock() - t0
            found[i, : min(K, len(ids))] = ids[:K]
        reply = {**latency_summary(times), "recall": round(recall_at_k(truth, found), 4)}
        out.write(json.dumps(reply) + "\n")
    system.close()
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


# ---------------------------------------------------------------- the parent


class Child:
    def __init__(self, name: str, python: str, data: Path) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "clients" / "python" / "src")])}
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--worker", name, "--data", str(data)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.ready = self.read()

    def read(self) -> dict[str, Any]:
        stdout: IO[str] | None = self.proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name}: the worker ended (exit code {self.proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask_quit()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def ask_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self.proc.stdin.close()


def make_data(n: int, dim: int, nq: int, seed: int, out: Path) -> None:
    from testkit.datasets import data_and_queries, unit_rows
    from testkit.truth import exact_top_k

    base, queries = data_and_queries(n, nq, dim, seed)
    base, queries = unit_rows(base), unit_rows(queries)
    np.save(out / "base.npy", base)
    np.save(out / "queries.npy", queries)
    np.save(out / "truth.npy", exact_top_k(base, queries, K, metric="ip"))


def tune(child: Child, efs: list[int], target: float, metadata: bool = False) -> tuple[int, list[tuple[int, float]]]:
    """The lowest ef whose recall@10 reaches ``target`` (the largest tried when none does)."""
    tried: list[tuple[int, float]] = []
    for ef in efs:
        recall = child.ask(cmd="measure", ef=ef, warmup=0, metadata=metadata)["recall"]
        tried.append((ef, recall))
        if recall >= target:
            return ef, tried
    return efs[-1], tried


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--ef", type=int, nargs="+", default=list(DEFAULT_EF))
    p.add_argument("--ours-python", default=sys.executable)
    p.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.data)

    command = "python bench/embedded.py " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.time()
    load_before = loadavg()
    data = Path(tempfile.mkdtemp(prefix="vs-bench-embedded-"))
    children: dict[str, Child] = {}
    try:
        t0 = time.perf_counter()
        make_data(args.n, args.dim, args.queries, args.seed, data)
        print(f"data: {args.n} x {args.dim}, {args.queries} queries ({time.perf_counter() - t0:.1f} s)", flush=True)
        for name in SYSTEMS:  # one at a time: no build competes with another
            python = args.ours_python if name == "ours" else args.peers_python
            t0 = time.perf_counter()
            children[name] = Child(name, python, data)
            print(f"{name}: loaded in {time.perf_counter() - t0:.1f} s: {children[name].ready['load']}", flush=True)
        efs = sorted(args.ef)
        tuned: dict[str, tuple[int, list[tuple[int, float]]]] = {}
        for name in ("ours", "ours+meta", "chroma", "hnswlib"):
            tuned[name] = tune(children[WORKERS[name]], efs, args.target, metadata=name == "ours+meta")
            print(f"{name}: ef {tuned[name][0]} (tried {tuned[name][1]})", flush=True)
        rows = list(tuned)
        rounds: list[dict[str, dict[str, Any]]] = []
        for r in range(args.rounds):
            order = rows[r % len(rows) :] + rows[: r % len(rows)]
            result: dict[str, dict[str, Any]] = {}
            for name in order:
                result[name] = children[WORKERS[name]].ask(
                    cmd="measure", ef=tuned[name][0], warmup=args.warmup, metadata=name == "ours+meta"
                )
            rounds.append(result)
            print(f"round {r + 1}: " + ", ".join(f"{n} {result[n]['qps']:.0f} QPS" for n in rows), flush=True)
        infos = {name: child.ready for name, child in children.items()}
    finally:
        for child in children.values():
            child.close()
        shutil.rmtree(data, ignore_errors=True)
    report = write_report(args, command, tuned, rounds, infos, load_before, time.time() - started)
    print(report)
    return 0


def write_report(
    args: argparse.Namespace,
    command: str,
    tuned: dict[str, tuple[int, list[tuple[int, float]]]],
    rounds: list[dict[str, dict[str, Any]]],
    infos: dict[str, dict[str, Any]],
    load_before: list[float],
    elapsed_s: float,
) -> str:
    labels = {
        "ours": "ours, embedded (`vectorsearch_client.open`), no metadata",
        "ours+meta": "ours, embedded, with metadata (SDK default)",
        "chroma": f"Chroma {pkg_version_of(infos, 'chroma')}, embedded `PersistentClient`, `include=[]`",
        "hnswlib": f"raw hnswlib {pkg_version_of(infos, 'hnswlib')}, in process (the ceiling)",
    }

    def median(name: str, key: str) -> float:
        return statistics.median(r[name][key] for r in rounds)

    ratio = [r["ours"]["qps"] / r["chroma"]["qps"] for r in rounds]
    ratio_meta = [r["ours+meta"]["qps"] / r["chroma"]["qps"] for r in rounds]
    lines = [
        "# Embedded: ours in process vs Chroma embedded vs raw hnswlib (single client)",
        "",
        f"`{command}` (run from the repository root with `.venv`; Chroma and hnswlib in `.venv-peers`).",
        f"{args.n:,} x {args.dim} seeded synthetic unit vectors (`testkit.datasets`, seed {args.seed}), "
        f"{args.queries} held-out queries, HNSW M={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}, inner product, "
        f"k={K}; ef per system = the lowest of {sorted(args.ef)} with recall@10 >= {args.target}; "
        f"{args.rounds} rounds, the systems' order rotated per round, each after {args.warmup} warm-up calls; "
        "medians over the rounds.",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, shared (load average {load_before} at the start); "
        f"the run took {elapsed_s / 60:.1f} min. Commit {git_commit(ROOT)}.",
        "",
        "| system | ef | recall@10 | QPS 1 client | p50 ms | p99 ms | ingest (ack / indexed s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in tuned:
        load = infos[WORKERS[name]]["load"]
        ingest = f"{load['ack_s']:.1f} / {load['indexed_s']:.1f}"
        lines.append(
            f"| {labels[name]} | {tuned[name][0]} | {median(name, 'recall'):.3f} | {median(name, 'qps'):,.0f} | "
            f"{median(name, 'p50_ms'):.3f} | {median(name, 'p99_ms'):.3f} | {ingest} |"
        )
    met = statistics.median(ratio) >= 3.0
    lines += [
        "",
        f"**ours / Chroma, QPS per round: {', '.join(f'{x:.2f}x' for x in ratio)}; median "
        f"{statistics.median(ratio):.2f}x** (target >= 3x: {'met' if met else 'missed'}). With metadata "
        f"(the SDK default): {', '.join(f'{x:.2f}x' for x in ratio_meta)}.",
        f"ours / raw hnswlib: {statistics.median(r['ours']['qps'] / r['hnswlib']['qps'] for r in rounds):.2f}x.",
        "",
        "ef tuning (ef, recall@10): "
        + "; ".join(
            f"{name} {', '.join(f'{ef}: {rec:.3f}' for ef, rec in tried)}" for name, (_, tried) in tuned.items()
        ),
        "",
        "Per round (QPS): " + " | ".join(", ".join(f"{n} {r[n]['qps']:,.0f}" for n in tuned) for r in rounds),
        "",
    ]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {"command": command, "tuned": tuned, "rounds": rounds, "systems": infos, "load_before": load_before},
            indent=1,
        )
    )
    return text


def pkg_version_of(infos: dict[str, dict[str, Any]], name: str) -> str:
    return str(infos.get(name, {}).get("info", {}).get("version", "?"))


if __name__ == "__main__":
    raise SystemExit(main())
