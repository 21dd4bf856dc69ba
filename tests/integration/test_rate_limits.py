"""Rate limits on a real server process over a real socket (single node, open mode: every call is
the caller ``open``): the request rate and the item rate refuse with RESOURCE_EXHAUSTED and a
``retry-after-ms`` hint, health is never limited, a client stream is paced, a stream held open
takes the one concurrency slot; the SDK's idempotent calls wait out the hint and succeed, its
non-idempotent ones raise ResourceExhausted with ``retry_after_s``; the refusals are counted in
``vs_rate_limited_total``. That another caller is unaffected is checked on the interceptor with
two bound Principals (tests/unit/test_ratelimit_interceptor.py) until API keys exist."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vectorsearch_client import AsyncClient, Client
from vectorsearch_client.errors import ResourceExhausted

from core.logs import REQUEST_ID_KEY
from core.status import RETRY_AFTER_KEY
from testkit.serverproc import SingleNodeProcess
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

DIM = 4
REQUESTS_PER_S = 5
ITEMS_PER_S = 50


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SingleNodeProcess]:
    server = SingleNodeProcess(
        tmp_path_factory.mktemp("limits") / "node",
        "--rate-limit-requests-per-s",
        str(REQUESTS_PER_S),
        "--rate-limit-items-per-s",
        str(ITEMS_PER_S),
        "--max-concurrent-requests",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
    )
    server.start()
    try:
        with Client(server.address) as client:
            client.create_collection("c", DIM)
        yield server
    finally:
        server.stop()


def refill() -> None:
    time.sleep(1.1)  # both buckets full again (burst: one second of each rate)


def refused(call: Callable[[], Any]) -> tuple[str, dict[str, str]]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    error: Any = err.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    return error.details() or "", dict(error.trailing_metadata())


def upsert_request(n: int, start: int = 0) -> pb.UpsertRequest:
    vectors = np.random.default_rng(start).random((n, DIM), dtype=np.float32)
    request = pb.UpsertRequest(collection="c", vectors=types_pb2.Vectors(dimension=DIM, packed=vectors.tobytes()))
    for i in range(start, start + n):
        request.items.add(id=f"i{i}")
    return request


def refusals(node: SingleNodeProcess) -> dict[str, float]:
    address = Path(str(node.workdir / "server.ready") + ".metrics").read_text()
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    return {m[0]: float(m[1]) for m in re.findall(r'^vs_rate_limited_total\{limit="(\w+)"\} (\S+)$', text, re.M)}


def test_over_the_request_rate_is_refused_with_a_retry_hint_and_health_is_not(node: SingleNodeProcess) -> None:
    stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(node.address))
    refill()
    for _ in range(REQUESTS_PER_S):
        stub.ListCollections(pb.ListCollectionsRequest(), timeout=5)
    details, trailing = refused(lambda: stub.ListCollections(pb.ListCollectionsRequest(), timeout=5))
    assert "rate limit: caller 'open' may make 5 calls a second" in details
    assert 0 < int(trailing[RETRY_AFTER_KEY]) <= 1000 // REQUESTS_PER_S  # when the next token is due
    assert trailing[REQUEST_ID_KEY]
    check = health_pb2_grpc.HealthStub(grpc.insecure_channel(node.address)).Check
    for _ in range(3 * REQUESTS_PER_S):
        assert check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    assert refusals(node)["requests"] >= 1


def test_over_the_item_rate_is_refused_and_does_no_work(node: SingleNodeProcess) -> None:
    stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(node.address))
    refill()
    assert stub.Upsert(upsert_request(60, 1000), timeout=5).upserted == 60  # more than the burst, on a full bucket
    details, trailing = refused(lambda: stub.Upsert(upsert_request(10, 2000), timeout=5))
    assert "may send 50 items a second and this message carries 10" in details
    assert 300 <= int(trailing[RETRY_AFTER_KEY]) <= 400  # (10 + the 10 owed) / 50 a second, less elapsed
    refill()
    got = stub.Get(pb.GetRequest(collection="c", ids=["i2000"]), timeout=5)
    assert list(got.missing_ids) == ["i2000"]  # the refused upsert wrote nothing
    assert refusals(node)["items"] >= 1


def test_a_client_stream_is_paced_not_refused(node: SingleNodeProcess) -> None:
    refill()
    with Client(node.address) as client:
        ids = [f"s{i}" for i in range(100)]
        vectors = np.random.default_rng(3).random((100, DIM), dtype=np.float32)
        started = time.monotonic()
        assert client.bulk_upsert("c", ids, vectors, batch_size=25, progress=False, timeout=30) == 100
        assert time.monotonic() - started >= 0.8  # 50 at once, then 50 a second


def test_sdk_idempotent_calls_wait_out_the_hint_and_succeed(node: SingleNodeProcess) -> None:
    refill()
    before = refusals(node).get("requests", 0.0)
    with Client(node.address, timeout=10) as client:
        started = time.monotonic()
        for _ in range(3 * REQUESTS_PER_S):
            assert [c.name for c in client.list_collections()] == ["c"]
        assert time.monotonic() - started >= 1.5  # 5 at once, then 5 a second: it waited, it did not fail
    assert refusals(node)["requests"] > before  # the server did refuse, the client retried

    async def run() -> None:
        async with AsyncClient(node.address, timeout=10) as client:
            for _ in range(2 * REQUESTS_PER_S):
                assert (await client.describe_collection("c")).name == "c"

    refill()
    asyncio.run(run())


def test_sdk_calls_give_up_when_the_hint_is_past_their_deadline(node: SingleNodeProcess) -> None:
    refill()
    with Client(node.address, timeout=0.1) as client:
        with pytest.raises(ResourceExhausted) as err:
            for _ in range(REQUESTS_PER_S + 1):
                client.list_collections()
        assert err.value.retry_after_s is not None and err.value.retry_after_s > 0


def test_sdk_non_idempotent_calls_raise_resource_exhausted_with_the_hint(node: SingleNodeProcess) -> None:
    stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(node.address))
    with Client(node.address, timeout=10) as client:
        for _ in range(5):  # the bucket refills meanwhile on a slow machine: empty it and try again
            with pytest.raises(grpc.RpcError):
                for _ in range(REQUESTS_PER_S + 1):
                    stub.ListCollections(pb.ListCollectionsRequest(), timeout=5)
            try:
                client.compact("c")
            except ResourceExhausted as exc:
                assert exc.retry_after_s is not None and 0 < exc.retry_after_s <= 1 / REQUESTS_PER_S
                assert "may make 5 calls a second" in exc.message
                return
        pytest.fail("compact was never refused")


def test_a_stream_held_open_takes_the_one_concurrency_slot(node: SingleNodeProcess) -> None:
    channel = grpc.insecure_channel(node.address)
    stub = pb_grpc.SearchServiceStub(channel)
    release = threading.Event()

    def messages() -> Iterator[pb.UpsertRequest]:
        yield upsert_request(1, 3000)
        release.wait(20)

    refill()
    before = refusals(node).get("concurrency", 0.0)
    with futures.ThreadPoolExecutor(1) as pool:
        stream = pool.submit(lambda: stub.UpsertStream(messages(), timeout=30))
        deadline = time.monotonic() + 10
        while True:  # until the stream is open on the server
            try:
                stub.ListCollections(pb.ListCollectionsRequest(), timeout=5)
            except grpc.RpcError as rpc_error:
                exc: Any = rpc_error
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "1 calls are in flight" in (exc.details() or "")
                assert int(dict(exc.trailing_metadata())[RETRY_AFTER_KEY]) > 0
                break
            assert time.monotonic() < deadline, "the stream never took the slot"
            time.sleep(0.3)
        check = health_pb2_grpc.HealthStub(channel).Check
        assert check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        release.set()
        assert stream.result(10).upserted == 1
    refill()
    stub.ListCollections(pb.ListCollectionsRequest(), timeout=5)  # the slot was given back
    assert refusals(node)["concurrency"] > before
