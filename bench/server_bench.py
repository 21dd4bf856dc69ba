"""Public server benchmark: SearchService through the router with 1 and 3 shards, next to the shard
alone (ShardService) and raw in-process hnswlib, all measured in one run on the same data.

    python bench/server_bench.py [--n 100000] [--dim 512] [--queries 1000] [--shards 1 3] [--out bench/results]
    python bench/server_bench.py --quick          # 10k x 128 smoke test, under a minute

Shapes, in this order: raw hnswlib in this process; one shard process holding everything
(``python -m shard``, driven with ``shard.client.ShardClient`` as in bench/shard_bench.py); then for
each ``--shards`` count a local cluster (``python -m server.cluster``: the public server plus that
many shard processes, metadata in SQLite) driven through ``SearchService`` with packed vectors.
Every server figure is reported next to the shard-direct and raw figures, with the ratios
server/shard and server/raw. Data, ground truth, raw hnswlib and the shard-direct run are the code
of bench/shard_bench.py, imported. Results go to ``<out>/server.md`` and ``<out>/server.json``;
see bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import hnswlib
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import shard_bench as sb
from bench.shard_bench import COLLECTION, HNSW_EF_CONSTRUCTION, HNSW_M, REPO, Labels, Matrix
from shard.client import METRICS, ShardClient, pack
from tests.clusterproc import ClusterProcess
from tests.datasets import recall_at_k
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

TAG = "sel10"
RPC_TIMEOUT_S = 300.0
Log = Callable[[str], None]


# ====================================================================== data
def tagged_rows(n: int, every: int) -> Labels:
    """Rows that carry the tag: every ``every``-th row (10% for every=10)."""
    return np.arange(0, n, every, dtype=np.int64)


def filtered_truth(data: Matrix, queries: Matrix, rows: Labels, k: int, metric: str) -> Labels:
    """Exact top-k among ``rows`` only (brute force, as sb.exact_top_k_chunked), as row indices of ``data``."""
    return rows[sb.exact_top_k_chunked(data[rows], queries, k, metric)]


def item_metadata(i: int, tag_every: int) -> pb.Metadata:
    meta = pb.Metadata(uri=f"bench://item/{i}", tags=[TAG] if i % tag_every == 0 else [])
    meta.attributes["n"].int_value = i
    return meta


def upsert_requests(ids: list[str], data: Matrix, batch: int, tag_every: int) -> list[pb.UpsertRequest]:
    """Every public Upsert request of the ingest, built before the clock starts."""
    requests = []
    for lo in range(0, len(ids), batch):
        hi = min(lo + batch, len(ids))
        items = [pb.ItemMetadata(id=ids[i], metadata=item_metadata(i, tag_every)) for i in range(lo, hi)]
        requests.append(pb.UpsertRequest(collection=COLLECTION, items=items, vectors=pack(data[lo:hi])))
    return requests


def tag_filter() -> pb.Filter:
    return pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value=TAG)))


# ====================================================================== measurement helpers
def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU-seconds so far of this process ("client") and of each named process."""
    snap = {name: sb.proc_cpu_s(pid) for name, pid in pids.items()}
    snap["client"] = time.process_time()
    return snap


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


def cpu_per_query(call: sb.SingleCall, nq: int, pids: dict[str, int]) -> dict[str, Any]:
    """Runs every query once, alone, and divides the CPU time of each process by the query count."""
    before, t0 = cpu_snapshot(pids), time.perf_counter()
    for i in range(nq):
        call(i)
    wall = time.perf_counter() - t0
    used = cpu_delta(before, cpu_snapshot(pids))
    per = {name: seconds / nq * 1000.0 for name, seconds in used.items()}
    shards = sum(v for name, v in per.items() if name.startswith("shard"))
    return {
        "queries": nq,
        "wall_ms_per_query": wall / nq * 1000.0,
        "cpu_ms_per_query": per,
        "cpu_ms_shards": shards,
        "cpu_ms_total": sum(per.values()),
    }


def rpc_floor(call: Callable[[], object], warmup: int, count: int) -> dict[str, Any]:
    samples: list[float] = []
    for i in range(warmup + count):
        t0 = time.perf_counter()
        call()
        if i >= warmup:
            samples.append(time.perf_counter() - t0)
    return sb.latency_summary(samples)


def log_search(log: Log, shape: str, label: str, entry: dict[str, Any], k: int) -> None:
    log(
        f"{shape} {label}: single {entry['single']['qps']:,.0f} qps "
        f"p50 {entry['single']['p50_ms']:.3f} ms p99 {entry['single']['p99_ms']:.3f} ms, "
        f"batched {entry['batched']['qps']:,.0f} qps, recall@{k} {entry['recall']:.4f}"
    )


