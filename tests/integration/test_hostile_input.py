"""Hostile input over the public port of a real single-node server (metadata in Postgres, and in
SQLite for the batch-size bounds): every class of bad input gets its exact status code before
anything is written, the process keeps serving, and the items loaded before stay byte-for-byte
as they were. Batches at the API's maximum sizes work on both databases.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import limits
from testkit.serverproc import SingleNodeProcess
from tests.pg import fresh_schema_url
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

DIM = 8
BAD = grpc.StatusCode.INVALID_ARGUMENT
TOO_BIG = grpc.StatusCode.RESOURCE_EXHAUSTED
BACKENDS = ("postgres", "sqlite")


def vectors(matrix: np.ndarray, **fields: Any) -> types_pb2.Vectors:
    return types_pb2.Vectors(
        dimension=matrix.shape[1], packed=np.ascontiguousarray(matrix, dtype="<f4").tobytes(), **fields
    )


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def upsert_request(collection: str, ids: list[str], matrix: np.ndarray, tags: bool = True) -> pb.UpsertRequest:
    request = pb.UpsertRequest(collection=collection, vectors=vectors(matrix))
    for i, item_id in enumerate(ids):
        item = request.items.add(id=item_id)
        item.metadata.uri = f"s3://bucket/{item_id}"
        if tags:
            item.metadata.tags.extend([f"t{i % 7}", "all"])
            item.metadata.attributes["n"].int_value = i
            item.metadata.attributes["kind"].string_value = "even" if i % 2 == 0 else "odd"
    return request


class Server:
    def __init__(self, workdir: Path, backend: str) -> None:
        extra = ("--database-url", fresh_schema_url()) if backend == "postgres" else ()
        self.process = SingleNodeProcess(workdir, *extra)
        address = self.process.start()
        self.channel = grpc.insecure_channel(
            address,
            options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)],
        )
        self.stub = pb_grpc.SearchServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self.process.stop()

    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp(f"hostile-{request.param}") / "node", request.param)
    yield srv
    srv.close()


def create(stub: pb_grpc.SearchServiceStub, name: str, metric: Any = types_pb2.METRIC_COSINE, dim: int = DIM) -> None:
    spec = types_pb2.CollectionSpec(name=name, dimension=dim, metric=metric)
    stub.CreateCollection(pb.CreateCollectionRequest(spec=spec))


def in_filter(values: list[pb.AttributeValue]) -> pb.Filter:
    message = pb.Filter(condition=pb.Condition(field="tags"))
    getattr(message.condition, "in").values.extend(values)
    return message


def test_batches_at_the_maximum_sizes_work(server: Server) -> None:
    stub = server.stub
    create(stub, "big")
    n = limits.MAX_BATCH_ITEMS
    ids = [f"item-{i:05d}-{'x' * 40}" for i in range(n)]
    matrix = np.random.default_rng(1).standard_normal((n, DIM)).astype(np.float32)
    assert stub.Upsert(upsert_request("big", ids, matrix)).upserted == n
    got = stub.Get(pb.GetRequest(collection="big", ids=ids))
    assert len(got.items) == n and not got.missing_ids
    assert got.items[n - 1].metadata.attributes["n"].int_value == n - 1
    assert sorted(got.items[3].metadata.tags) == ["all", "t3"]
    assert stub.DescribeCollection(pb.DescribeCollectionRequest(collection="big")).count == n
    # one more is refused before anything is written
    more = [*ids, "one-too-many"]
    over = upsert_request("big", more, np.vstack([matrix, matrix[:1]]))
    assert code_of(lambda: stub.Upsert(over)) == BAD
    assert list(stub.Get(pb.GetRequest(collection="big", ids=["one-too-many"])).missing_ids) == ["one-too-many"]
    assert code_of(lambda: stub.Get(pb.GetRequest(collection="big", ids=more))) == BAD
    assert code_of(lambda: stub.Delete(pb.DeleteRequest(collection="big", ids=more))) == BAD
    assert stub.DescribeCollection(pb.DescribeCollectionRequest(collection="big")).count == n
    # a re-upsert of the full batch replaces every item's metadata (the tag and attribute rows too)
    assert stub.Upsert(upsert_request("big", ids, matrix, tags=False)).upserted == n
    again = stub.Get(pb.GetRequest(collection="big", ids=ids[:5]))
    assert all(not item.metadata.tags and not item.metadata.attributes for item in again.items)
    assert stub.Delete(pb.DeleteRequest(collection="big", ids=ids)).deleted == n
    assert len(stub.Get(pb.GetRequest(collection="big", ids=ids)).missing_ids) == n
    assert stub.DescribeCollection(pb.DescribeCollectionRequest(collection="big")).count == 0


@pytest.fixture(scope="module")
def loaded(server: Server) -> tuple[Server, list[str], pb.GetResponse]:
    """A collection with items loaded before the hostile requests, and their Get reply."""
    create(server.stub, "kept")
    ids = [f"kept-{i}" for i in range(50)]
    matrix = np.random.default_rng(2).standard_normal((50, DIM)).astype(np.float32)
    server.stub.Upsert(upsert_request("kept", ids, matrix))
    before = server.stub.Get(pb.GetRequest(collection="kept", ids=ids, include_vectors=True))
    assert len(before.items) == 50
    return server, ids, before


def one_item(item_id: str = "new", **meta: Any) -> pb.UpsertRequest:
    request = pb.UpsertRequest(collection="kept", vectors=vectors(np.ones((1, DIM))))
    item = request.items.add(id=item_id)
    item.metadata.uri = meta.get("uri", "")
    item.metadata.tags.extend(meta.get("tags", []))
    for name, value in meta.get("attributes", {}).items():
        item.metadata.attributes[name].string_value = value
    return request


def search(matrix: np.ndarray, **fields: Any) -> pb.SearchRequest:
    return pb.SearchRequest(**{"collection": "kept", "queries": vectors(matrix), "k": 5, **fields})


def tag_eq(value: str) -> pb.Filter:
    return pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value=value)))


def hostile_cases() -> list[tuple[str, str, Callable[[], Any], grpc.StatusCode]]:
    """(name, RPC, request, expected code); built lazily so ids stay unique per case."""
    q1 = np.ones((1, DIM), dtype=np.float32)
    f64 = np.ones((2, DIM), dtype=np.float64)
    many = [tag_eq(f"t{i}") for i in range(limits.MAX_FILTER_NODES)]
    values = [pb.AttributeValue(string_value=str(i)) for i in range(limits.MAX_FILTER_VALUES // 2 + 1)]
    big_in = in_filter(values)
    return [
        ("id with NUL", "Upsert", lambda: one_item("a\x00b"), BAD),
        ("id too long", "Upsert", lambda: one_item("i" * 257), BAD),
        ("uri with NUL", "Upsert", lambda: one_item(uri="s3://\x00"), BAD),
        ("uri too long", "Upsert", lambda: one_item(uri="u" * 4097), BAD),
        ("tag with NUL", "Upsert", lambda: one_item(tags=["\x00"]), BAD),
        ("empty tag", "Upsert", lambda: one_item(tags=[""]), BAD),
        ("attribute value with NUL", "Upsert", lambda: one_item(attributes={"s": "v\x00"}), BAD),
        ("attribute value too long", "Upsert", lambda: one_item(attributes={"s": "v" * 4097}), BAD),
        ("attribute name with newline", "Upsert", lambda: one_item(attributes={"name\n": "v"}), BAD),
        ("collection name with newline", "Upsert", lambda: pb.UpsertRequest(collection="kept\n"), BAD),
        (
            "create with a newline in the name",
            "CreateCollection",
            lambda: pb.CreateCollectionRequest(
                spec=types_pb2.CollectionSpec(name="c\n", dimension=4, metric="METRIC_L2")
            ),
            BAD,
        ),
        ("search a collection named with NUL", "Search", lambda: search(q1, collection="k\x00"), BAD),
        (
            "float64 bytes, undeclared",
            "Upsert",
            lambda: pb.UpsertRequest(
                collection="kept",
                items=[pb.ItemMetadata(id="d1"), pb.ItemMetadata(id="d2")],
                vectors=types_pb2.Vectors(dimension=DIM, packed=f64.tobytes()),
            ),
            BAD,
        ),
        (
            "float64 bytes, rows declared",
            "Upsert",
            lambda: pb.UpsertRequest(
                collection="kept",
                items=[pb.ItemMetadata(id="d1"), pb.ItemMetadata(id="d2")],
                vectors=types_pb2.Vectors(dimension=DIM, packed=f64.tobytes(), rows=2),
            ),
            BAD,
        ),
        (
            "rows disagree with the bytes",
            "Search",
            lambda: search(q1, queries=vectors(np.ones((2, DIM)), rows=3)),
            BAD,
        ),
        ("too many queries", "Search", lambda: search(np.ones((limits.MAX_QUERIES + 1, DIM))), BAD),
        ("queries x k too large", "Search", lambda: search(np.ones((200, DIM)), k=1000), BAD),
        ("k too large", "Search", lambda: search(q1, k=limits.MAX_K + 1), BAD),
        (
            "filter with too many nodes",
            "Search",
            lambda: search(q1, filter=pb.Filter(any_of=pb.FilterList(filters=many))),
            BAD,
        ),
        (
            "filter with too many values",
            "Search",
            lambda: search(q1, filter=pb.Filter(all_of=pb.FilterList(filters=[big_in, big_in]))),
            BAD,
        ),
        ("filter value with NUL", "Search", lambda: search(q1, filter=tag_eq("a\x00")), BAD),
        (
            "get too many ids",
            "Get",
            lambda: pb.GetRequest(collection="kept", ids=[str(i) for i in range(limits.MAX_BATCH_ITEMS + 1)]),
            BAD,
        ),
        (
            "delete too many ids",
            "Delete",
            lambda: pb.DeleteRequest(collection="kept", ids=[str(i) for i in range(limits.MAX_BATCH_ITEMS + 1)]),
            BAD,
        ),
        ("delete an id with NUL", "Delete", lambda: pb.DeleteRequest(collection="kept", ids=["kept-1\x00"]), BAD),
        (
            "text search of a collection named with NUL",
            "SearchByText",
            lambda: pb.SearchByTextRequest(collection="k\x00", texts=["x"], k=1),
            BAD,
        ),
        ("text search with k=0", "SearchByText", lambda: pb.SearchByTextRequest(collection="kept", texts=["x"]), BAD),
        (
            "text search on a server without an embedding service",
            "SearchByText",
            lambda: pb.SearchByTextRequest(collection="kept", texts=["x"], k=1),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            "describe the model of a server without an embedding service",
            "DescribeEmbeddingModel",
            lambda: pb.DescribeEmbeddingModelRequest(),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    ]


def test_hostile_input_is_refused_before_any_write(loaded: tuple[Server, list[str], pb.GetResponse]) -> None:
    server, ids, before = loaded
    for name, rpc, make, expected in hostile_cases():
        got = code_of(functools.partial(getattr(server.stub, rpc), make()))
        assert got == expected, f"{name}: {got} instead of {expected}"
        assert server.alive(), f"{name}: the server died"
    written = server.stub.Get(pb.GetRequest(collection="kept", ids=["new", "d1", "d2", "a", "i" * 256]))
    assert not written.items, "a refused request wrote something"
    after = server.stub.Get(pb.GetRequest(collection="kept", ids=ids, include_vectors=True))
    assert after.SerializeToString(deterministic=True) == before.SerializeToString(deterministic=True)
    assert server.stub.DescribeCollection(pb.DescribeCollectionRequest(collection="kept")).count == len(ids)


def test_replies_that_cannot_fit_are_refused_before_work(server: Server) -> None:
    create(server.stub, "wide", dim=2048)
    server.stub.Upsert(
        pb.UpsertRequest(collection="wide", items=[pb.ItemMetadata(id="w")], vectors=vectors(np.ones((1, 2048))))
    )
    ids = ["w", *(f"w{i}" for i in range(limits.MAX_BATCH_ITEMS - 1))]  # 10,000 x 2048 x 4 bytes > 64 MiB
    get = pb.GetRequest(collection="wide", ids=ids, include_vectors=True)
    assert code_of(lambda: server.stub.Get(get)) == TOO_BIG
    assert server.stub.Get(pb.GetRequest(collection="wide", ids=ids)).items[0].id == "w"  # without vectors: fine
    wide = search(np.ones((100, 2048)), collection="wide", k=1000, include_vectors=True)
    assert code_of(lambda: server.stub.Search(wide)) == TOO_BIG
    assert server.alive()


def test_float64_and_extreme_values_are_stored_as_meant(loaded: tuple[Server, list[str], pb.GetResponse]) -> None:
    server, _, _ = loaded
    stub = server.stub
    m = np.random.default_rng(9).standard_normal((2, DIM))
    declared = types_pb2.Vectors(
        dimension=DIM, packed=m.astype("<f8").tobytes(), rows=2, element_type=types_pb2.ELEMENT_TYPE_FLOAT64
    )
    request = pb.UpsertRequest(
        collection="kept", items=[pb.ItemMetadata(id="f0"), pb.ItemMetadata(id="f1")], vectors=declared
    )
    assert stub.Upsert(request).upserted == 2
    got = stub.Get(pb.GetRequest(collection="kept", ids=["f0", "f1"], include_vectors=True))
    unit = m / np.linalg.norm(m, axis=1, keepdims=True)
    for item, expected in zip(got.items, unit, strict=True):
        assert np.allclose(item.vector, expected, atol=1e-6)
    huge = pb.UpsertRequest(
        collection="kept", items=[pb.ItemMetadata(id="huge")], vectors=vectors(np.full((1, DIM), 1e30))
    )
    assert stub.Upsert(huge).upserted == 1
    vector = np.array(stub.Get(pb.GetRequest(collection="kept", ids=["huge"], include_vectors=True)).items[0].vector)
    assert np.allclose(vector, 1 / np.sqrt(DIM)), "a cosine vector with huge values is normalised, never zeros"
    create(stub, "l2", metric=types_pb2.METRIC_L2)
    l2 = pb.UpsertRequest(collection="l2", items=[pb.ItemMetadata(id="huge")], vectors=vectors(np.full((1, DIM), 1e30)))
    assert code_of(lambda: stub.Upsert(l2)) == BAD
    stub.Delete(pb.DeleteRequest(collection="kept", ids=["f0", "f1", "huge"]))


def raw_call(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    return code_of(lambda: call(payload, timeout=10))


def nested_filter_bytes(levels: int) -> bytes:
    """A Filter that is ``not`` of ``not`` ... ``levels`` deep (field 4, length-delimited)."""
    inner = b""
    for _ in range(levels):
        inner = b"\x22" + _varint(len(inner)) + inner
    return inner


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_malformed_request_bytes_are_invalid_argument(loaded: tuple[Server, list[str], pb.GetResponse]) -> None:
    server, ids, before = loaded
    search = "/vectorsearch.v1.SearchService/Search"
    bad_utf8 = b"\x0a\x02\xff\xfe"  # field 1 (collection), 2 bytes that are not UTF-8
    deep = b"\x0a\x04kept\x2a" + _varint(len(nested_filter_bytes(300))) + nested_filter_bytes(300)
    for payload in (b"\xff\xff\xff\xff", bad_utf8, deep, b"\x0a\x10short"):
        assert raw_call(server.channel, search, payload) == BAD, payload[:20]
    # a client stream whose second message does not parse: the first stays written
    stream = server.channel.stream_unary(
        "/vectorsearch.v1.SearchService/UpsertStream", request_serializer=None, response_deserializer=None
    )
    good = pb.UpsertRequest(
        collection="kept", items=[pb.ItemMetadata(id="streamed")], vectors=vectors(np.ones((1, DIM)))
    )
    assert code_of(lambda: stream(iter([good.SerializeToString(), b"\xff\xff"]), timeout=10)) == BAD
    assert [i.id for i in server.stub.Get(pb.GetRequest(collection="kept", ids=["streamed"])).items] == ["streamed"]
    server.stub.Delete(pb.DeleteRequest(collection="kept", ids=["streamed"]))
    assert server.alive()
    after = server.stub.Get(pb.GetRequest(collection="kept", ids=ids, include_vectors=True))
    assert after.SerializeToString(deterministic=True) == before.SerializeToString(deterministic=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=300), method=st.sampled_from(["Search", "Upsert", "Get", "Delete", "SearchById"]))
def test_fuzzed_request_bytes_never_crash_or_fail_inside(
    loaded: tuple[Server, list[str], pb.GetResponse], payload: bytes, method: str
) -> None:
    server, _, _ = loaded
    code = raw_call(server.channel, f"/vectorsearch.v1.SearchService/{method}", payload)
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (method, payload)
    assert server.alive()
