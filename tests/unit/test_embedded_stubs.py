"""server/embedded.py's in-process stubs: a servicer's abort reaches the SDK as the exception
the gRPC client raises (retry hint included), requests go through as they are (or through their
bytes when the caller's message class differs), client streams are iterated, the deadline is
the call's, and a directory lock is exclusive until released."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from vectorsearch_client import Client, NotFound, ResourceExhausted
from vectorsearch_client import _convert as cv

from core import errors
from core.dirlock import DirectoryLock, DirectoryLocked
from core.status import handled
from server.embedded import SEARCH_SERVICE, LocalContext, LocalRpcError, LocalStub
from vsproto.v1 import search_service_pb2 as pb


class FakeServicer:
    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.remaining: float | None = None

    @handled
    def ListCollections(self, request: Any, context: Any) -> Any:
        self.seen.append(request)
        self.remaining = context.time_remaining()
        return pb.ListCollectionsResponse()

    @handled
    def DescribeCollection(self, request: Any, context: Any) -> Any:
        raise errors.NotFound(f"collection {request.collection!r} does not exist")

    @handled
    def Get(self, request: Any, context: Any) -> Any:
        raise errors.ResourceExhausted("busy", retry_after_s=0.25)

    @handled
    def UpsertStream(self, requests: Any, context: Any) -> Any:
        return pb.UpsertResponse(upserted=sum(len(r.items) for r in requests))

    def __getattr__(self, name: str) -> Any:
        return lambda request, context: None


def client_over(servicer: FakeServicer) -> Client:
    return Client.from_stubs(search=LocalStub(servicer, SEARCH_SERVICE), timeout=5.0, max_attempts=1)


def test_domain_errors_become_the_sdk_exceptions() -> None:
    client = client_over(FakeServicer())
    with pytest.raises(NotFound, match="'x' does not exist"):
        client.describe_collection("x")
    with pytest.raises(ResourceExhausted) as busy:
        client.get("c", ["a"])
    assert busy.value.retry_after_s == pytest.approx(0.25)


def test_requests_pass_as_they_are_and_the_deadline_is_the_calls() -> None:
    servicer = FakeServicer()
    stub = LocalStub(servicer, SEARCH_SERVICE)
    request = pb.ListCollectionsRequest()
    stub.ListCollections(request, timeout=3.0)
    assert servicer.seen[-1] is request
    assert servicer.remaining is not None and 2.0 < servicer.remaining <= 3.0

    class Foreign:  # the same message from separately generated stubs
        def SerializeToString(self) -> bytes:
            return request.SerializeToString()

    stub.ListCollections(Foreign())
    assert type(servicer.seen[-1]) is pb.ListCollectionsRequest


def test_client_streams_are_iterated() -> None:
    client = client_over(FakeServicer())
    vectors = [[1.0, 2.0]] * 5
    assert client.bulk_upsert("c", [str(i) for i in range(5)], vectors, batch_size=2, progress=False) == 5


def test_context() -> None:
    context = LocalContext(None)
    assert context.time_remaining() is None and context.is_active()
    assert not LocalContext(-1.0).is_active()
    called: list[int] = []
    context.add_callback(lambda: called.append(1))
    context.set_trailing_metadata((("retry-after-ms", "10"),))
    with pytest.raises(LocalRpcError) as aborted:
        context.abort(grpc.StatusCode.NOT_FOUND, "gone")
    assert (aborted.value.code(), aborted.value.details()) == (grpc.StatusCode.NOT_FOUND, "gone")
    assert aborted.value.trailing_metadata() == (("retry-after-ms", "10"),)
    context.end()
    assert called == [1]
    assert SEARCH_SERVICE.full_name == cv.SEARCH


def test_the_directory_lock_is_exclusive_until_released(tmp_path: Path) -> None:
    first = DirectoryLock(tmp_path)
    with pytest.raises(DirectoryLocked, match="pid"):
        DirectoryLock(tmp_path, "the database")
    first.release()
    first.release()
    DirectoryLock(tmp_path).release()
