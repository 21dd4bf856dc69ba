"""A RESOURCE_EXHAUSTED with a retry hint crosses a real gRPC call: ``core.status.abort`` sends
``retry_after_s`` as the trailing metadata ``retry-after-ms`` and ``from_rpc_error`` rebuilds it."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from core import status
from core.errors import NotFound, ResourceExhausted

METHOD = "/test.Echo/Call"


class Servicer:
    def __init__(self, error: Exception) -> None:
        self.error = error

    @status.handled
    def Call(self, request: Any, context: Any) -> Any:
        raise self.error


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[grpc.Server] = []

    def start(error: Exception) -> grpc.Channel:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.method_handlers_generic_handler(
            "test.Echo",
            {"Call": grpc.unary_unary_rpc_method_handler(Servicer(error).Call)},
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return grpc.insecure_channel(f"127.0.0.1:{port}")

    yield start
    for server in servers:
        server.stop(None)


def call(channel: grpc.Channel) -> Any:
    """The failed call's error (a grpc.Call as well: code, details, trailing metadata)."""
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(METHOD, None, None)(b"", timeout=5)
    return err.value


def test_retry_after_travels_as_trailing_metadata(serve: Any) -> None:
    rpc_error = call(serve(ResourceExhausted("queue full", retry_after_s=0.25)))
    assert rpc_error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (status.RETRY_AFTER_KEY, "250") in tuple(rpc_error.trailing_metadata())
    rebuilt = status.from_rpc_error(rpc_error)
    assert isinstance(rebuilt, ResourceExhausted) and rebuilt.retry_after_s == 0.25 and str(rebuilt) == "queue full"


def test_no_hint_no_metadata(serve: Any) -> None:
    for error in (ResourceExhausted("message too large"), NotFound("no such collection")):
        rpc_error = call(serve(error))
        keys = [k for k, _ in rpc_error.trailing_metadata() or ()]
        assert status.RETRY_AFTER_KEY not in keys
        rebuilt = status.from_rpc_error(rpc_error)
        assert getattr(rebuilt, "retry_after_s", None) is None
    assert ResourceExhausted("x").retry_after_s is None
