"""The Python SDK (clients/python, import package ``vectorsearch_client``) against a real
single-node server process: collections, upsert with metadata, get, filtered search checked
against brute force, search_by_id, delete, error codes mapped to exception classes, bulk_upsert,
and the asyncio client.

The SDK is imported as installed: ``scripts/setup.sh`` runs ``pip install --no-build-isolation
-e clients/python``, whose build hook generates the stubs into ``vectorsearch_client._proto``
(by hand: the same command in the activated .venv)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from vectorsearch_client import (
    AlreadyExists,
    AsyncClient,
    Client,
    F,
    InvalidArgument,
    Metadata,
    NotFound,
    VectorSearchError,
)

from testkit.serverproc import SingleNodeProcess
from testkit.truth import exact_top_k

DIM = 16
N = 300


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = SingleNodeProcess(tmp_path_factory.mktemp("sdk"))
    try:
        yield server.start(timeout=60)
    finally:
        server.stop()


def dataset(seed: int = 7) -> tuple[list[str], np.ndarray, list[dict[str, object]]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = [f"item-{i}" for i in range(N)]
    metadata: list[dict[str, object]] = [
        {
            "uri": f"file:///data/{i}.jpg",
            "tags": ["even" if i % 2 == 0 else "odd", *(["red"] if i % 3 == 0 else [])],
            "attributes": {"n": i, "kind": "photo" if i % 5 else "drawing", "score": i / 10},
        }
        for i in range(N)
    ]
    return ids, vectors, metadata


def brute_force(vectors: np.ndarray, query: np.ndarray, mask: np.ndarray, k: int) -> list[int]:
    rows = np.flatnonzero(mask)
    return [int(rows[j]) for j in exact_top_k(vectors[rows], query.reshape(1, -1), k, metric="l2")[0]]


def test_sync_client_end_to_end(address: str) -> None:
    ids, vectors, metadata = dataset()
    with Client(address, timeout=20.0) as client:
        assert client.create_collection("sdk", DIM, metric="l2", m=16, ef_construction=100) is True
        assert client.create_collection("sdk", DIM, metric="l2", m=16, ef_construction=100) is False
        with pytest.raises(AlreadyExists):
            client.create_collection("sdk", DIM + 1, metric="l2")
        assert client.upsert("sdk", ids, vectors, metadata) == N
        info = client.describe_collection("sdk")
        assert (info.name, info.dimension, info.metric, info.m, info.count) == ("sdk", DIM, "l2", 16, N)
        assert "sdk" in [c.name for c in client.list_collections()]

        got = client.get("sdk", ["item-3", "nope"], include_vectors=True)
        assert got.missing_ids == ["nope"]
        (item,) = got.items
        assert item.metadata == Metadata("file:///data/3.jpg", ["odd", "red"], {"n": 3, "kind": "photo", "score": 0.3})
        assert item.vector is not None
        np.testing.assert_allclose(item.vector, vectors[3], rtol=1e-6)

        rng = np.random.default_rng(1)
        n = np.arange(N)
        kind_photo = n % 5 != 0
        cases = [
            (None, np.ones(N, dtype=bool)),
            (F.tag("even") & F.attr("n").range(10, 200), (n % 2 == 0) & (n >= 10) & (n <= 200)),
            (F.tag("red") | ~F.attr("kind").eq("photo"), (n % 3 == 0) | ~kind_photo),
            (F.attr("score").lt(5.0) & F.attr("n").isin([1, 2, 3, 4, 5, 40, 41]), np.isin(n, [1, 2, 3, 4, 5, 40, 41])),
        ]
        for flt, mask in cases:
            for _ in range(3):
                query = rng.standard_normal(DIM).astype(np.float32)
                hits = client.search("sdk", query, k=5, ef=400, filter=flt)
                assert not hits.partial
                expected = [f"item-{i}" for i in brute_force(vectors, query, mask, 5)]
                assert [h.id for h in hits] == expected, flt
                first = int(hits[0].id.split("-")[1])
                assert hits[0].distance == pytest.approx(float(np.sum((vectors[first] - query) ** 2)), rel=1e-4)
                assert hits[0].metadata is not None and hits[0].metadata.attributes["n"] == first

        similar = client.search_by_id("sdk", "item-0", k=5, ef=400, include_metadata=False)
        assert "item-0" not in [h.id for h in similar]
        assert [h.id for h in similar] == [f"item-{i}" for i in brute_force(vectors, vectors[0], n != 0, 5)]
        assert similar[0].metadata is None

        assert client.delete("sdk", ["item-0", "item-1"]) == 2
        assert client.get("sdk", ["item-0", "item-1"]).missing_ids == ["item-0", "item-1"]
        assert client.describe_collection("sdk").count == N - 2

        with pytest.raises(NotFound) as not_found:
            client.search("no-such-collection", vectors[0])
        assert not_found.value.code.name == "NOT_FOUND" and not_found.value.message
        with pytest.raises(InvalidArgument) as invalid:
            client.upsert("sdk", ["bad"], np.ones(DIM + 3, dtype=np.float32))
        assert isinstance(invalid.value, VectorSearchError) and "dimension" in invalid.value.message.lower()
        with pytest.raises(NotFound):
            client.search_by_id("sdk", "item-0")

        status = client.cluster_status()
        assert status.shards and all(s.healthy for s in status.shards)
        assert sum(s.count for s in client.compact("sdk")) == N - 2
        assert client.drop_collection("sdk") is True
        with pytest.raises(NotFound):
            client.describe_collection("sdk")


def test_bulk_upsert_streams_batches(address: str) -> None:
    rng = np.random.default_rng(3)
    count = 5000
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    ids = [f"bulk-{i}" for i in range(count)]
    metadata = [{"tags": ["bulk"], "attributes": {"i": i}} for i in range(count)]
    with Client(address) as client:
        client.create_collection("bulk", DIM)
        assert client.bulk_upsert("bulk", ids, vectors, metadata, batch_size=700, progress=True) == count
        assert client.describe_collection("bulk").count == count
        got = client.get("bulk", ["bulk-0", f"bulk-{count - 1}"])
        assert [i.metadata.attributes["i"] for i in got.items] == [0, count - 1]
        hits = client.search("bulk", vectors[1234], k=3, ef=200, filter=F.attr("i").ge(1000))
        assert hits[0].id == "bulk-1234"
        client.drop_collection("bulk")


def test_async_client_basics(address: str) -> None:
    ids, vectors, metadata = dataset(seed=11)

    async def main() -> None:
        async with AsyncClient(address, timeout=20.0) as client:
            assert await client.create_collection("sdk_async", DIM, metric="l2") is True
            assert await client.upsert("sdk_async", ids, vectors, metadata) == N
            assert (await client.describe_collection("sdk_async")).count == N
            got = await client.get("sdk_async", ["item-4"])
            assert got.items[0].metadata.tags == ["even"]
            n = np.arange(N)
            query = vectors[10] + 0.01
            hits = await client.search("sdk_async", query, k=4, ef=400, filter=F.tag("even"))
            assert [h.id for h in hits] == [f"item-{i}" for i in brute_force(vectors, query, n % 2 == 0, 4)]
            similar = await client.search_by_id("sdk_async", "item-10", k=3, ef=400)
            assert [h.id for h in similar] == [f"item-{i}" for i in brute_force(vectors, vectors[10], n != 10, 3)]
            assert await client.delete("sdk_async", ["item-10"]) == 1
            assert await client.bulk_upsert("sdk_async", ids[:50], vectors[:50], batch_size=20, progress=False) == 50
            with pytest.raises(NotFound):
                await client.get("missing", ["x"])
            with pytest.raises(InvalidArgument):
                await client.search("sdk_async", np.ones(DIM - 1), k=3)
            assert (await client.cluster_status()).shards
            assert await client.drop_collection("sdk_async") is True

    asyncio.run(main())


def test_filter_builder_flattens_and_negates() -> None:
    f = F.tag("a") & F.tag("b") & F.attr("n").range(1, 5)
    assert len(f.to_proto().all_of.filters) == 3
    g = F.tag("a") | F.uri("x", "y") | ~F.attr("kind").eq("photo")
    message = g.to_proto()
    assert len(message.any_of.filters) == 3
    assert list(message.any_of.filters[1].condition.__getattribute__("in").values)[1].string_value == "y"
    assert (~~F.tag("a")).to_proto() == F.tag("a").to_proto()
    assert F.attr("flag").eq(True).to_proto().condition.eq.WhichOneof("value") == "bool_value"
    assert F.attr("n").range(1, None).to_proto().condition.range.HasField("lte") is False