def filtered_entry(
    single_call: sb.SingleCall,
    batch_call: sb.BatchCall,
    fq: int,
    ftruth: Labels,
    ids: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    entry, found_single, found = sb.measure_search(single_call, batch_call, fq, args.filter_warmup, args.filter_repeats)
    entry["recall"] = recall_at_k(ftruth, found, ids)
    entry["recall_single"] = recall_at_k(ftruth, found_single, ids)
    entry["queries"] = fq
    return entry


def batched(
    search: Callable[[Matrix], list[list[str]]], queries: Matrix, per_request: int
) -> tuple[list[list[str]], list[float]]:
    """Sends ``queries`` ``per_request`` at a time, one request after the other."""
    found: list[list[str]] = []
    request_s: list[float] = []
    for lo in range(0, len(queries), per_request):
        t0 = time.perf_counter()
        found.extend(search(queries[lo : lo + per_request]))
        request_s.append(time.perf_counter() - t0)
    return found, request_s


# ====================================================================== raw hnswlib, filtered
def bench_raw_filtered(
    data: Matrix, fqueries: Matrix, rows: Labels, ftruth: Labels, ids: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """hnswlib's exact BFIndex over the tagged rows only: the in-process counterpart of the server's
    allow-list plan (the shards search exactly among the matching items)."""
    subset = data[rows]
    queries = fqueries
    space = sb.RAW_SPACE[args.metric]
    if args.metric == "cosine":  # BFIndex does not normalise for "cosine"; do it here and use "ip"
        subset = subset / np.linalg.norm(subset, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        space = "ip"
    index = hnswlib.BFIndex(space=space, dim=data.shape[1])
    index.init_index(max_elements=len(rows))
    index.add_items(np.ascontiguousarray(subset, dtype=np.float32), rows)
    k = args.k

    def single_call(i: int) -> list[str]:
        labels, _ = index.knn_query(queries[i : i + 1], k=k, num_threads=1)
        return [ids[j] for j in labels[0].tolist()]

    def batch_call() -> tuple[list[list[str]], list[float]]:
        t0 = time.perf_counter()
        labels, _ = index.knn_query(queries, k=k, num_threads=args.threads)
        return [[ids[j] for j in row] for row in labels.tolist()], [time.perf_counter() - t0]

    entry = filtered_entry(single_call, batch_call, len(queries), ftruth, ids, args)
    entry["method"] = f"hnswlib.BFIndex over the {len(rows)} tagged rows (exact), space {space}"
    return entry


# ====================================================================== shard direct
def bench_shard_direct(
    root: Path,
    data: Matrix,
    queries: Matrix,
    truth: Labels,
    ids: list[str],
    rows: Labels,
    ftruth: Labels,
    args: argparse.Namespace,
    log: Log,
) -> dict[str, Any]:
    """One shard process with all items, through ShardService (as bench/shard_bench.py does)."""
    n = len(ids)
    shard, client, flags = sb.start_shard(root, "direct")
    assert shard.proc is not None
    pid = shard.proc.pid
    out: dict[str, Any] = {"flags": flags}
    try:
        client.create_collection(COLLECTION, data.shape[1], args.metric, m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
        log(f"shard: ingest {n} in batches of {args.ingest_batch} from {args.ingest_threads} threads ...")
        cpu0 = sb.proc_cpu_s(pid)
        out["ingest"] = sb.ingest(client, ids, data, args.ingest_batch, args.ingest_threads)
        out["ingest"]["server_cpu_s"] = sb.proc_cpu_s(pid) - cpu0
        t0 = time.perf_counter()
        client.compact(COLLECTION, wait=True)
        drain_s = time.perf_counter() - t0
        stats = client.stats(COLLECTION)
        if stats.delta_size != 0 or stats.graph_elements != n:
            raise RuntimeError(
                f"shard after Compact(wait=True): delta {stats.delta_size}, graph {stats.graph_elements}"
            )
        out["build"] = {
            "drain_s": drain_s,
            "items_per_s_end_to_end": n / (out["ingest"]["seconds"] + drain_s),
            "server_cpu_s_total": sb.proc_cpu_s(pid) - cpu0,
        }
        log(f"shard: ingest {out['ingest']['items_per_s']:,.0f}/s, graph complete {drain_s:.1f}s later")
        out["search"] = sb.shard_search(
            client, queries, truth, ids, args.ef, args.k, args.search_batch, args.warmup, args.repeats, log
        )
        allow = [ids[i] for i in rows.tolist()]
        fq = queries[: args.filter_queries]

        def single_filtered(i: int) -> list[str]:
            return [item for item, _ in client.search(COLLECTION, fq[i : i + 1], args.k, args.filter_ef, allow)[0]]

        def batch_filtered() -> tuple[list[list[str]], list[float]]:
            def search(block: Matrix) -> list[list[str]]:
                hits = client.search(COLLECTION, block, args.k, args.filter_ef, allow)
                return [[item for item, _ in result] for result in hits]

            return batched(search, fq, args.search_batch)

        out["filtered"] = filtered_entry(single_filtered, batch_filtered, len(fq), ftruth, ids, args)
        out["filtered"]["method"] = f"ShardService.Search with allow_ids = the {len(allow)} tagged ids in every request"
        log_search(log, "shard", "filtered 10%", out["filtered"], args.k)

        def single(i: int) -> list[str]:
            return [item for item, _ in client.search(COLLECTION, queries[i : i + 1], args.k, args.cpu_ef)[0]]

        out["cpu"] = cpu_per_query(single, len(queries), {"shard-0": pid})
        out["rpc_floor"] = {
            "rpc": "ShardService.Stats",
            **rpc_floor(lambda: client.stats(COLLECTION), args.warmup, len(queries)),
        }
        out["memory"] = {"shard_vm_hwm_mib": sb.proc_status_kib(pid, "VmHWM") / 1024}
        log(
            f"shard: {out['cpu']['cpu_ms_total']:.3f} CPU-ms per single query at ef={args.cpu_ef}; "
            f"Stats floor p50 {out['rpc_floor']['p50_ms']:.3f} ms"
        )
    finally:
        shard.stop()
        shutil.rmtree(shard.data_dir, ignore_errors=True)
    return out


# ====================================================================== public server
@dataclass
class Cluster:
    process: ClusterProcess
    stub: pb_grpc.SearchServiceStub
    shard_clients: dict[str, ShardClient]
    pids: dict[str, int]  # "server" and "shard-<i>"
    addresses: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        for client in self.shard_clients.values():
            client.close()
        self.process.stop()


def start_cluster(root: Path, shards: int) -> Cluster:
    process = ClusterProcess(root / f"cluster-{shards}", shards=shards)
    stub = process.start()
    assert process.proc is not None
    status = process.admin().ClusterStatus(admin_pb.ClusterStatusRequest(), timeout=60)
    addresses = {s.shard_id: s.address for s in status.shards}
    if len(addresses) != shards or not all(s.healthy for s in status.shards):
        raise RuntimeError(f"cluster status: {status}")
    pids = {"server": process.proc.pid}  # server.cluster runs the public server in its own process
    for shard_id in addresses:
        pids[shard_id] = process.shard_pid(int(shard_id.rsplit("-", 1)[1]))
    clients = {shard_id: ShardClient(address) for shard_id, address in addresses.items()}
    return Cluster(process, stub, clients, pids, addresses)


def public_ingest(stub: pb_grpc.SearchServiceStub, requests: list[pb.UpsertRequest], threads: int) -> dict[str, Any]:
    """Sends the prepared Upsert requests from ``threads`` client threads sharing one channel."""
    counter = itertools.count()
    latencies: list[list[float]] = [[] for _ in range(threads)]
    failures: list[BaseException] = []

    def worker(slot: int) -> None:
        try:
            while (i := next(counter)) < len(requests) and not failures:
                t0 = time.perf_counter()
                reply = stub.Upsert(requests[i], timeout=RPC_TIMEOUT_S)
                latencies[slot].append(time.perf_counter() - t0)
                if reply.upserted != len(requests[i].items):
                    raise RuntimeError(f"upserted {reply.upserted} of {len(requests[i].items)}")
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=worker, args=(slot,), name=f"ingest-{slot}") for slot in range(threads)]
    started = time.perf_counter()
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise failures[0]
    items = sum(len(r.items) for r in requests)
    every = [x for per in latencies for x in per]
    return {
        "batch": len(requests[0].items),
        "threads": threads,
        "items": items,
        "requests": len(requests),
        "seconds": seconds,
        "items_per_s": items / seconds,
        "request_p50_ms": sb.percentile_ms(every, 50),
        "request_p99_ms": sb.percentile_ms(every, 99),
    }


def drain(cluster: Cluster, n: int) -> dict[str, Any]:
    """Compact(wait=True) on every shard at once, then checks that every delta is empty and that the
    shards' counts (ClusterStatus and Stats) add up to ``n``."""
    failures: list[BaseException] = []

    def compact(client: ShardClient) -> None:
        try:
            client.compact(COLLECTION, wait=True)
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=compact, args=(c,)) for c in cluster.shard_clients.values()]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    if failures:
        raise failures[0]
    per_shard = {}
    for shard_id, client in cluster.shard_clients.items():
        s = client.stats(COLLECTION)
        per_shard[shard_id] = {
            "count": s.count,
            "graph_elements": s.graph_elements,
            "delta_size": s.delta_size,
            "compactions": s.compactions,
        }
    status = cluster.process.admin().ClusterStatus(admin_pb.ClusterStatusRequest(), timeout=60)
    counted = sum(s.collection_counts[COLLECTION] for s in status.shards)
    described = cluster.stub.DescribeCollection(pb.DescribeCollectionRequest(collection=COLLECTION)).count
    if (
        any(s["delta_size"] for s in per_shard.values())
        or sum(s["graph_elements"] for s in per_shard.values()) != n
        or counted != n
        or described != n
    ):
        raise RuntimeError(f"cluster not drained: {per_shard}, ClusterStatus {counted}, Describe {described}")
    return per_shard


