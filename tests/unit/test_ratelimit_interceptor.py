"""server/ratelimit.py's interceptor on an in-process gRPC server (real calls over a socket), with
two callers bound as Principals by a stand-in for the API-key interceptor: one caller over its
limit gets RESOURCE_EXHAUSTED with ``retry-after-ms`` while the other is unaffected; a refused
call does no work; health is never limited; client streams are paced; the concurrency cap.
(The cross-key test against a real server process comes with the API-key interceptor.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from core import logs, metrics, principal
from core.principal import Principal, Role
from core.status import RETRY_AFTER_KEY, handled
from server.ratelimit import RateLimitInterceptor, RateLimits
from vsproto.v1 import search_service_pb2 as pb

SERVICE = "vectorsearch.v1.SearchService"
KEY = "x-test-key"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Binder(grpc.ServerInterceptor):
    """What the API-key interceptor will do: bind the caller's Principal around the handler."""

    def __init__(self, principals: dict[str, Principal]) -> None:
        self.principals = principals

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        if handler is None or (handler.unary_unary is None and handler.stream_unary is None):
            return handler
        metadata: Any = details.invocation_metadata or ()
        key = dict(metadata).get(KEY, "")
        who = self.principals.get(key, principal.OPEN)

        def bound(behavior: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
            def call(request: Any, context: Any) -> Any:
                with principal.bind(who):
                    return behavior(request, context)

            return call

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                bound(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_unary_rpc_method_handler(
            bound(handler.stream_unary), handler.request_deserializer, handler.response_serializer
        )


class Servicer:
    def __init__(self) -> None:
        self.served: list[int] = []  # items of each request that reached the servicer
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()

    @handled
    def Upsert(self, request: pb.UpsertRequest, context: Any) -> pb.UpsertResponse:
        self.entered.set()
        self.hold.wait(10)
        self.served.append(len(request.items))
        return pb.UpsertResponse(upserted=len(request.items))

    @handled
    def UpsertStream(self, requests: Iterator[pb.UpsertRequest], context: Any) -> pb.UpsertResponse:
        total = 0
        for request in requests:
            self.served.append(len(request.items))
            total += len(request.items)
        return pb.UpsertResponse(upserted=total)


ALICE = Principal("alice", Role.WRITE, requests_per_s=1.0, items_per_s=10.0)
BOB = Principal("bob", Role.WRITE, requests_per_s=1.0, items_per_s=10.0)
CAROL = Principal("carol", Role.WRITE, items_per_s=10.0)  # requests: the server's default (none)


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[grpc.Channel, Servicer]]]:
    servers: list[grpc.Server] = []

    def start(limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> tuple[grpc.Channel, Servicer]:
        servicer = Servicer()
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8),
            interceptors=[
                logs.RequestInterceptor(),
                Binder({"alice": ALICE, "bob": BOB, "carol": CAROL}),
                RateLimitInterceptor(limits, clock=clock),
            ],
        )
        handlers = {
            "Upsert": grpc.unary_unary_rpc_method_handler(
                servicer.Upsert, pb.UpsertRequest.FromString, pb.UpsertResponse.SerializeToString
            ),
            "UpsertStream": grpc.stream_unary_rpc_method_handler(
                servicer.UpsertStream, pb.UpsertRequest.FromString, pb.UpsertResponse.SerializeToString
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return grpc.insecure_channel(f"127.0.0.1:{port}"), servicer

    yield start
    for server in servers:
        server.stop(None)


def upsert_request(n: int) -> pb.UpsertRequest:
    request = pb.UpsertRequest(collection="c")
    for i in range(n):
        request.items.add(id=str(i))
    return request


def upsert(channel: grpc.Channel, n: int, key: str = "", timeout: float = 5.0) -> Any:
    method = channel.unary_unary(f"/{SERVICE}/Upsert", pb.UpsertRequest.SerializeToString, pb.UpsertResponse.FromString)
    return method(upsert_request(n), metadata=((KEY, key),) if key else None, timeout=timeout)


def refused(call: Callable[[], Any]) -> tuple[str, dict[str, str]]:
    """The details and trailing metadata of a call that must end RESOURCE_EXHAUSTED."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    error: Any = err.value
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    return error.details() or "", dict(error.trailing_metadata())


def refusals(limit: str) -> float:
    return float(metrics.RATE_LIMITED.labels(limit)._value.get())


def test_a_caller_over_its_request_rate_is_refused_with_a_hint_while_another_is_not(serve: Any) -> None:
    clock = FakeClock()
    channel, servicer = serve(RateLimits(), clock)
    before = refusals("requests")
    assert upsert(channel, 1, "alice").upserted == 1
    details, trailing = refused(lambda: upsert(channel, 1, "alice"))
    assert "'alice'" in details and "1 calls a second" in details
    assert trailing[RETRY_AFTER_KEY] == "1000"  # the next token is due in 1 s
    assert trailing[logs.REQUEST_ID_KEY]  # the refusal carries the call's request id
    assert upsert(channel, 1, "bob").upserted == 1  # bob has a bucket of his own
    assert upsert(channel, 1).upserted == 1  # so has the open mode: no server default, unlimited
    assert servicer.served == [1, 1, 1]  # the refused call did no work
    assert refusals("requests") == before + 1
    clock.now += 0.4
    assert refused(lambda: upsert(channel, 1, "alice"))[1][RETRY_AFTER_KEY] == "600"
    clock.now += 0.6
    assert upsert(channel, 1, "alice").upserted == 1


def test_a_caller_over_its_item_rate_is_refused_with_a_hint(serve: Any) -> None:
    clock = FakeClock()
    channel, servicer = serve(RateLimits(), clock)
    before = refusals("items")
    assert upsert(channel, 10, "carol").upserted == 10  # the whole burst
    details, trailing = refused(lambda: upsert(channel, 5, "carol"))
    assert "'carol' may send 10 items a second" in details and "carries 5" in details
    assert trailing[RETRY_AFTER_KEY] == "500"
    assert upsert(channel, 3, "bob").upserted == 3  # bob's items are his own
    clock.now += 1.0
    assert upsert(channel, 20, "carol").upserted == 20  # more than the burst: passes on a full bucket
    assert refused(lambda: upsert(channel, 1, "carol"))[1][RETRY_AFTER_KEY] == "1100"  # and is paid for
    assert servicer.served == [10, 3, 20]
    assert refusals("items") == before + 2


def test_the_server_defaults_limit_the_open_mode_and_health_is_never_limited(serve: Any) -> None:
    clock = FakeClock()
    channel, _ = serve(RateLimits(requests_per_s=2.0, burst_s=1.0), clock)
    assert upsert(channel, 1).upserted == 1 and upsert(channel, 1).upserted == 1
    details, trailing = refused(lambda: upsert(channel, 1))
    assert "'open'" in details and trailing[RETRY_AFTER_KEY] == "500"
    check = health_pb2_grpc.HealthStub(channel).Check
    for _ in range(20):
        assert (
            check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        )


def test_the_concurrency_cap_refuses_calls_beyond_it_and_not_health(serve: Any) -> None:
    channel, servicer = serve(RateLimits(max_concurrent=1))
    before = refusals("concurrency")
    servicer.hold.clear()
    with futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(upsert, channel, 1)
        assert servicer.entered.wait(5)
        details, trailing = refused(lambda: upsert(channel, 1))
        assert "1 calls are in flight" in details and int(trailing[RETRY_AFTER_KEY]) > 0
        check = health_pb2_grpc.HealthStub(channel).Check
        assert check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        servicer.hold.set()
        assert held.result(5).upserted == 1
    assert upsert(channel, 1).upserted == 1  # the slot was given back
    assert refusals("concurrency") == before + 1


def upsert_stream(channel: grpc.Channel, sizes: list[int], timeout: float) -> Any:
    method = channel.stream_unary(
        f"/{SERVICE}/UpsertStream", pb.UpsertRequest.SerializeToString, pb.UpsertResponse.FromString
    )
    return method(iter([upsert_request(n) for n in sizes]), timeout=timeout)


def test_a_client_stream_is_paced_by_its_item_rate(serve: Any) -> None:
    channel, servicer = serve(RateLimits(items_per_s=100.0, burst_s=1.0))
    started = time.monotonic()
    assert upsert_stream(channel, [50, 50, 50, 50], timeout=10).upserted == 200
    assert time.monotonic() - started >= 0.9  # 100 at once (the burst), then 100 a second
    assert servicer.served == [50, 50, 50, 50]


def test_a_client_stream_whose_tokens_come_after_its_deadline_is_refused(serve: Any) -> None:
    channel, servicer = serve(RateLimits(items_per_s=100.0, burst_s=1.0))
    details, trailing = refused(lambda: upsert_stream(channel, [100, 100], timeout=0.5))
    assert "100 items a second" in details and int(trailing[RETRY_AFTER_KEY]) > 500
    assert servicer.served == [100]  # the first message was applied, the second never read


def test_no_limits_and_no_keys_install_no_wrapper() -> None:
    """The default configuration pays nothing per call; a default limit, or keys (which may carry
    their own limits), put the wrapper back."""
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)

    class Details:
        method = "/vectorsearch.v1.SearchService/Search"

    def intercepted(limits: RateLimits, enforced: bool) -> Any:
        interceptor = RateLimitInterceptor(limits, keys_enforced=lambda: enforced)
        return interceptor.intercept_service(lambda _details: handler, Details())  # type: ignore[arg-type]

    assert intercepted(RateLimits(), enforced=False) is handler
    assert intercepted(RateLimits(), enforced=True) is not handler
    assert intercepted(RateLimits(requests_per_s=5), enforced=False) is not handler
    assert intercepted(RateLimits(max_concurrent=4), enforced=False) is not handler
