"""ShardService over a real socket: every RPC, and exact status codes for bad input."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from testkit.shard_client import ShardClient
from testkit.shardproc import ShardProcess
from vsproto.v1 import shard_service_pb2 as pb
from vsproto.v1 import types_pb2

DIM = 8


@pytest.fixture
def client(shard_proc: ShardProcess) -> ShardClient:
    assert shard_proc.client is not None
    shard_proc.client.create_collection("c", DIM, "l2")
    return shard_proc.client


def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value.code()


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def test_round_trip_of_every_rpc(client: ShardClient) -> None:
    data = vectors(50)
    reply = client.upsert("c", [f"i{i}" for i in range(50)], data)
    assert reply.seq == 1 and reply.upserted == 50
    hits = client.search("c", data[:3], 1)
    assert [h[0][0] for h in hits] == ["i0", "i1", "i2"]
    assert client.delete("c", ["i0", "missing"]).deleted == 1
    assert client.delete("c", ["missing"]).seq == 0
    got = client.get("c", ["i1", "i0"])
    assert list(got) == ["i1"]
    np.testing.assert_array_equal(got["i1"], data[1])
    assert client.compact("c").snapshot_seq == 2
    stats = client.stats("c")
    assert (stats.count, stats.graph_elements, stats.delta_size, stats.last_applied_seq) == (49, 49, 0, 2)
    records = list(client.read_wal("c", 1))
    assert [r.seq for r in records] == [1, 2]
    assert records[0].op.WhichOneof("op") == "upsert" and len(records[0].op.upsert.ids) == 50
    assert list(records[1].op.delete.ids) == ["i0"]
    listed = client.stub.ListCollections(pb.ListCollectionsRequest()).collections
    assert [s.name for s in listed] == ["c"]
    assert client.drop_collection("c") is True
    assert client.drop_collection("c") is False


def test_values_form_matches_packed_form(client: ShardClient) -> None:
    data = vectors(3)
    request = pb.UpsertRequest(
        collection="c",
        ids=["a", "b", "c"],
        vectors=types_pb2.Vectors(dimension=DIM, values=data.ravel().tolist()),
    )
    client.stub.Upsert(request)
    got = client.get("c", ["a", "b", "c"])
    np.testing.assert_array_equal(np.stack([got["a"], got["b"], got["c"]]), data)


def test_create_is_idempotent_and_rejects_a_different_spec(client: ShardClient) -> None:
    assert client.create_collection("c", DIM, "l2").created is False
    assert code_of(lambda: client.create_collection("c", DIM, "cosine")) == grpc.StatusCode.ALREADY_EXISTS
    assert code_of(lambda: client.create_collection("c", DIM + 1, "l2")) == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("name", "dim", "metric", "m"),
    [("bad/name", 8, 3, 0), ("", 8, 3, 0), ("ok", 0, 3, 0), ("ok", 20000, 3, 0), ("ok", 8, 0, 0), ("ok", 8, 3, 1)],
)
def test_bad_collection_specs(client: ShardClient, name: str, dim: int, metric: int, m: int) -> None:
    hnsw = types_pb2.HnswParams(m=m)
    spec = types_pb2.CollectionSpec(name=name, dimension=dim, metric=metric, hnsw=hnsw)  # type: ignore[arg-type]
    request = pb.CreateCollectionRequest(spec=spec)
    assert code_of(lambda: client.stub.CreateCollection(request)) == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_writes_and_reads_get_precise_codes_and_change_nothing(client: ShardClient) -> None:
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    good = vectors(1)
    nan = good.copy()
    nan[0, 3] = np.nan
    inf = good.copy()
    inf[0, 0] = np.inf
    assert code_of(lambda: client.upsert("c", ["a"], vectors(1)[:, :4])) == invalid  # wrong dimension
    assert code_of(lambda: client.upsert("c", ["a"], nan)) == invalid
    assert code_of(lambda: client.upsert("c", ["a"], inf)) == invalid
    assert code_of(lambda: client.upsert("c", [], np.empty((0, DIM)))) == invalid
    assert code_of(lambda: client.upsert("c", ["a", "b"], good)) == invalid  # count mismatch
    assert code_of(lambda: client.upsert("c", ["x" * 257], good)) == invalid
    assert code_of(lambda: client.upsert("c", ["é" * 129], good)) == invalid  # 258 bytes
    assert code_of(lambda: client.upsert("c", [""], good)) == invalid
    truncated = pb.UpsertRequest(
        collection="c", ids=["a"], vectors=types_pb2.Vectors(dimension=DIM, packed=good.tobytes()[:-2])
    )
    assert code_of(lambda: client.stub.Upsert(truncated)) == invalid
    both = pb.UpsertRequest(
        collection="c", ids=["a"], vectors=types_pb2.Vectors(dimension=DIM, packed=good.tobytes(), values=[1.0] * DIM)
    )
    assert code_of(lambda: client.stub.Upsert(both)) == invalid
    assert code_of(lambda: client.delete("c", [])) == invalid
    assert code_of(lambda: client.get("c", [])) == invalid
    assert code_of(lambda: client.search("c", good, 0)) == invalid
    assert code_of(lambda: client.search("c", good, 10_001)) == invalid
    assert code_of(lambda: client.search("c", good, 5, ef=10_001)) == invalid
    assert code_of(lambda: client.search("c", nan, 5)) == invalid
    assert code_of(lambda: client.search("c", vectors(1)[:, :3], 5)) == invalid
    empty_queries = pb.SearchRequest(collection="c", queries=types_pb2.Vectors(dimension=DIM), k=5)
    assert code_of(lambda: client.stub.Search(empty_queries)) == invalid
    assert code_of(lambda: client.get("c", ["a"] * 10_001)) == invalid
    assert client.stats("c").last_applied_seq == 0


def test_cosine_zero_vector_is_rejected(client: ShardClient) -> None:
    client.create_collection("cos", DIM, "cosine")
    zero = np.zeros((1, DIM), dtype=np.float32)
    assert code_of(lambda: client.upsert("cos", ["z"], zero)) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: client.search("cos", zero, 1)) == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_collection_is_not_found(client: ShardClient) -> None:
    nf = grpc.StatusCode.NOT_FOUND
    v = vectors(1)
    assert code_of(lambda: client.upsert("nope", ["a"], v)) == nf
    assert code_of(lambda: client.delete("nope", ["a"])) == nf
    assert code_of(lambda: client.get("nope", ["a"])) == nf
    assert code_of(lambda: client.search("nope", v, 1)) == nf
    assert code_of(lambda: client.stats("nope")) == nf
    assert code_of(lambda: client.compact("nope")) == nf
    assert code_of(lambda: list(client.read_wal("nope"))) == nf


def test_oversize_message_is_resource_exhausted_and_the_shard_stays_up(tmp_path: Path) -> None:
    proc = ShardProcess(tmp_path / "small", "--max-message-mb", "1")
    client = proc.start()
    try:
        client.create_collection("c", 512, "l2")
        big = np.ones((1000, 512), dtype=np.float32)  # 2 MB
        assert code_of(lambda: client.upsert("c", [f"b{i}" for i in range(1000)], big)) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        assert client.upsert("c", ["ok"], big[:1]).seq == 1
    finally:
        proc.kill()


def test_read_wal_after_truncation_is_out_of_range(client: ShardClient) -> None:
    for round_ in range(3):
        client.upsert("c", [f"r{round_}"], vectors(1, seed=round_))
        client.compact("c")
    with pytest.raises(grpc.RpcError) as info:
        list(client.read_wal("c", 1))
    assert info.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert "first_available_seq" in (info.value.details() or "")
    assert [r.seq for r in client.read_wal("c", 3)] == [3]


def test_health_and_reflection(shard_proc: ShardProcess) -> None:
    channel = grpc.insecure_channel(shard_proc.address)
    health = health_pb2_grpc.HealthStub(channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="vectorsearch.shard.v1.ShardService"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "vectorsearch.shard.v1.ShardService" in names
    channel.close()


def test_sigterm_drains_and_restarts_with_everything(shard_proc: ShardProcess) -> None:
    client = shard_proc.client
    assert client is not None
    client.create_collection("c", DIM, "ip")
    data = vectors(100)
    client.upsert("c", [f"t{i}" for i in range(100)], data)
    assert shard_proc.stop() == 0
    client = shard_proc.start()
    assert client.stats("c").count == 100
    np.testing.assert_array_equal(client.get("c", ["t42"])["t42"], data[42])