def search_ids(
    stub: pb_grpc.SearchServiceStub, block: Matrix, k: int, ef: int, flt: pb.Filter | None
) -> list[list[str]]:
    request = pb.SearchRequest(collection=COLLECTION, queries=pack(block), k=k, ef=ef, filter=flt)
    reply = stub.Search(request, timeout=RPC_TIMEOUT_S)
    if reply.partial:
        raise RuntimeError(f"partial search result; failed shards {list(reply.failed_shards)}")
    return [[hit.id for hit in result.hits] for result in reply.results]


def bench_cluster(
    root: Path,
    shards: int,
    requests: list[pb.UpsertRequest],
    queries: Matrix,
    truth: Labels,
    ids: list[str],
    ftruth: Labels,
    tagged: int,
    args: argparse.Namespace,
    log: Log,
) -> dict[str, Any]:
    n = len(ids)
    name = f"server/{shards}"
    cluster = start_cluster(root, shards)
    out: dict[str, Any] = {"shards": shards, "addresses": cluster.addresses}
    try:
        rss_idle = {p: sb.proc_status_kib(pid, "VmRSS") / 1024 for p, pid in cluster.pids.items()}
        spec = types_pb2.CollectionSpec(
            name=COLLECTION,
            dimension=queries.shape[1],
            metric=types_pb2.Metric.Name(METRICS[args.metric]),
            hnsw=types_pb2.HnswParams(m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION),
        )
        cluster.stub.CreateCollection(pb.CreateCollectionRequest(spec=spec), timeout=60)
        log(f"{name}: ingest {n} through Upsert, batches of {args.ingest_batch}, {args.ingest_threads} threads ...")
        cpu0 = cpu_snapshot(cluster.pids)
        out["ingest"] = public_ingest(cluster.stub, requests, args.ingest_threads)
        out["ingest"]["cpu_s"] = cpu_delta(cpu0, cpu_snapshot(cluster.pids))
        t0 = time.perf_counter()
        out["after_drain"] = drain(cluster, n)
        drain_s = time.perf_counter() - t0
        out["build"] = {
            "drain_s": drain_s,
            "items_per_s_end_to_end": n / (out["ingest"]["seconds"] + drain_s),
            "cpu_s_total": cpu_delta(cpu0, cpu_snapshot(cluster.pids)),
        }
        log(
            f"{name}: ingest {out['ingest']['items_per_s']:,.0f}/s (p50 {out['ingest']['request_p50_ms']:.0f} ms "
            f"per request), every delta empty {drain_s:.1f}s later"
        )
        stub = cluster.stub
        out["search"] = {}
        for ef in args.ef:

            def single_call(i: int, ef: int = ef) -> list[str]:
                return search_ids(stub, queries[i : i + 1], args.k, ef, None)[0]

            def batch_call(ef: int = ef) -> tuple[list[list[str]], list[float]]:
                return batched(lambda block: search_ids(stub, block, args.k, ef, None), queries, args.search_batch)

            entry, found_single, found = sb.measure_search(
                single_call, batch_call, len(queries), args.warmup, args.repeats
            )
            entry["batched"]["queries_per_request"] = args.search_batch
            entry["recall"] = recall_at_k(truth, found, ids)
            entry["recall_single"] = recall_at_k(truth, found_single, ids)
            out["search"][str(ef)] = entry
            log_search(log, name, f"ef={ef}", entry, args.k)
        fq = queries[: args.filter_queries]
        flt = tag_filter()
        out["filtered"] = filtered_entry(
            lambda i: search_ids(stub, fq[i : i + 1], args.k, args.filter_ef, flt)[0],
            lambda: batched(lambda block: search_ids(stub, block, args.k, args.filter_ef, flt), fq, args.search_batch),
            len(fq),
            ftruth,
            ids,
            args,
        )
        out["filtered"]["method"] = (
            f'SearchService.Search with filter tags == "{TAG}" ({tagged} matching items), default planner '
            "thresholds: allow-list (exact search among the matching ids on their shards) up to 2000 matches "
            "or 2% selectivity, otherwise graph search with oversampling and a SQL post-filter"
        )
        log_search(log, name, "filtered 10%", out["filtered"], args.k)
        out["cpu"] = cpu_per_query(
            lambda i: search_ids(stub, queries[i : i + 1], args.k, args.cpu_ef, None)[0], len(queries), cluster.pids
        )
        assert cluster.process.channel is not None
        health = health_pb2_grpc.HealthStub(cluster.process.channel)
        out["rpc_floor"] = {
            "rpc": "grpc.health.v1.Health.Check on the public server",
            **rpc_floor(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=60), args.warmup, len(queries)),
        }
        out["memory"] = {
            "vm_hwm_mib": {p: sb.proc_status_kib(pid, "VmHWM") / 1024 for p, pid in cluster.pids.items()},
            "vm_rss_idle_mib": rss_idle,
            "disk_mib": sb.dir_bytes(cluster.process.data_dir) / (1 << 20),
        }
        cpu = out["cpu"]["cpu_ms_per_query"]
        log(
            f"{name}: CPU-ms per single query at ef={args.cpu_ef}: "
            + ", ".join(f"{p} {v:.3f}" for p, v in cpu.items())
            + f"; Health floor p50 {out['rpc_floor']['p50_ms']:.3f} ms"
        )
    finally:
        cluster.close()
        shutil.rmtree(cluster.process.data_dir, ignore_errors=True)
    return out


