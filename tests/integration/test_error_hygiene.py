"""Error hygiene on a real server process (#18 item 6): a database error (a table dropped under
the running server) and a filesystem error (a file where the shard creates a collection's
directory) reach the client as INTERNAL with a generic message naming the request id: no SQL,
no paths, no traceback; the server log holds the detail and the traceback under that id."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from core.logs import REQUEST_ID_KEY
from testkit.serverproc import SingleNodeProcess
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

SQL_WORDS = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|FROM|WHERE)\b")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[SingleNodeProcess]:
    server = SingleNodeProcess(tmp_path / "node")
    server.start()
    yield server
    server.stop()


def failed(call: Callable[..., Any], request: Any) -> Any:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=10)
    return err.value


def assert_clean(error: Any, node: SingleNodeProcess, detail: str) -> None:
    """INTERNAL, nothing of the failure in the message but the request id; the log has it all."""
    assert error.code() == grpc.StatusCode.INTERNAL, error.details()
    message = error.details() or ""
    rid = dict(error.trailing_metadata() or ())[REQUEST_ID_KEY]
    assert rid and rid in message
    assert not SQL_WORDS.search(message) and "/" not in message and "Traceback" not in message, message
    deadline = time.monotonic() + 10
    while True:
        log = node.log_path.read_text(errors="replace")
        at = log.find(f"(request id {rid})")
        if at >= 0:
            break
        assert time.monotonic() < deadline, f"no log line with request id {rid}:\n{node.log_tail()}"
        time.sleep(0.1)
    entry = log[at : at + 20_000]
    assert "Traceback" in entry and detail in entry, entry[:3000]


def test_a_database_error_is_internal_without_sql(node: SingleNodeProcess) -> None:
    stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(node.address))
    spec = types_pb2.CollectionSpec(name="c", dimension=4, metric=types_pb2.METRIC_COSINE)
    assert stub.CreateCollection(pb.CreateCollectionRequest(spec=spec), timeout=10).created
    with sqlite3.connect(node.workdir / "meta.db") as db:
        db.execute("DROP TABLE vs_collections")
    error = failed(stub.ListCollections, pb.ListCollectionsRequest())
    assert_clean(error, node, "no such table: vs_collections")


def test_a_filesystem_error_is_internal_without_paths(node: SingleNodeProcess) -> None:
    stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(node.address))
    collections = node.workdir / "shard" / "collections"
    (collections / "broken").write_text("in the way of the collection's directory")
    spec = types_pb2.CollectionSpec(name="broken", dimension=4, metric=types_pb2.METRIC_COSINE)
    error = failed(stub.CreateCollection, pb.CreateCollectionRequest(spec=spec))
    assert_clean(error, node, str(collections))
