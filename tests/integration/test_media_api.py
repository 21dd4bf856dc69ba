"""Search and ingestion by image and text through the public gRPC API, end to end: a real
single-node server (``python -m server --triton-url``) in front of a real tritonserver serving
the random CLIP (``clipmodel``). The random weights carry no meaning, so the checks are the ones
that hold for any model: an image finds itself first, a text finds itself first, per-item
statuses, content-id idempotency, model identity, bad input, Triton down and back."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from clipmodel import triton_process
from clipmodel.identity import ModelIdentity
from testkit.clipdata import pictures
from testkit.serverproc import SingleNodeProcess
from tests.conftest import ClipRepo
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

OK, INVALID_ARGUMENT, NOT_FOUND = 0, 3, 5


@dataclass
class Stack:
    root: Path
    repo: Path
    identity: ModelIdentity
    triton: triton_process.TritonProcess
    server: SingleNodeProcess
    stub: pb_grpc.SearchServiceStub
    files: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, clip_repo: ClipRepo) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("media")
    repo, identity = clip_repo.repo, clip_repo.identity
    triton = triton_process.TritonProcess(repo, root / "triton")
    triton.start(timeout=120)
    files = root / "files"
    files.mkdir()
    server = SingleNodeProcess(
        root / "node", "--triton-url", triton.grpc_url, "--allow-file-root", str(files), "--request-timeout-s", "5"
    )
    stack: Stack | None = None
    try:
        stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(server.start()))
        stack = Stack(root, repo, identity, triton, server, stub, files)
        yield stack
    finally:
        server.stop()
        (stack.triton if stack is not None else triton).close()  # the one running now (a test restarts it)


def create(stack: Stack, name: str, embedding_model: str = "") -> None:
    spec = types_pb2.CollectionSpec(name=name, dimension=stack.identity.dim, metric=types_pb2.METRIC_COSINE)
    stack.stub.CreateCollection(pb.CreateCollectionRequest(spec=spec, embedding_model=embedding_model))


def content_id(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def ingest_images(stack: Stack, collection: str, batches: list[list[pb.ImageItem]]) -> pb.IngestResponse:
    requests = [pb.IngestImagesRequest(collection=collection if i == 0 else "", items=b) for i, b in enumerate(batches)]
    response: pb.IngestResponse = stack.stub.IngestImages(iter(requests), timeout=60)
    return response


def code_of(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()
    raise AssertionError("the call succeeded")


def test_the_served_model_is_described(stack: Stack) -> None:
    served = stack.stub.DescribeEmbeddingModel(pb.DescribeEmbeddingModelRequest(), timeout=30)
    assert served.embedding_model == stack.identity.id and served.dimension == stack.identity.dim


def test_images_in_by_stream_and_each_finds_itself_first(stack: Stack) -> None:
    create(stack, "photos")
    images = pictures(10, seed=1)
    corrupt = images[3][: len(images[3]) // 3]  # a truncated JPEG: fails alone
    first = [pb.ImageItem(data=d, metadata=pb.Metadata(tags=["first"])) for d in images[:5]]
    first[3] = pb.ImageItem(data=corrupt)
    second = [pb.ImageItem(data=d) for d in images[5:]]
    second.append(pb.ImageItem(id="named", data=images[0], metadata=pb.Metadata(uri="s3://bucket/a.jpg")))
    reply = ingest_images(stack, "photos", [first, second])
    assert [s.code for s in reply.items] == [OK, OK, OK, INVALID_ARGUMENT, OK, OK, OK, OK, OK, OK, OK]
    assert "image" in reply.items[3].message
    assert reply.ingested == 10 and reply.failed == 1 and reply.unchanged == 0
    assert reply.embedding_model == stack.identity.id
    assert [s.id for s in reply.items[:3]] == [content_id(d) for d in images[:3]]
    described = stack.stub.DescribeCollection(pb.DescribeCollectionRequest(collection="photos"))
    assert described.count == 10 and described.embedding_model == stack.identity.id

    query = pb.SearchByImageRequest(collection="photos", images=[images[1], images[7]], k=3, include_metadata=True)
    results = stack.stub.SearchByImage(query, timeout=30).results
    assert results[0].hits[0].id == content_id(images[1]) and results[0].hits[0].distance < 1e-4
    assert list(results[0].hits[0].metadata.tags) == ["first"]
    assert results[1].hits[0].id == content_id(images[7])
    got = stack.stub.Get(pb.GetRequest(collection="photos", ids=["named"]))
    assert got.items[0].metadata.uri == "s3://bucket/a.jpg"
    # a filter applies as in vector search
    tagged = pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value="first")))
    filtered = stack.stub.SearchByImage(
        pb.SearchByImageRequest(collection="photos", images=[images[7]], k=10, filter=tagged), timeout=30
    )
    assert {h.id for h in filtered.results[0].hits} == {content_id(images[i]) for i in (0, 1, 2, 4)}


def test_a_re_uploaded_image_is_one_item_and_is_not_embedded_again(stack: Stack) -> None:
    create(stack, "again")
    images = pictures(4, seed=2)
    reply = ingest_images(stack, "again", [[pb.ImageItem(data=d) for d in images]])
    assert reply.ingested == 4
    again = ingest_images(stack, "again", [[pb.ImageItem(data=d) for d in images]])
    assert again.unchanged == 4 and again.ingested == 0 and all(s.unchanged for s in again.items)
    # the same image with new metadata: written again (from its stored vector), still one item
    retagged = ingest_images(stack, "again", [[pb.ImageItem(data=images[0], metadata=pb.Metadata(tags=["new"]))]])
    assert retagged.ingested == 1
    described = stack.stub.DescribeCollection(pb.DescribeCollectionRequest(collection="again"))
    assert described.count == 4
    got = stack.stub.Get(pb.GetRequest(collection="again", ids=[content_id(images[0])]))
    assert list(got.items[0].metadata.tags) == ["new"]


def test_images_by_file_uri_only_under_an_allowed_root(stack: Stack) -> None:
    create(stack, "files")
    (image,) = pictures(1, seed=3)
    inside = stack.files / "cat.jpg"
    inside.write_bytes(image)
    outside = stack.root / "secret.jpg"
    outside.write_bytes(image)
    reply = ingest_images(
        stack,
        "files",
        [
            [
                pb.ImageItem(uri=inside.as_uri()),
                pb.ImageItem(uri=outside.as_uri()),
                pb.ImageItem(uri=(stack.files / "missing.jpg").as_uri()),
                pb.ImageItem(uri="ftp://example.invalid/x.jpg"),
            ]
        ],
    )
    assert [s.code for s in reply.items] == [OK, INVALID_ARGUMENT, NOT_FOUND, INVALID_ARGUMENT]
    assert "outside" in reply.items[1].message
    got = stack.stub.Get(pb.GetRequest(collection="files", ids=[content_id(image)]))
    assert got.items[0].metadata.uri == inside.as_uri()  # the URI becomes the item's uri


def test_texts_in_and_each_text_finds_itself_first(stack: Stack) -> None:
    create(stack, "captions")
    texts = ["a red bicycle by a wall", "a cat asleep on a sofa", "rockets at dawn", "two dogs in the snow"]
    items = [pb.TextItem(text=t, metadata=pb.Metadata(tags=[f"t{i}"])) for i, t in enumerate(texts)]
    items.insert(2, pb.TextItem(text=""))  # empty: fails alone
    reply = stack.stub.IngestTexts(iter([pb.IngestTextsRequest(collection="captions", items=items)]), timeout=60)
    assert [s.code for s in reply.items] == [OK, OK, INVALID_ARGUMENT, OK, OK]
    results = stack.stub.SearchByText(
        pb.SearchByTextRequest(collection="captions", texts=texts, k=2, include_metadata=True), timeout=30
    ).results
    for i, text in enumerate(texts):
        assert results[i].hits[0].id == content_id(text.encode()), text
        assert list(results[i].hits[0].metadata.tags) == [f"t{i}"]


def test_bad_queries_are_refused_before_any_work(stack: Stack) -> None:
    create(stack, "bad")
    ingest_images(stack, "bad", [[pb.ImageItem(data=d) for d in pictures(2, seed=4)]])
    stub = stack.stub
    assert code_of(lambda: stub.SearchByText(pb.SearchByTextRequest(collection="bad", k=3))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert code_of(lambda: stub.SearchByText(pb.SearchByTextRequest(collection="bad", texts=["x"], k=0))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    huge = "x" * (16 * 1024 + 1)
    assert code_of(lambda: stub.SearchByText(pb.SearchByTextRequest(collection="bad", texts=[huge], k=3))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert code_of(lambda: stub.SearchByImage(pb.SearchByImageRequest(collection="bad", images=[b"GIF89a"], k=3))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert code_of(lambda: stub.SearchByText(pb.SearchByTextRequest(collection="nope", texts=["x"], k=3))) == (
        grpc.StatusCode.NOT_FOUND
    )
    unnamed = iter([pb.IngestImagesRequest(items=[pb.ImageItem(data=b"x")])])
    assert code_of(lambda: stub.IngestImages(unnamed)) == grpc.StatusCode.INVALID_ARGUMENT


def test_another_model_is_refused(stack: Stack) -> None:
    other = "clip-other@sha256:" + "0" * 64
    create(stack, "elsewhere", embedding_model=other)
    described = stack.stub.DescribeCollection(pb.DescribeCollectionRequest(collection="elsewhere"))
    assert described.embedding_model == other
    for call in (
        lambda: stack.stub.SearchByText(pb.SearchByTextRequest(collection="elsewhere", texts=["x"], k=1)),
        lambda: stack.stub.IngestTexts(
            iter([pb.IngestTextsRequest(collection="elsewhere", items=[pb.TextItem(text="x")])])
        ),
    ):
        try:
            call()
            raise AssertionError("a collection of another model was served")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION and stack.identity.id in (exc.details() or "")
    # a collection with no model recorded cannot be searched by text yet
    create(stack, "vectors-only")
    assert (
        code_of(lambda: stack.stub.SearchByText(pb.SearchByTextRequest(collection="vectors-only", texts=["x"], k=1)))
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    bad_model = types_pb2.CollectionSpec(name="badmodel", dimension=4, metric=types_pb2.METRIC_COSINE)
    assert (
        code_of(
            lambda: stack.stub.CreateCollection(pb.CreateCollectionRequest(spec=bad_model, embedding_model="no digest"))
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_triton_down_is_unavailable_within_the_deadline_and_then_recovers(stack: Stack) -> None:
    """Last in this module: it restarts the module's Triton."""
    create(stack, "outage")
    ingest_images(stack, "outage", [[pb.ImageItem(data=d) for d in pictures(2, seed=5)]])
    query = pb.SearchByTextRequest(collection="outage", texts=["anything at all"], k=1)
    assert len(stack.stub.SearchByText(query, timeout=30).results[0].hits) == 1
    ports = stack.triton.ports
    stack.triton.stop()
    started = time.monotonic()
    try:
        stack.stub.SearchByText(pb.SearchByTextRequest(collection="outage", texts=["a new text"], k=1), timeout=4)
        raise AssertionError("a text was embedded with Triton down")
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED or "Triton" in (exc.details() or ""), exc.details()
    assert time.monotonic() - started < 5.5
    down = ingest_images(stack, "outage", [[pb.ImageItem(data=d) for d in pictures(1, seed=6)]])
    assert down.failed == 1 and down.items[0].code == grpc.StatusCode.UNAVAILABLE.value[0]
    stack.triton = triton_process.TritonProcess(stack.repo, stack.root / "triton-again", ports=ports)
    stack.triton.start(timeout=120)
    deadline = time.monotonic() + 30
    while True:  # the server reconnects by itself
        try:
            reply = stack.stub.SearchByText(pb.SearchByTextRequest(collection="outage", texts=["a new text"], k=1))
            assert len(reply.results[0].hits) == 1
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, exc
            time.sleep(0.5)