# ====================================================================== report
@dataclass
class Row:
    section: str
    figure: str
    unit: str
    values: dict[str, float]  # shape -> value
    higher_is_better: bool
    note: str = ""


def shape_names(shards: Sequence[int]) -> list[str]:
    return ["raw", "shard", *[f"server_{s}" for s in shards]]


def build_rows(report: dict[str, Any], shards: Sequence[int]) -> list[Row]:
    raw, shard = report["raw_hnswlib"], report["shard_direct"]
    servers = {f"server_{s}": report["servers"][str(s)] for s in shards}
    k = report["params"]["k"]
    nan = float("nan")

    def across(get: Callable[[dict[str, Any]], float], raw_value: float = nan) -> dict[str, float]:
        values = {"raw": raw_value, "shard": get(shard)}
        values.update({key: get(entry) for key, entry in servers.items()})
        return values

    def searched(ef: str, *path: str) -> dict[str, float]:
        """One search figure (``entry["search"][ef][path...]``) of every shape, raw included."""

        def get(entry: dict[str, Any]) -> float:
            value: Any = entry["search"][ef]
            for step in path:
                value = value[step]
            return float(value)

        return across(get, get(raw))

    batch, threads = report["params"]["ingest_batch"], report["params"]["ingest_threads"]
    rows = [
        Row(
            "write",
            f"ingest, acknowledged (batch {batch}, {threads} client threads, fsync)",
            "vectors/s",
            across(lambda e: e["ingest"]["items_per_s"], raw["build"]["items_per_s"]),
            True,
            "raw = add_items build rate; server = Upsert with metadata (uri, tag, int attribute) into SQLite",
        ),
        Row(
            "write",
            "ingest + graph build end to end (start of ingest → every delta empty)",
            "vectors/s",
            across(lambda e: e["build"]["items_per_s_end_to_end"], raw["build"]["items_per_s"]),
            True,
            "Compact(wait=True) on every shard right after the last ack",
        ),
    ]
    for ef in report["params"]["ef"]:
        key = str(ef)
        rows += [
            Row(
                f"search ef={ef}",
                "single-query QPS (1 client)",
                "queries/s",
                searched(key, "single", "qps"),
                True,
            ),
            Row(
                f"search ef={ef}",
                "single-query latency p50",
                "ms",
                searched(key, "single", "p50_ms"),
                False,
            ),
            Row(
                f"search ef={ef}",
                "single-query latency p99",
                "ms",
                searched(key, "single", "p99_ms"),
                False,
            ),
            Row(
                f"search ef={ef}",
                "batched QPS",
                "queries/s",
                searched(key, "batched", "qps"),
                True,
                f"raw: all queries in one knn_query; others: {report['params']['search_batch']} per request",
            ),
            Row(
                f"search ef={ef}",
                f"recall@{k}",
                "",
                searched(key, "recall"),
                True,
            ),
        ]
    filtered = report["raw_filtered"]
    fq = filtered["queries"]
    section = f"filtered 10% ({fq} queries)"
    rows += [
        Row(
            section,
            "single-query QPS (1 client)",
            "queries/s",
            across(lambda e: e["filtered"]["single"]["qps"], filtered["single"]["qps"]),
            True,
            "raw: hnswlib BFIndex over the tagged rows; shard: allow_ids; "
            "server: tag filter (10% selectivity: post-filter plan)",
        ),
        Row(
            section,
            "single-query latency p50",
            "ms",
            across(lambda e: e["filtered"]["single"]["p50_ms"], filtered["single"]["p50_ms"]),
            False,
        ),
        Row(
            section,
            "single-query latency p99",
            "ms",
            across(lambda e: e["filtered"]["single"]["p99_ms"], filtered["single"]["p99_ms"]),
            False,
        ),
        Row(
            section,
            "batched QPS",
            "queries/s",
            across(lambda e: e["filtered"]["batched"]["qps"], filtered["batched"]["qps"]),
            True,
        ),
        Row(
            section,
            f"recall@{k} vs brute force over the tagged items",
            "",
            across(lambda e: e["filtered"]["recall"], filtered["recall"]),
            True,
        ),
    ]
    cpu_ef = report["params"]["cpu_ef"]
    rows += [
        Row(
            f"cost ef={cpu_ef}",
            "CPU per single query, all processes",
            "CPU-ms",
            across(lambda e: e["cpu"]["cpu_ms_total"], raw["cpu"]["cpu_ms_per_query"]["client"]),
            False,
            "client + public server + shards, one pass over all queries",
        ),
        Row(
            f"cost ef={cpu_ef}",
            "CPU per single query, shard processes",
            "CPU-ms",
            across(lambda e: e["cpu"]["cpu_ms_shards"]),
            False,
        ),
        Row(
            f"cost ef={cpu_ef}",
            "CPU per single query, public server process",
            "CPU-ms",
            across(lambda e: e["cpu"]["cpu_ms_per_query"].get("server", nan)),
            False,
        ),
        Row(
            f"cost ef={cpu_ef}",
            "CPU per single query, benchmark client",
            "CPU-ms",
            across(lambda e: e["cpu"]["cpu_ms_per_query"]["client"]),
            False,
        ),
        Row(
            "cost",
            "gRPC floor: no-work RPC round trip p50",
            "ms",
            across(lambda e: e["rpc_floor"]["p50_ms"]),
            False,
            "shard: ShardService.Stats; server: Health.Check on the public port",
        ),
    ]
    return rows


