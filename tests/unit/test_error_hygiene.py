"""What a client may read of an error (#18 item 6): ``core.status.public_message`` strips absolute
paths and replaces SQL text; an exception that escapes a handler without a status (not through
``core.status.handled``) is INTERNAL with the generic message and the request id, not grpcio's
UNKNOWN with the exception's text."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from core import logs, status
from core.errors import CorruptionError, Unavailable

SQL_ERROR = (
    "(sqlite3.OperationalError) no such table: collections\n"
    "[SQL: SELECT collections.spec FROM collections ORDER BY collections.name]\n"
    "(Background on this error at: https://sqlalche.me/e/20/e3q8)"
)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "snapshot /var/lib/vs/shard/collections/c/snapshots/7: manifest checksum mismatch",
            "snapshot <path>: manifest checksum mismatch",
        ),
        (
            "cannot read shard control file '/data/control.json': [Errno 13] Permission denied",
            "cannot read shard control file '<path>': [Errno 13] Permission denied",
        ),
        ("uri file:///photos/a.jpg: no such file", "uri file:///photos/a.jpg: no such file"),  # the client's own URI
        ("may send 50 items/s; retry in 0.2 s", "may send 50 items/s; retry in 0.2 s"),
        ("collection 'a' does not exist", "collection 'a' does not exist"),
    ],
)
def test_public_message_strips_absolute_paths(message: str, expected: str) -> None:
    assert status.public_message(message) == expected


def test_public_message_replaces_sql_with_the_generic_message() -> None:
    public = status.public_message(SQL_ERROR)
    assert "SELECT" not in public and "FROM" not in public and "sqlite3" not in public
    assert public.startswith("internal error (request id")


METHOD = "/test.Echo/Call"


class Servicer:
    def __init__(self, error: Exception, wrapped: bool) -> None:
        self.error = error
        self.wrapped = wrapped

    def Call(self, request: Any, context: Any) -> Any:
        if self.wrapped:
            return status.handled(type(self).raw)(self, request, context)
        raise self.error

    def raw(self, request: Any, context: Any) -> Any:
        raise self.error


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[grpc.Server] = []

    def start(error: Exception, wrapped: bool) -> grpc.Channel:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[logs.RequestInterceptor()])
        handler = grpc.method_handlers_generic_handler(
            "test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(Servicer(error, wrapped).Call)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return grpc.insecure_channel(f"127.0.0.1:{port}")

    yield start
    for server in servers:
        server.stop(None)


def failed(channel: grpc.Channel, rid: str) -> Any:
    with pytest.raises(grpc.RpcError) as err:
        channel.unary_unary(METHOD, None, None)(b"", timeout=5, metadata=((logs.REQUEST_ID_KEY, rid),))
    return err.value


@pytest.mark.parametrize("wrapped", [True, False], ids=["handled", "escaped"])
def test_an_unexpected_error_is_internal_with_the_request_id_and_logged(
    serve: Any, wrapped: bool, caplog: pytest.LogCaptureFixture
) -> None:
    error = PermissionError(13, "Permission denied", "/srv/vs/shard/collections/c/wal/000001.log")
    with caplog.at_level(logging.ERROR):
        rpc_error = failed(serve(error, wrapped), "rid-hygiene-1")
    assert rpc_error.code() == grpc.StatusCode.INTERNAL
    details = rpc_error.details()
    assert "rid-hygiene-1" in details and "/" not in details and "Permission" not in details
    assert (logs.REQUEST_ID_KEY, "rid-hygiene-1") in tuple(rpc_error.trailing_metadata())
    logged = [r for r in caplog.records if "rid-hygiene-1" in r.getMessage()]
    assert logged and logged[0].exc_info is not None and "000001.log" in str(logged[0].exc_info[1])


def test_a_domain_error_keeps_its_message_less_paths_and_sql(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    corrupt = CorruptionError("snapshot /srv/vs/collections/c/snapshots/9: manifest checksum mismatch")
    rpc_error = failed(serve(corrupt, True), "rid-hygiene-2")
    assert rpc_error.code() == grpc.StatusCode.DATA_LOSS
    assert rpc_error.details() == "snapshot <path>: manifest checksum mismatch"
    with caplog.at_level(logging.WARNING):
        rpc_error = failed(serve(Unavailable(SQL_ERROR), True), "rid-hygiene-3")
    assert rpc_error.code() == grpc.StatusCode.UNAVAILABLE
    assert "SELECT" not in rpc_error.details() and "rid-hygiene-3" in rpc_error.details()
    assert any("rid-hygiene-3" in r.getMessage() and "no such table" in r.getMessage() for r in caplog.records)
