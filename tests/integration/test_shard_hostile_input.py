"""Hostile input over a shard's port (the internal ShardService, reachable by anyone who can
reach the port): every class of bad input gets its exact status code, the process stays up, and
the items loaded before stay byte-for-byte as they were. Request bytes that do not parse are
INVALID_ARGUMENT, and fuzzed bytes never fail inside the shard (INTERNAL / UNKNOWN)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testkit.shard_client import ShardClient
from testkit.shardproc import ShardProcess
from vsproto.v1 import shard_service_pb2 as pb
from vsproto.v1 import types_pb2

DIM = 8
COLLECTION = "kept-collection-for-hostile-input"
BAD = grpc.StatusCode.INVALID_ARGUMENT
SERVICE = "/vectorsearch.shard.v1.ShardService"


class Loaded:
    def __init__(self, workdir: Path) -> None:
        self.process = ShardProcess(workdir)
        self.process.start()
        assert self.process.client is not None
        self.client: ShardClient = self.process.client
        self.client.create_collection(COLLECTION, DIM, "l2")
        self.ids = [f"kept-item-number-{i:04d}" for i in range(40)]
        self.client.upsert(COLLECTION, self.ids, np.random.default_rng(4).standard_normal((40, DIM)))
        self.before = self.snapshot()

    def snapshot(self) -> bytes:
        reply = self.client.stub.Get(pb.GetRequest(collection=COLLECTION, ids=self.ids))
        return reply.SerializeToString(deterministic=True)

    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    shard = Loaded(tmp_path_factory.mktemp("shard-hostile") / "shard")
    yield shard
    shard.process.kill()


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def packed(matrix: np.ndarray, dtype: str = "<f4", **fields: Any) -> types_pb2.Vectors:
    return types_pb2.Vectors(
        dimension=matrix.shape[1], packed=np.ascontiguousarray(matrix, dtype=dtype).tobytes(), **fields
    )


def upsert(ids: list[str], vectors: types_pb2.Vectors) -> pb.UpsertRequest:
    return pb.UpsertRequest(collection=COLLECTION, ids=ids, vectors=vectors)


def test_bad_input_on_the_shard_port(loaded: Loaded) -> None:
    stub = loaded.client.stub
    one = np.ones((1, DIM))
    two = np.ones((2, DIM))
    huge = np.full((1, DIM), 1e30)
    cases: list[tuple[str, Callable[[], Any], grpc.StatusCode]] = [
        ("id with NUL", lambda: stub.Upsert(upsert(["a\x00"], packed(one))), BAD),
        ("id too long", lambda: stub.Upsert(upsert(["i" * 257], packed(one))), BAD),
        ("float64 bytes, undeclared", lambda: stub.Upsert(upsert(["a", "b"], packed(two, "<f8"))), BAD),
        ("float64 bytes, rows declared", lambda: stub.Upsert(upsert(["a", "b"], packed(two, "<f8", rows=2))), BAD),
        ("rows disagree", lambda: stub.Upsert(upsert(["a"], packed(one, rows=3))), BAD),
        ("norm overflows L2", lambda: stub.Upsert(upsert(["a"], packed(huge))), BAD),
        (
            "unknown element type",
            lambda: stub.Upsert(upsert(["a"], packed(one, element_type=7))),
            BAD,
        ),
        ("delete an id with NUL", lambda: stub.Delete(pb.DeleteRequest(collection=COLLECTION, ids=["x\x00"])), BAD),
        ("get an id with NUL", lambda: stub.Get(pb.GetRequest(collection=COLLECTION, ids=["x\x00"])), BAD),
        (
            "search an unknown collection named with NUL",
            lambda: stub.Search(pb.SearchRequest(collection="c\x00", queries=packed(one), k=3)),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "drop a collection named with NUL",
            lambda: stub.DropCollection(pb.DropCollectionRequest(collection="c\x00")),
            BAD,
        ),
        ("create with a trailing newline", lambda: loaded.client.create_collection("c\n", DIM), BAD),
        (
            "search with k too large",
            lambda: stub.Search(pb.SearchRequest(collection=COLLECTION, queries=packed(one), k=10_001)),
            BAD,
        ),
    ]
    for name, call, expected in cases:
        got = code_of(call)
        assert got == expected, f"{name}: {got} instead of {expected}"
        assert loaded.alive(), f"{name}: the shard died"
    assert loaded.snapshot() == loaded.before
    assert not loaded.client.get(COLLECTION, ["a", "b"])


def raw_unary(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    call = channel.unary_unary(f"{SERVICE}/{method}", request_serializer=None, response_deserializer=None)
    return code_of(lambda: call(payload, timeout=10))


def raw_stream(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    call = channel.unary_stream(f"{SERVICE}/{method}", request_serializer=None, response_deserializer=None)
    return code_of(lambda: call(payload, timeout=10))


def test_malformed_bytes_on_the_shard_port(loaded: Loaded) -> None:
    channel = loaded.client.channel
    for method in ("Upsert", "Search", "Get", "Delete", "Stats", "Compact"):
        assert raw_unary(channel, method, b"\xff\xff\xff\xff") == BAD, method
        assert raw_unary(channel, method, b"\x0a\x02\xff\xfe") == BAD, method  # invalid UTF-8 in field 1
    for method in ("ReadWal", "ScanItems"):
        assert raw_stream(channel, method, b"\xff\xff\xff\xff") == BAD, method
    assert loaded.alive()
    assert loaded.snapshot() == loaded.before


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.binary(max_size=300), method=st.sampled_from(["Upsert", "Search", "Get", "Delete", "Stats", "ReadWal"])
)
def test_fuzzed_bytes_never_fail_inside_the_shard(loaded: Loaded, payload: bytes, method: str) -> None:
    channel = loaded.client.channel
    call = raw_stream if method == "ReadWal" else raw_unary
    code = call(channel, method, payload)
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (method, payload)
    assert loaded.alive()