def ratio(value: float, base: float) -> float:
    return value / base if base and base == base and value == value else float("nan")


def fmt(value: float, unit: str) -> str:
    if unit == "CPU-ms":
        return "n/a" if value != value else f"{value:.3f}"
    return sb.fmt(value, unit)


def fmt_ratio(value: float) -> str:
    if value != value:
        return ""
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def render_markdown(report: dict[str, Any], rows: list[Row]) -> str:
    m, p = report["machine"], report["params"]
    shards = p["shards"]
    servers = [f"server_{s}" for s in shards]
    heads = ["Raw hnswlib", "Shard direct"] + [f"Server, {s} shard{'s' if s > 1 else ''}" for s in shards]
    ratio_heads = [f"S{s}/shard" for s in shards] + [f"S{s}/raw" for s in shards]
    lines = [
        "# Public server benchmark: SearchService (1 and 3 shards) vs shard direct vs raw hnswlib",
        "",
        f"- Command: `{report['command']}`",
        f"- Date: {report['date']} (UTC); total run {report['wall_s']:.0f} s; code at git {report['git']}",
        f"- Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, hnswlib {m['hnswlib']}, grpcio {m['grpcio']}, numpy {m['numpy']}",
        f"- Load average at start / end: {m['loadavg_at_start']} / {m['loadavg_at_end']}; other processes used "
        f"{m['other_work_cpu_s']} CPU-s during the run ({m['other_work_share']:.0%} of the machine's CPU time). "
        "The client, the public server, the shards and hnswlib share the same cores.",
        f"- Data: `tests.datasets.data_and_queries({p['n']}, {p['queries']}, {p['dim']}, seed={p['seed']})`, "
        f"metric {p['metric']}, HNSW M={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}, k={p['k']}; every "
        f"{p['tag_every']}th item carries the tag `{TAG}` ({p['tagged']} items); ground truth by brute force",
        "- Raw hnswlib and shard direct: exactly as bench/shard_bench.py (imported): add_items with nproc threads; "
        "one `python -m shard` with `--fsync always` holding every item, through ShardService and ShardClient",
        f"- Server: `python -m server.cluster --shards S` (tests.clusterproc.ClusterProcess: the public server and "
        f"S shard processes with default flags, fsync always; metadata and topology in SQLite), "
        f"SearchService over one gRPC channel, packed float32 vectors, deadline {RPC_TIMEOUT_S:.0f} s",
        f"- Search: {p['warmup']} warm-up queries per ef, then {p['repeats']} rounds of every query alone "
        f"(QPS = median round, p50/p99 over all calls), then {p['repeats']} rounds of {p['search_batch']} queries "
        f"per request (one request at a time)",
        f"- Filtered search (tag on every {p['tag_every']}th item): the first {p['filter_queries']} queries, "
        f"{p['filter_warmup']} warm-up, {p['filter_repeats']} round(s) alone and {p['filter_repeats']} round(s) in "
        f"requests of up to {p['search_batch']}, ef={p['filter_ef']}; recall against brute force over the tagged "
        "items only",
        "",
        "S<n> = server with n shards. For throughput and recall higher is better, for latency and CPU lower is better.",
        "",
        "| Section | Figure | Unit | " + " | ".join(heads) + " | " + " | ".join(ratio_heads) + " | Note |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in heads + ratio_heads) + " | --- |",
    ]
    for row in rows:
        cells = [fmt(row.values.get(name, float("nan")), row.unit) for name in shape_names(shards)]
        ratios = [fmt_ratio(ratio(row.values[s], row.values["shard"])) for s in servers]
        ratios += [fmt_ratio(ratio(row.values[s], row.values["raw"])) for s in servers]
        lines.append(
            f"| {row.section} | {row.figure} | {row.unit} | " + " | ".join(cells + ratios) + f" | {row.note} |"
        )
    shard = report["shard_direct"]
    lines += ["", "## Details", ""]
    lines.append(
        f"- Shard direct ingest: {shard['ingest']['seconds']:.1f} s, upsert p50 "
        f"{shard['ingest']['request_p50_ms']:.1f} ms / p99 {shard['ingest']['request_p99_ms']:.1f} ms; "
        f"Compact(wait=True) {shard['build']['drain_s']:.1f} s."
    )
    for s in shards:
        server = report["servers"][str(s)]
        ing = server["ingest"]
        cpu = ", ".join(f"{name} {v:.1f}" for name, v in ing["cpu_s"].items())
        lines.append(
            f"- Server, {s} shard(s), ingest: {ing['seconds']:.1f} s, Upsert p50 {ing['request_p50_ms']:.1f} ms / "
            f"p99 {ing['request_p99_ms']:.1f} ms; CPU-s during ingest: {cpu}. Every delta empty "
            f"{server['build']['drain_s']:.1f} s after the last ack; items per shard: "
            + ", ".join(f"{sid} {st['graph_elements']}" for sid, st in server["after_drain"].items())
            + "."
        )
        hwm = ", ".join(f"{name} {v:.0f}" for name, v in server["memory"]["vm_hwm_mib"].items())
        lines.append(f"- Server, {s} shard(s), peak RSS (VmHWM, MiB): {hwm}.")
        cpu_q = server["cpu"]
        lines.append(
            f"- Server, {s} shard(s), one pass of single queries at ef={p['cpu_ef']}: wall "
            f"{cpu_q['wall_ms_per_query']:.3f} ms per query; CPU-ms per query: "
            + ", ".join(f"{name} {v:.3f}" for name, v in cpu_q["cpu_ms_per_query"].items())
            + "."
        )
    lines.append(
        f"- Shard direct, same pass: wall {shard['cpu']['wall_ms_per_query']:.3f} ms per query; CPU-ms per query: "
        + ", ".join(f"{name} {v:.3f}" for name, v in shard["cpu"]["cpu_ms_per_query"].items())
        + "."
    )
    lines.append(f"- Filtered, raw: {report['raw_filtered']['method']}. Shard: {shard['filtered']['method']}.")
    if shards:
        lines.append(f"- Filtered, server: {report['servers'][str(shards[0])]['filtered']['method']}.")
    lines += [
        "- Recall with several shards: each shard searches its own smaller graph with the same ef and the router "
        "merges the shards' top-k, so recall at a given ef is higher than with one graph of every item.",
        "",
        "Every round, the ingest CPU by process and the per-shard counts are in server.json.",
        "",
    ]
    return "\n".join(lines)


