"""Recall@10 >= 0.95 at default HNSW parameters on a seeded 20k x 128 set, for each metric,
through the shard's gRPC API, both fully compacted and with part of the data in the delta."""

from __future__ import annotations

import pytest

from testkit.datasets import data_and_queries
from testkit.shardproc import ShardProcess
from testkit.truth import exact_top_k, recall_at_k

N, NQ, DIM, K = 20_000, 500, 128, 10


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_recall_at_default_parameters(shard_proc: ShardProcess, metric: str) -> None:
    client = shard_proc.client
    assert client is not None
    data, queries = data_and_queries(N + 2_000, NQ, DIM, seed=17)
    ids = [f"v{i}" for i in range(len(data))]
    client.create_collection(metric, DIM, metric)  # default m, ef_construction, ef_search
    for lo in range(0, N, 1_000):
        client.upsert(metric, ids[lo : lo + 1_000], data[lo : lo + 1_000])
    client.compact(metric, wait=True)
    truth = exact_top_k(data[:N], queries, K, metric)
    found = [[i for i, _ in hits] for hits in client.search(metric, queries, K)]
    compacted = recall_at_k(truth, found, ids)
    assert compacted >= 0.95, f"{metric}: recall@10 {compacted:.3f} after compaction"

    # 2k more items stay in the delta layer (no compaction): graph + delta merge
    client.upsert(metric, ids[N:], data[N:])
    stats = client.stats(metric)
    assert stats.delta_size == 2_000 and stats.graph_elements == N
    truth = exact_top_k(data, queries, K, metric)
    found = [[i for i, _ in hits] for hits in client.search(metric, queries, K)]
    merged = recall_at_k(truth, found, ids)
    assert merged >= 0.95, f"{metric}: recall@10 {merged:.3f} with a delta"
    print(f"{metric}: recall@10 compacted {compacted:.4f}, graph+delta {merged:.4f}")
