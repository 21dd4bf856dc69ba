"""The Python SDK (clients/python, import package ``vectorsearch_client``) against a real
single-node server process: collections, upsert with metadata, get, filtered search checked
against brute force, search_by_id, delete, error codes mapped to exception classes, bulk_upsert,
and the asyncio client. Against a server in front of a real tritonserver serving the seeded
random CLIP: the embedding model, ingestion of images and texts (per-item statuses, content ids),
search by image (bytes and path) and by text, each finding itself first, explain, and the exact
error of bad input. Against a server over two shard processes: the typed admin results of
cluster status, add, rebalance (dry run and real), drain, remove and abort.

The SDK is imported as installed: ``scripts/setup.sh`` runs ``pip install --no-build-isolation
-e clients/python``, whose build hook generates the stubs into ``vectorsearch_client._proto``
(by hand: the same command in the activated .venv)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from vectorsearch_client import (
    AlreadyExists,
    AsyncClient,
    Client,
    ClusterStatus,
    F,
    FailedPrecondition,
    ImageItem,
    InvalidArgument,
    Metadata,
    NotFound,
    RebalanceStatus,
    TextItem,
    Unavailable,
    VectorSearchError,
)

from clipmodel import triton_process
from clipmodel.identity import ModelIdentity
from testkit.clipdata import pictures
from testkit.serverproc import SingleNodeProcess
from testkit.shardproc import ShardProcess
from testkit.truth import exact_top_k
from tests.conftest import ClipRepo

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


def test_search_batch_answers_each_query_as_search_does(address: str) -> None:
    ids, vectors, metadata = dataset(seed=5)
    queries = np.random.default_rng(9).standard_normal((7, DIM)).astype(np.float32)
    n = np.arange(N)
    with Client(address, timeout=20.0) as client:
        client.create_collection("sdk_batch", DIM, metric="l2")
        client.upsert("sdk_batch", ids, vectors, metadata)
        for flt, mask in ((None, n >= 0), (F.tag("odd"), n % 2 == 1)):
            batch = client.search_batch("sdk_batch", queries, k=4, ef=400, filter=flt, include_metadata=False)
            assert len(batch) == len(queries)
            for query, hits in zip(queries, batch, strict=True):
                assert not hits.partial and all(h.metadata is None for h in hits)
                assert [h.id for h in hits] == [f"item-{i}" for i in brute_force(vectors, query, mask, 4)]
                one = client.search("sdk_batch", query, k=4, ef=400, filter=flt, include_metadata=False)
                assert [(h.id, h.distance) for h in hits] == [(h.id, h.distance) for h in one]
        (single,) = client.search_batch("sdk_batch", vectors[3], k=1)
        assert single[0].id == "item-3" and single[0].metadata == Metadata(**metadata[3])  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            client.search_batch("sdk_batch", np.ones((2, DIM + 1), dtype=np.float32))
        with pytest.raises(ValueError):
            client.search_batch("sdk_batch", np.ones((0, DIM), dtype=np.float32))

        async def batched() -> list[list[str]]:
            async with AsyncClient(address, timeout=20.0) as aclient:
                found = await aclient.search_batch("sdk_batch", queries[:2], k=3, ef=400)
                return [[h.id for h in hits] for hits in found]

        assert asyncio.run(batched()) == [
            [f"item-{i}" for i in brute_force(vectors, q, n >= 0, 3)] for q in queries[:2]
        ]
        client.drop_collection("sdk_batch")


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


def content_id(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


# ---------------------------------------------------------------------------------- with Triton (CLIP)


@dataclass(frozen=True)
class Media:
    address: str
    identity: ModelIdentity
    files: Path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, clip_repo: ClipRepo) -> Iterator[Media]:
    """A single-node server in front of a tritonserver serving the seeded random CLIP."""
    root = tmp_path_factory.mktemp("sdk-media")
    triton = triton_process.TritonProcess(clip_repo.repo, root / "triton")
    triton.start(timeout=120)
    server = SingleNodeProcess(root / "node", "--triton-url", triton.grpc_url, "--request-timeout-s", "10")
    try:
        files = root / "files"
        files.mkdir()
        yield Media(server.start(timeout=60), clip_repo.identity, files)
    finally:
        server.stop()
        triton.close()


def test_images_and_texts_in_and_each_finds_itself_first(media: Media) -> None:
    *images, extra = pictures(9, seed=21)
    corrupt = images[5][: len(images[5]) // 3]  # a truncated JPEG: fails alone
    path = media.files / "extra.jpg"
    path.write_bytes(extra)
    with Client(media.address, timeout=30.0) as client:
        served = client.describe_embedding_model()
        assert (served.embedding_model, served.dimension) == (media.identity.id, media.identity.dim)
        assert client.create_collection("media", served.dimension) is True
        items = [
            ImageItem(data=d, metadata=Metadata(uri=f"mem://{i}", tags=["even" if i % 2 == 0 else "odd"]))
            for i, d in enumerate(images)
        ]
        items[5] = ImageItem(data=corrupt)
        result = client.ingest_images("media", items, batch_size=3)
        codes = [s.code for s in result.items]
        assert codes == [grpc.StatusCode.OK] * 5 + [grpc.StatusCode.INVALID_ARGUMENT] + [grpc.StatusCode.OK] * 2
        assert "image" in result.items[5].message and not result.items[5].ok
        assert (result.ingested, result.unchanged, result.failed) == (7, 0, 1)
        assert result.embedding_model == media.identity.id
        assert [s.id for s in result.items[:5]] == [content_id(d) for d in images[:5]]
        again = client.ingest_images("media", items[:2])  # the same bytes and metadata: already stored
        assert again.unchanged == 2 and all(s.ok and s.unchanged for s in again.items)
        by_path = client.ingest_images("media", [path])  # a path: the client sends its bytes
        assert by_path.ingested == 1 and by_path.items[0].id == content_id(extra)

        got = client.get("media", [content_id(images[1]), content_id(corrupt)])
        assert got.missing_ids == [content_id(corrupt)] and got.items[0].metadata.tags == ["odd"]

        for query, want in ((images[3], images[3]), (path, extra)):  # bytes, and a path the client reads
            hits = client.search("media", image=query, k=3)
            assert hits[0].id == content_id(want) and hits[0].distance < 1e-4 and not hits.partial
            assert hits.explain is None
        hits = client.search("media", image=images[7], k=10, filter=F.tag("even"), explain=True)
        assert {h.id for h in hits} == {content_id(images[i]) for i in (0, 2, 4, 6)}
        assert hits.explain is not None and hits.explain.matched == 4
        assert [s.matched for s in hits.explain.shards] == [4] and hits.explain.shards[0].plan == "exact"

        texts = ["a red bicycle by a wall", "a cat asleep on a sofa", "the moon over the sea"]
        client.create_collection("captions", served.dimension)
        typed = [TextItem(t, metadata={"tags": ["caption"]}) for t in texts[:2]]
        written = client.ingest_texts("captions", [*typed, texts[2]])
        assert written.ingested == 3 and [s.id for s in written.items] == [content_id(t.encode()) for t in texts]
        for text in texts:
            found = client.search("captions", text=text, k=3)
            assert found[0].id == content_id(text.encode()) and found[0].distance < 1e-4
        assert client.search("captions", text=texts[0], k=3, filter=F.tag("caption"))[0].metadata is not None


def test_bad_media_input_is_the_exact_error(media: Media) -> None:
    with Client(media.address, timeout=30.0) as client:
        client.create_collection("no-model", media.identity.dim)
        with pytest.raises(FailedPrecondition) as no_model:  # nothing ingested, no model recorded
            client.search("no-model", text="a cat", k=3)
        assert "no embedding model" in no_model.value.message
        client.create_collection("bad-input", media.identity.dim, embedding_model=media.identity.id)
        with pytest.raises(InvalidArgument) as empty_text:
            client.search("bad-input", text="", k=3)
        assert empty_text.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(InvalidArgument) as not_an_image:
            client.search("bad-input", image=b"not an image at all", k=3)
        assert "image" in not_an_image.value.message
        with pytest.raises(InvalidArgument):
            client.search("bad-input", text="x" * (16 * 1024 + 1), k=3)
        with pytest.raises(NotFound):
            client.search("no-such-collection", text="a cat", k=3)
        with pytest.raises(NotFound):
            client.ingest_images("no-such-collection", [pictures(1, seed=5)[0]])
        client.create_collection("other-model", media.identity.dim, embedding_model="clip-other@sha256:" + "0" * 64)
        with pytest.raises(FailedPrecondition) as mismatch:
            client.search("other-model", text="a cat", k=3)
        assert media.identity.id in mismatch.value.message
        with pytest.raises(ValueError):
            client.search("bad-input", text="a", image=b"b")  # exactly one query
        with pytest.raises(ValueError):
            client.ingest_images("bad-input", [ImageItem()])  # neither data nor uri


def test_async_client_media(media: Media) -> None:
    images = pictures(3, seed=31)

    async def main() -> None:
        async with AsyncClient(media.address, timeout=30.0) as client:
            await client.wait_ready(10)
            served = await client.describe_embedding_model()
            assert served.embedding_model == media.identity.id
            await client.create_collection("media-async", served.dimension)
            result = await client.ingest_images("media-async", images)
            assert result.ingested == 3
            hits = await client.search("media-async", image=images[1], k=2, explain=True)
            assert hits[0].id == content_id(images[1]) and hits.explain is not None
            texts = await client.ingest_texts("media-async", ["a tree"])
            assert (await client.search("media-async", text="a tree", k=1))[0].id == texts.items[0].id
            with pytest.raises(InvalidArgument):
                await client.search("media-async", image=b"garbage", k=1)

    asyncio.run(main())


def test_wait_ready_without_a_server_is_unavailable() -> None:
    with Client("127.0.0.1:1", timeout=5.0) as client, pytest.raises(Unavailable):
        client.wait_ready(0.5)


# ---------------------------------------------------------------------------------- admin, two shards


def wait_finished(client: Client, rebalance_id: int) -> RebalanceStatus:
    deadline = time.monotonic() + 120
    while True:
        status = client.rebalance_status(rebalance_id)
        assert status is not None
        if status.finished or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_admin_results_are_typed(tmp_path: Path) -> None:
    shards = [ShardProcess(tmp_path / f"s{i}") for i in range(2)]
    server: SingleNodeProcess | None = None
    try:
        for shard in shards:
            shard.start()
        server = SingleNodeProcess(
            tmp_path / "node",
            "--database-url",
            f"sqlite:///{tmp_path / 'meta.db'}",
            f"--register-shard=s0={shards[0].address}",
            local_shard=False,
        )
        with Client(server.start(timeout=60), timeout=30.0) as client:
            client.create_collection("c", DIM, metric="l2")
            ids, vectors, metadata = dataset(seed=5)
            client.upsert("c", ids, vectors, metadata)
            status = client.cluster_status()
            assert isinstance(status, ClusterStatus) and status.rebalance is None and status.ring_version >= 1
            assert [(s.shard_id, s.state, s.healthy, s.items) for s in status.shards] == [("s0", "active", True, N)]
            assert client.rebalance_status() is None
            with pytest.raises(FailedPrecondition):
                client.abort_rebalance()

            assert client.add_shard("s1", shards[1].address, no_rebalance=True) is None
            assert {s.shard_id: s.state for s in client.cluster_status().shards} == {"s0": "active", "s1": "joining"}
            plan = client.rebalance(dry_run=True)
            assert plan.rebalance is None and [(m.source, m.target) for m in plan.moves] == [("s0", "s1")]
            assert 0 < plan.moves[0].total_items == sum(plan.moves[0].items.values()) < N
            started = client.rebalance().rebalance
            assert started is not None and started.kind == "rebalance" and not started.finished
            done = wait_finished(client, started.rebalance_id)
            assert done.state == "done" and done.to_ring_version > done.from_ring_version
            assert done.moves and all(m.state == "done" for m in done.moves)

            drained = client.drain_shard("s1")
            assert drained is not None and (drained.kind, drained.shard_id) == ("drain", "s1")
            assert wait_finished(client, drained.rebalance_id).state == "done"
            client.remove_shard("s1")
            with pytest.raises(NotFound):
                client.remove_shard("s1")
            assert [s.shard_id for s in client.cluster_status().shards] == ["s0"]
            assert client.describe_collection("c").count == N
            assert sum(s.count for s in client.compact("c")) == N
    finally:
        if server is not None:
            server.stop()
        for shard in shards:
            shard.kill()