# ====================================================================== main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(description=doc.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=None, help="data set size (default 100000; --quick 10000)")
    p.add_argument("--dim", type=int, default=None, help="dimension (default 512; --quick 128)")
    p.add_argument("--queries", type=int, default=None, help="number of queries (default 1000; --quick 200)")
    p.add_argument(
        "--out", type=Path, default=None, help="results folder (default bench/results; --quick: bench/data/quick)"
    )
    p.add_argument("--quick", action="store_true", help="small smoke-test run (10k x 128, 200 queries)")
    p.add_argument("--shards", type=int, nargs="+", default=[1, 3], help="cluster sizes behind the public server")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--metric", choices=sorted(sb.RAW_SPACE), default="cosine")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="raw add_items/batched threads")
    p.add_argument("--ingest-batch", type=int, default=1000)
    p.add_argument("--ingest-threads", type=int, default=4)
    p.add_argument("--tag-every", type=int, default=10, help="every n-th item gets the filter tag (10 = 10%%)")
    p.add_argument("--filter-queries", type=int, default=None, help="queries of the filtered test (default 100)")
    p.add_argument("--filter-warmup", type=int, default=5, help="warm-up queries of the filtered test")
    p.add_argument(
        "--filter-repeats", type=int, default=1, help="rounds of the filtered test (one request costs ~0.5 s at 100k)"
    )
    p.add_argument("--filter-ef", type=int, default=64, help="ef sent with filtered searches")
    p.add_argument("--cpu-ef", type=int, default=64, help="ef of the CPU-per-query pass")
    p.add_argument("--search-batch", type=int, default=100, help="queries per Search request in the batched test")
    p.add_argument("--warmup", type=int, default=None, help="warm-up queries per ef (default 100; --quick 20)")
    p.add_argument("--repeats", type=int, default=3, help="rounds of each search test; QPS = median round")
    p.add_argument("--data-dir", type=Path, default=REPO / "bench" / "data", help="cache for data and truth")
    p.add_argument("--tmp-dir", type=Path, default=None, help="where the shards' data directories go")
    args = p.parse_args(argv)
    quick = {
        "n": 10_000,
        "dim": 128,
        "queries": 200,
        "warmup": 20,
        "filter_queries": 50,
        "out": REPO / "bench" / "data" / "quick",
    }
    full = {
        "n": 100_000,
        "dim": 512,
        "queries": 1000,
        "warmup": 100,
        "filter_queries": 100,
        "out": REPO / "bench" / "results",
    }
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.filter_queries = min(args.filter_queries, args.queries)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wall0 = time.perf_counter()
    command = shlex.join(["python", "bench/server_bench.py", *(sys.argv[1:] if argv is None else argv)])

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - wall0:7.1f}s] {message}", flush=True)

    machine = sb.machine_info()
    date = sb.now_utc()
    busy0, own0 = sb.machine_busy_cpu_s(), sb.own_cpu_s()
    log(f"machine: {machine['nproc']} x {machine['cpu_model']}, load {machine['loadavg_at_start']}")
    data, queries, truth, data_info = sb.load_dataset(
        args.data_dir, args.n, args.queries, args.dim, args.seed, args.metric, args.k
    )
    log(f"data {data.shape}, queries {queries.shape}, truth {truth.shape} ({data_info})")
    ids = sb.ids_for(args.n)
    rows = tagged_rows(args.n, args.tag_every)
    fqueries = queries[: args.filter_queries]
    ftruth = filtered_truth(data, fqueries, rows, args.k, args.metric)

    raw = sb.bench_raw(
        data, queries, truth, ids, args.metric, args.ef, args.k, args.threads, args.warmup, args.repeats, log
    )
    # Raw hnswlib answers a single query on one thread of this process: its CPU per query is its mean time.
    raw_single = raw["search"].get(str(args.cpu_ef), {}).get("single", {})
    raw["cpu"] = {
        "cpu_ms_per_query": {"client": raw_single.get("mean_ms", float("nan"))},
        "note": "raw hnswlib: mean single-query time on one thread of the benchmark process",
    }
    raw_filtered = bench_raw_filtered(data, fqueries, rows, ftruth, ids, args)
    log_search(log, "raw hnswlib", "filtered 10%", raw_filtered, args.k)

    requests = upsert_requests(ids, data, args.ingest_batch, args.tag_every)
    root = Path(tempfile.mkdtemp(prefix="vs-server-bench-", dir=args.tmp_dir))
    servers: dict[str, Any] = {}
    try:
        shard = bench_shard_direct(root, data, queries, truth, ids, rows, ftruth, args, log)
        for shards in args.shards:
            servers[str(shards)] = bench_cluster(
                root, shards, requests, queries, truth, ids, ftruth, len(rows), args, log
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    wall = time.perf_counter() - wall0
    other = max(0.0, (sb.machine_busy_cpu_s() - busy0) - (sb.own_cpu_s() - own0))
    machine["other_work_cpu_s"] = round(other, 1)
    machine["other_work_share"] = round(other / (wall * machine["nproc"]), 3)
    params = {
        key: getattr(args, key)
        for key in (
            "n",
            "dim",
            "queries",
            "shards",
            "seed",
            "metric",
            "k",
            "ef",
            "threads",
            "ingest_batch",
            "ingest_threads",
            "tag_every",
            "filter_queries",
            "filter_warmup",
            "filter_repeats",
            "filter_ef",
            "cpu_ef",
            "search_batch",
            "warmup",
            "repeats",
            "quick",
        )
    }
    params.update(tagged=len(rows), hnsw_m=HNSW_M, hnsw_ef_construction=HNSW_EF_CONSTRUCTION)
    report: dict[str, Any] = {
        "command": command,
        "date": date,
        "git": sb.git_revision(),
        "wall_s": wall,
        "machine": machine,
        "params": params,
        "data": data_info,
        "raw_hnswlib": raw,
        "raw_filtered": raw_filtered,
        "shard_direct": shard,
        "servers": servers,
    }
    table = build_rows(report, args.shards)
    servers_keys = [f"server_{s}" for s in args.shards]
    report["comparison"] = [
        dict(
            asdict(row),
            ratio_to_shard={s: ratio(row.values[s], row.values["shard"]) for s in servers_keys},
            ratio_to_raw={s: ratio(row.values[s], row.values["raw"]) for s in servers_keys},
        )
        for row in table
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    sb.write_atomic(args.out / "server.json", json.dumps(sb.jsonable(report), indent=1, allow_nan=False) + "\n")
    markdown = render_markdown(report, table)
    sb.write_atomic(args.out / "server.md", markdown)
    log(f"wrote {args.out / 'server.md'} and {args.out / 'server.json'}")
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
