"""Online rebalancing (issue #16): the cost of growing 3 shards to 4 and of draining one, in one run.

    .venv/bin/python bench/rebalance.py                        # 100k x 512 synthetic
    .venv/bin/python bench/rebalance.py --n 30000              # smaller
    .venv/bin/python bench/rebalance.py --data minilm          # bench/data/minilm (384-d MiniLM)

Real processes: 4 ``python -m shard`` processes and one public ``python -m server`` (no local
shard, metadata in SQLite under the work dir) registered with s0..s2. The script loads N items
through the public Upsert (batches, a few client threads), waits for AdminService.Compact
(wait=true), then measures, with ONE search client (k=10, a fixed query set, one query per call):

* BEFORE: search QPS, p50 and p99 for ``--seconds``;
* ADD: AddShard s3 (weight 1); the same search loop runs until GetRebalanceStatus says DONE;
  time from the call to DONE, items copied (sum of the moves' items_copied), items moved per
  second = items copied / that time, search QPS/p50/p99 during the move;
* DRAIN: DrainShard s1, measured the same way;
* AFTER: the search loop again (and once more after a Compact, since moved items arrive on their
  new owners as writes, in the delta layer until compacted).

Recall@10 against the exact top-10 (testkit.truth, brute force) on a sample of queries, before
the moves and after them, and the collection's count, show that the moves lost no item. Search
errors, partial results and duplicate ids in a result are counted in every phase. Ratios are
against BEFORE of the same run (the machine is shared and noisy; only same-run ratios mean much).
Writes ``bench/results/rebalance.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from vectorsearch_client import Client, RebalanceStatus, VectorSearchError

from bench.datasets import DATA, load_data
from bench.machine import cpu_model, git_commit, loadavg
from testkit.datasets import data_and_queries, unit_rows
from testkit.procutil import REPO
from testkit.serverproc import SingleNodeProcess
from testkit.shardproc import ShardProcess
from testkit.truth import exact_top_k, recall_at_k

Matrix = npt.NDArray[np.float32]
COLLECTION = "bench"
K = 10
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200


# ---------------------------------------------------------------- data


def load_set(args: argparse.Namespace) -> tuple[Matrix, Matrix, str]:
    """Base rows (unit length) and the query set; a description of the data."""
    if args.data == "synthetic":
        base, queries = data_and_queries(args.n, args.queries, args.dim, args.seed)
        return unit_rows(base), unit_rows(queries), f"synthetic (testkit.datasets, seed {args.seed})"
    path = DATA / args.data if not Path(args.data).is_dir() else Path(args.data)
    if not (path / "meta.json").exists():
        raise SystemExit(f"{path} is not a built data set (bench/datasets.py {args.data})")
    base, queries, _, _ = load_data(path, args.n, args.queries, with_truth=False)
    return base, queries, f"{path.name} ({path})"


# ---------------------------------------------------------------- the cluster


class Cluster:
    """4 shard processes; a public server registered with the first 3."""

    def __init__(self, workdir: Path, server_args: list[str]) -> None:
        self.workdir = workdir
        self.shards = {f"s{i}": ShardProcess(workdir / f"s{i}") for i in range(4)}
        self.server_args = server_args
        self.server: SingleNodeProcess | None = None

    def start(self) -> str:
        for shard in self.shards.values():
            shard.start()
        registered = [f"--register-shard={sid}={self.shards[sid].address}" for sid in ("s0", "s1", "s2")]
        self.server = SingleNodeProcess(self.workdir / "server", *self.server_args, *registered, local_shard=False)
        address = self.server.start()
        self.client = Client(address, timeout=30.0)
        self.client.wait_ready(60)
        return address

    def stop(self) -> None:
        if hasattr(self, "client"):
            self.client.close()
        if self.server is not None:
            self.server.stop()
        for shard in self.shards.values():
            shard.stop()

    def counts(self) -> dict[str, str]:
        """Per shard: membership state and item count."""
        status = self.client.cluster_status()
        return {s.shard_id: f"{s.state} {s.collection_counts.get(COLLECTION, 0)}" for s in status.shards}

    def index_state(self) -> str:
        """Per shard process: items in its HNSW graph and operations still in its (exact) delta layer."""
        parts = []
        for sid, shard in self.shards.items():
            if shard.client is None:
                continue
            try:
                stats = shard.client.stats(COLLECTION)
            except grpc.RpcError as e:
                parts.append(f"{sid} {e.code().name}")
                continue
            parts.append(f"{sid} graph {stats.graph_elements} delta {stats.delta_size}")
        return ", ".join(parts)

    def count(self) -> int:
        return int(self.client.describe_collection(COLLECTION).count or 0)


def ingest(cluster: Cluster, base: Matrix, batch: int, threads: int) -> dict[str, float]:
    """Creates the collection, upserts every row (id = row index), waits for Compact."""
    n, dim = base.shape
    client = cluster.client
    client.create_collection(
        COLLECTION, dim, metric="inner_product", m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, timeout=60
    )

    def upsert(lo: int) -> int:
        ids = [str(i) for i in range(lo, min(n, lo + batch))]
        return client.upsert(COLLECTION, ids, base[lo : lo + batch], timeout=300)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        acked = sum(pool.map(upsert, range(0, n, batch)))
    ack_s = time.perf_counter() - start
    compacted = client.compact(COLLECTION, wait=True, timeout=3600)
    indexed_s = time.perf_counter() - start
    in_graphs = sum(s.graph_elements for s in compacted)
    if acked != n or in_graphs != n:
        raise RuntimeError(f"after ingest: acked {acked}, in graphs {in_graphs} of {n}")
    return {"ack_s": ack_s, "indexed_s": indexed_s}


# ---------------------------------------------------------------- the search loop


@dataclass
class Phase:
    """What one search client saw during one phase."""

    name: str
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0
    partial: int = 0
    duplicates: int = 0
    short: int = 0  # results with fewer than k hits
    first_error: str = ""

    @property
    def qps(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


class SearchLoop:
    """One client thread: searches the query set in a cycle, one query per call, until stopped."""

    def __init__(self, cluster: Cluster, queries: Matrix, ef: int) -> None:
        self.client = cluster.client
        self.queries = queries
        self.ef = ef
        self.next = 0

    def run(self, phase: Phase, stop: threading.Event) -> None:
        start = time.perf_counter()
        while not stop.is_set():
            query = self.queries[self.next % len(self.queries)]
            self.next += 1
            t0 = time.perf_counter()
            try:
                found = self.client.search(COLLECTION, query, k=K, ef=self.ef, include_metadata=False)
            except VectorSearchError as e:
                phase.errors += 1
                phase.first_error = phase.first_error or f"{e.code.name}: {e.message}"
                continue
            phase.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            hits = [h.id for h in found]
            phase.partial += found.partial
            phase.duplicates += len(hits) != len(set(hits))
            phase.short += len(hits) < K
        phase.wall_s = time.perf_counter() - start

    def timed(self, name: str, seconds: float) -> Phase:
        phase, stop = Phase(name), threading.Event()
        timer = threading.Timer(seconds, stop.set)
        timer.start()
        self.run(phase, stop)
        return phase

    def warm_up(self, calls: int) -> None:
        for query in self.queries[:calls]:
            self.client.search(COLLECTION, query, k=K, ef=self.ef, include_metadata=False)


def recall(cluster: Cluster, queries: Matrix, truth: npt.NDArray[np.int64], ef: int) -> float:
    found = []
    for query in queries:
        found.append([int(h.id) for h in cluster.client.search(COLLECTION, query, k=K, ef=ef, include_metadata=False)])
    return recall_at_k(truth, found)


# ---------------------------------------------------------------- a move


@dataclass
class Move:
    name: str
    seconds: float  # from the admin call until DONE was seen
    server_elapsed_s: float
    items_copied: int
    items_planned: int
    state: str
    moves: list[str]
    search: Phase
    states_seen: list[str]

    @property
    def items_per_s(self) -> float:
        return self.items_copied / self.seconds if self.seconds else 0.0


def run_move(cluster: Cluster, loop: SearchLoop, name: str, start_call: Any, poll_s: float, timeout_s: float) -> Move:
    """Starts the search loop, makes the admin call, polls GetRebalanceStatus until a final state."""
    phase, stop = Phase(name), threading.Event()
    searcher = threading.Thread(target=loop.run, args=(phase, stop), daemon=True)
    searcher.start()
    time.sleep(0.2)  # the loop is running before the move starts
    t0 = time.perf_counter()
    started: RebalanceStatus | None = start_call()
    if started is None:
        raise RuntimeError(f"{name}: the admin call started no rebalance")
    states: list[str] = []
    status: RebalanceStatus | None = None
    while time.perf_counter() - t0 < timeout_s:
        status = cluster.client.rebalance_status(started.rebalance_id)
        if status is None:
            raise RuntimeError(f"{name}: rebalance {started.rebalance_id} not found")
        state = status.state.upper()
        if not states or states[-1] != state:
            states.append(state)
        if status.finished:
            break
        time.sleep(poll_s)
    seconds = time.perf_counter() - t0
    stop.set()
    searcher.join()
    assert status is not None
    if not status.finished:
        raise RuntimeError(f"{name}: not done after {timeout_s} s: {status}")
    return Move(
        name=name,
        seconds=seconds,
        server_elapsed_s=status.elapsed_s,
        items_copied=sum(m.items_copied for m in status.moves),
        items_planned=sum(m.items_planned for m in status.moves),
        state=states[-1] + (f" ({status.error})" if status.error else ""),
        moves=[f"{m.source}->{m.target} {m.items_copied}/{m.items_planned}" for m in status.moves],
        search=phase,
        states_seen=states,
    )


# ---------------------------------------------------------------- report


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def search_rows(phases: list[Phase], before: Phase) -> list[str]:
    rows = [
        "| phase | searches | QPS | QPS / before | p50 ms | p99 ms | p99 / before | max ms "
        "| errors | partial | dup ids | < k hits |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        rows.append(
            f"| {p.name} | {len(p.latencies_ms)} | {p.qps:.1f} | {ratio(p.qps, before.qps)} | {p.pct(50):.2f} | "
            f"{p.pct(99):.2f} | {ratio(p.pct(99), before.pct(99))} | {max(p.latencies_ms, default=0):.1f} | "
            f"{p.errors} | {p.partial} | {p.duplicates} | {p.short} |"
        )
    return rows


def markdown(meta: dict[str, Any], moves: list[Move], phases: list[Phase], checks: list[str]) -> str:
    before = phases[0]
    lines = [
        "# Online rebalancing: adding a 4th shard to 3, draining one (issue #16)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}. Commit {meta['commit']}, {meta['date']}.",
        "",
        f"Data: {meta['data']}, N = {meta['n']:,}, dim = {meta['dim']}, inner product, HNSW M={HNSW_M} "
        f"ef_construction={HNSW_EF_CONSTRUCTION}; ingest {meta['ingest']}. Searches: one client, k={K}, "
        f"ef={meta['ef']}, one query per call, cycling over {meta['queries']} fixed queries. Every process "
        "(4 shards, the server, this client) on the same machine.",
        "",
        "## Moves",
        "",
        "| move | time to DONE s | server elapsed s | items copied | items planned | items moved / s "
        "| QPS during / before | p99 during / before | states seen |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in moves:
        lines.append(
            f"| {m.name} | {m.seconds:.1f} | {m.server_elapsed_s:.1f} | {m.items_copied:,} | {m.items_planned:,} | "
            f"{m.items_per_s:,.0f} | {ratio(m.search.qps, before.qps)} | {ratio(m.search.pct(99), before.pct(99))} | "
            f"{' → '.join(m.states_seen)} |"
        )
    lines += ["", "Per move (source->target copied/planned):", ""]
    lines += [f"* {m.name}: {', '.join(m.moves)}; final state {m.state}" for m in moves]
    lines += ["", "## Search (one client)", "", *search_rows(phases, before), ""]
    for p in phases:
        if p.first_error:
            lines.append(f"First search error in {p.name}: `{p.first_error}`")
    lines += ["", "## Nothing lost", "", *[f"* {c}" for c in checks], ""]
    lines += [
        "## Notes",
        "",
        "* time to DONE: from the AddShard/DrainShard call until GetRebalanceStatus (polled every "
        f"{meta['poll_s']} s) returned DONE; items moved / s = the sum of the moves' items_copied / that time "
        "(items_copied counts the scan and the log replay).",
        "* during: the search loop runs from 0.2 s before the admin call until DONE; before/after: "
        f"{meta['seconds']} s each. Ratios are within this one run; the machine is noisy, so absolute "
        "numbers from another run are not comparable.",
        "* after + compact: after AdminService.Compact(wait=true), since moved items reach their new "
        "shard as writes, into its exact delta layer, until a compaction folds them into its graph (the "
        "shards' background compaction starts past 10,000 delta items or 30 s; `index` above is each "
        "shard's graph/delta right after the move).",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="items")
    p.add_argument("--dim", type=int, default=512, help="dimension (synthetic only)")
    p.add_argument("--data", default="synthetic", help="synthetic, or a set under bench/data (minilm) or its path")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--queries", type=int, default=200, help="the fixed query set of the search loop")
    p.add_argument("--recall-queries", type=int, default=100, help="queries checked against brute force")
    p.add_argument("--ef", type=int, default=64)
    p.add_argument("--seconds", type=float, default=5.0, help="length of the before/after search phases")
    p.add_argument("--batch", type=int, default=1000, help="items per Upsert request")
    p.add_argument("--ingest-threads", type=int, default=2)
    p.add_argument("--poll-s", type=float, default=0.1, help="GetRebalanceStatus poll interval")
    p.add_argument("--move-timeout-s", type=float, default=1800.0)
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory, removed")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "rebalance.md")
    p.add_argument("--machine-note", default="2 cores, shared and noisy")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base, queries, data_desc = load_set(args)
    n, dim = base.shape
    sample = queries[: args.recall_queries]
    truth = exact_top_k(base, sample, K)
    with tempfile.TemporaryDirectory(prefix="vs-rebalance-") as tmp:
        workdir = args.workdir or Path(tmp)
        cluster = Cluster(workdir, [])
        try:
            cluster.start()
            print(f"loading {n} x {dim} ...", flush=True)
            load = ingest(cluster, base, args.batch, args.ingest_threads)
            print(f"loaded: acked in {load['ack_s']:.1f} s, compacted after {load['indexed_s']:.1f} s", flush=True)
            checks = [f"before: count {cluster.count():,}; shards {cluster.counts()}"]
            recall_before = recall(cluster, sample, truth, args.ef)
            loop = SearchLoop(cluster, queries, args.ef)
            loop.warm_up(min(50, len(queries)))
            phases = [loop.timed("before", args.seconds)]
            print(f"before: {phases[0].qps:.1f} QPS, p99 {phases[0].pct(99):.2f} ms", flush=True)
            s3 = cluster.shards["s3"].address
            add = run_move(
                cluster,
                loop,
                "add s3 (3 -> 4 shards)",
                lambda: cluster.client.add_shard("s3", s3, weight=1.0, timeout=60),
                args.poll_s,
                args.move_timeout_s,
            )
            print(f"add: {add.seconds:.1f} s, {add.items_copied} items, {add.state}", flush=True)
            checks.append(
                f"after add: count {cluster.count():,}; shards {cluster.counts()}; index {cluster.index_state()}"
            )
            drain = run_move(
                cluster,
                loop,
                "drain s1 (4 -> 3 shards)",
                lambda: cluster.client.drain_shard("s1", timeout=60),
                args.poll_s,
                args.move_timeout_s,
            )
            print(f"drain: {drain.seconds:.1f} s, {drain.items_copied} items, {drain.state}", flush=True)
            checks.append(
                f"after drain: count {cluster.count():,}; shards {cluster.counts()}; index {cluster.index_state()}"
            )
            phases += [add.search, drain.search, loop.timed("after", args.seconds)]
            recall_after = recall(cluster, sample, truth, args.ef)
            cluster.client.compact(COLLECTION, wait=True, timeout=3600)
            phases.append(loop.timed("after + compact", args.seconds))
            recall_compacted = recall(cluster, sample, truth, args.ef)
            checks.append(
                f"recall@{K} on {len(sample)} queries vs exact brute force (testkit.truth), ef={args.ef}: "
                f"before {recall_before:.4f}, after the moves {recall_after:.4f}, after compact {recall_compacted:.4f}"
            )
            checks.append(
                f"after compact: count {cluster.count():,}; shards {cluster.counts()}; index {cluster.index_state()}"
            )
        finally:
            cluster.stop()
    meta = {
        "command": shlex.join(
            [".venv/bin/python", "bench/rebalance.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": f"{args.machine_note}; {os.cpu_count()} CPUs, {cpu_model()}, load average at the end {loadavg()}",
        "commit": git_commit(REPO),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "data": data_desc,
        "n": n,
        "dim": dim,
        "ef": args.ef,
        "queries": len(queries),
        "ingest": f"{args.batch} items per Upsert, {args.ingest_threads} client threads: acked in "
        f"{load['ack_s']:.1f} s, compacted {load['indexed_s']:.1f} s after the start",
        "poll_s": args.poll_s,
        "seconds": args.seconds,
    }
    text = markdown(meta, [add, drain], phases, checks)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
