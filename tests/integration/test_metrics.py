"""Prometheus metrics on the real processes (issue #17): a shard and a single-node server started
with ``--metrics-listen 127.0.0.1:0`` serve ``/metrics`` at the address written beside their
ready file, and the values move: RPC counts by method and status code, the collection gauges,
compactions, WAL fsyncs and the recall probe."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from vectorsearch_client import Client, InvalidArgument

from testkit.clusterproc import ClusterProcess
from testkit.datasets import data_and_queries
from testkit.serverproc import SingleNodeProcess
from testkit.shardproc import ShardProcess

DIM = 16
N = 2000

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels`` (0 when none)."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def rpc_count(samples: Samples, method_suffix: str, code: str) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == "vs_rpc_requests_total" and dict(ls)["method"].endswith(method_suffix) and dict(ls)["code"] == code
    )


def metrics_address(ready_file: Path) -> str:
    return Path(str(ready_file) + ".metrics").read_text().strip()


def test_a_shard_exports_rpc_collection_compaction_and_recall_metrics(tmp_path: Path) -> None:
    shard = ShardProcess(
        tmp_path / "shard",
        "--metrics-listen",
        "127.0.0.1:0",
        "--recall-probe-interval-s",
        "0.5",
        "--recall-probe-samples",
        "32",
        "--compact-age-s",
        "3600",
    )
    client = shard.start()
    try:
        address = metrics_address(tmp_path / "shard.ready")
        before = scrape(address)
        assert rpc_count(before, "/Upsert", "OK") == 0

        client.create_collection("c", DIM)
        data, queries = data_and_queries(N, 20, DIM, seed=7)
        for lo in range(0, N, 500):
            client.upsert("c", [f"i{i}" for i in range(lo, lo + 500)], data[lo : lo + 500])
        client.search("c", queries, k=10)
        with pytest.raises(grpc.RpcError) as missing:
            client.search("nope", queries[:1], k=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        after = scrape(address)
        assert rpc_count(after, "/Upsert", "OK") == N // 500
        assert rpc_count(after, "/Search", "OK") == 1
        assert rpc_count(after, "/Search", "NOT_FOUND") == 1
        assert value(after, "vs_rpc_duration_seconds_count", code="OK") >= N // 500 + 1
        assert value(after, "vs_collection_items", collection="c") == N
        assert value(after, "vs_collection_delta_items", collection="c") == N
        assert value(after, "vs_collection_wal_bytes", collection="c") > 0
        assert value(after, "vs_collection_last_applied_seq", collection="c") == N // 500
        assert value(after, "vs_wal_fsync_duration_seconds_count") >= 1
        assert value(after, "vs_compactions_total", collection="c") == 0

        client.compact("c", wait=True)
        compacted = scrape(address)
        assert value(compacted, "vs_compactions_total", collection="c") == 1
        assert value(compacted, "vs_compaction_duration_seconds_count") == 1
        assert value(compacted, "vs_compaction_failures_total") == 0
        assert value(compacted, "vs_collection_graph_elements", collection="c") == N
        assert value(compacted, "vs_collection_delta_items", collection="c") == 0
        assert value(compacted, "vs_collection_items", collection="c") == N

        # the probe runs every 0.5 s: wait for one that started after the fold (it measures the graph)
        probes = value(compacted, "vs_recall_probes_total", collection="c")
        deadline = time.monotonic() + 20
        recall = None
        while time.monotonic() < deadline:
            probed = scrape(address)
            if value(probed, "vs_recall_probes_total", collection="c") >= probes + 2:
                recall = value(probed, "vs_recall_at_k", collection="c", k="10")
                break
            time.sleep(0.2)
        assert recall is not None, "the recall probe never reported"
        assert 0.9 <= recall <= 1.0
    finally:
        shard.stop()


def test_a_single_node_server_exports_rpc_and_local_shard_metrics(tmp_path: Path) -> None:
    server = SingleNodeProcess(tmp_path / "node", "--metrics-listen", "127.0.0.1:0")
    client = Client(server.start(), timeout=30.0)
    try:
        address = metrics_address(tmp_path / "node" / "server.ready")
        assert client.create_collection("c", DIM, metric="cosine")
        data, queries = data_and_queries(500, 5, DIM, seed=3)
        client.upsert("c", [f"s{i}" for i in range(len(data))], data)
        client.search_batch("c", queries, k=5)
        with pytest.raises(InvalidArgument):
            client.search("c", queries[0, :3], k=5)
        client.compact("c", wait=True)

        samples = scrape(address)
        assert rpc_count(samples, "SearchService/Upsert", "OK") == 1
        assert rpc_count(samples, "SearchService/Search", "OK") == 1
        assert rpc_count(samples, "SearchService/Search", "INVALID_ARGUMENT") == 1
        assert rpc_count(samples, "AdminService/Compact", "OK") == 1
        assert value(samples, "vs_collection_items", collection="c") == 500
        assert value(samples, "vs_compactions_total", collection="c") == 1
        assert value(samples, "vs_fanout_partial_results_total") == 0
    finally:
        client.close()
        server.stop()


def test_a_server_counts_partial_results_per_failed_shard(tmp_path: Path) -> None:
    shards = [ShardProcess(tmp_path / f"s{i}") for i in range(2)]
    for shard in shards:
        shard.start()
    register = [f"--register-shard=s{i}={shard.address}" for i, shard in enumerate(shards)]
    server = SingleNodeProcess(
        tmp_path / "server", "--metrics-listen", "127.0.0.1:0", "--request-timeout-s", "3", *register, local_shard=False
    )
    client = Client(server.start(), timeout=30.0)
    try:
        address = metrics_address(tmp_path / "server" / "server.ready")
        assert client.create_collection("c", DIM, metric="cosine")
        data, queries = data_and_queries(300, 2, DIM, seed=5)
        client.upsert("c", [f"p{i}" for i in range(len(data))], data)
        assert not client.search("c", queries[0], k=5).partial
        assert value(scrape(address), "vs_fanout_partial_results_total") == 0

        shards[1].kill()
        for _ in range(2):
            hits = client.search("c", queries[0], k=5)
            assert hits.partial and hits.failed_shards == ["s1"]
        samples = scrape(address)
        assert value(samples, "vs_fanout_partial_results_total", shard="s1") == 2
        assert value(samples, "vs_fanout_partial_results_total", shard="s0") == 0
    finally:
        client.close()
        server.stop()
        for shard in shards:
            shard.stop()


def test_a_local_cluster_gives_each_shard_a_metrics_port(tmp_path: Path) -> None:
    cluster = ClusterProcess(tmp_path / "cluster", "--metrics-listen", "127.0.0.1:0", shards=2)
    cluster.start()
    try:
        with Client(cluster.address, timeout=30.0) as client:
            assert client.create_collection("c", DIM, metric="cosine")
            data, _ = data_and_queries(200, 1, DIM, seed=6)
            client.upsert("c", [f"m{i}" for i in range(len(data))], data)
        per_shard = [
            value(
                scrape(metrics_address(tmp_path / "cluster" / f"shard-{i}.ready")),
                "vs_collection_items",
                collection="c",
            )
            for i in range(2)
        ]
        assert sum(per_shard) == 200 and all(n > 0 for n in per_shard), per_shard
        assert (
            value(scrape(metrics_address(tmp_path / "cluster" / "server.ready")), "vs_fanout_partial_results_total")
            == 0
        )
    finally:
        cluster.stop()
