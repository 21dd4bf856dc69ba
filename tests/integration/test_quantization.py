"""int8 collections (docs/quantization.md) in real processes: a shard killed with SIGKILL
(mid-compaction) keeps every acknowledged write with its exact vector, a bad quantization code
is INVALID_ARGUMENT before anything is created, and the SDK creates and describes one through
the single-node server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from shard import hnsw
from testkit.datasets import clustered
from testkit.serverproc import SingleNodeProcess
from testkit.shardproc import ShardProcess
from testkit.truth import exact_top_k

pytestmark = pytest.mark.skipif(not hnsw.NATIVE, reason="int8 needs shard._vsnative (python -m shard.native.build)")

DIM = 24
INT8 = 2


@pytest.fixture
def shard(tmp_path: Path) -> Iterator[ShardProcess]:
    process = ShardProcess(tmp_path / "data", "--compact-delta-items", "1000000")
    process.start()
    try:
        yield process
    finally:
        process.kill()


def test_int8_shard_keeps_acknowledged_writes_through_kill_9(shard: ShardProcess) -> None:
    client = shard.client
    assert client is not None
    reply = client.create_collection("q", DIM, metric="l2", quantization=INT8)
    assert reply.created and reply.spec.quantization == INT8
    data = clustered(3000, DIM, seed=21)
    ids = [f"x{i}" for i in range(3000)]
    for lo in range(0, 2000, 500):
        client.upsert("q", ids[lo : lo + 500], data[lo : lo + 500])
    client.compact("q")  # the first graph: int8 codes + vectors.f32
    for lo in range(2000, 3000, 250):
        client.upsert("q", ids[lo : lo + 250], data[lo : lo + 250])
    moved = data[5] + 10.0
    client.upsert("q", ["x5"], moved[None, :])
    client.delete("q", ["x6", "x2500"])
    client.compact("q", wait=False)  # killed while it may be folding
    client = shard.restart()
    expected = dict(zip(ids, data, strict=True))
    expected["x5"] = moved
    del expected["x6"], expected["x2500"]
    assert client.stats("q").count == len(expected)
    assert client.stats("q").spec.quantization == INT8
    got = client.get("q", ids)
    assert set(got) == set(expected)
    for item, vector in got.items():
        np.testing.assert_array_equal(vector, expected[item])
    client.compact("q")
    client = shard.restart()  # from the new snapshot
    live = list(expected)
    matrix = np.stack([expected[i] for i in live])
    queries = clustered(50, DIM, seed=22)
    truth = exact_top_k(matrix, queries, 10, "l2")
    hits = client.search("q", queries, 10, ef=64)
    recall = np.mean([len({live[j] for j in truth[q]} & {h for h, _ in hits[q]}) / 10 for q in range(50)])
    assert recall >= 0.95
    best, distance = hits[0][0]
    assert distance == pytest.approx(float(np.sum((expected[best] - queries[0]) ** 2)), rel=1e-4)


def test_bad_quantization_code_is_invalid_argument(shard: ShardProcess) -> None:
    client = shard.client
    assert client is not None
    for code in (3, 42):
        with pytest.raises(grpc.RpcError) as error:
            client.create_collection("bad", DIM, quantization=code)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "quantization" in (error.value.details() or "")
    assert not (shard.data_dir / "collections" / "bad").exists()
    assert not list(shard.data_dir.rglob("*bad*"))


def test_sdk_creates_and_describes_an_int8_collection(tmp_path: Path) -> None:
    from vectorsearch_client import Client

    server = SingleNodeProcess(tmp_path / "node")
    address = server.start(timeout=60)
    try:
        with Client(address, timeout=20.0) as client:
            assert client.create_collection("q8", DIM, metric="cosine", quantization="int8") is True
            assert client.create_collection("q8", DIM, metric="cosine", quantization="int8") is False
            assert client.describe_collection("q8").quantization == "int8"
            assert client.create_collection("plain", DIM) is True
            assert client.describe_collection("plain").quantization == "none"
            with pytest.raises(ValueError, match="quantization"):
                client.create_collection("q4", DIM, quantization="int4")
            data = clustered(200, DIM, seed=5)
            client.upsert("q8", [f"i{j}" for j in range(200)], data)
            hits = client.search("q8", data[7], k=3)
            assert hits[0].id == "i7"
    finally:
        server.stop()


def test_embedded_client_keeps_the_option_across_reopen(tmp_path: Path) -> None:
    import vectorsearch_client

    data = clustered(100, DIM, seed=9)
    with vectorsearch_client.open(tmp_path / "db") as client:
        assert client.create_collection("e8", DIM, metric="l2", quantization="int8") is True
        client.upsert("e8", [f"i{j}" for j in range(100)], data)
        client.compact("e8", wait=True)
    with vectorsearch_client.open(tmp_path / "db") as client:
        assert client.describe_collection("e8").quantization == "int8"
        assert client.search("e8", data[3], k=1)[0].id == "i3"
        got = client.get("e8", ["i4"], include_vectors=True).items[0].vector
        assert got is not None
        np.testing.assert_array_equal(got, data[4])
