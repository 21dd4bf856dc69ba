"""The one error map (core/status.py) as servicers use it: domain errors become their status,
bugs become INTERNAL with an ERROR log, a request that did not parse is INVALID_ARGUMENT, and a
failure after the client went away is one info line, never an ERROR."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from core import status
from core.errors import NotFound, ShardsUnavailable


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self, active: bool = True) -> None:
        self.active = active
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def is_active(self) -> bool:
        return self.active

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted()


class Servicer:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    @status.handled
    def Unary(self, request: Any, context: Any) -> Any:
        if self.error is not None:
            raise self.error
        return request

    @status.handled
    def ClientStream(self, requests: Iterator[Any], context: Any) -> Any:
        return list(requests)


def call(error: Exception | None, request: Any = "req", active: bool = True) -> FakeContext:
    context = FakeContext(active)
    with pytest.raises(Aborted):
        Servicer(error).Unary(request, context)
    return context


def test_domain_errors_map_to_their_codes_both_ways() -> None:
    assert call(NotFound("no such collection")).code == grpc.StatusCode.NOT_FOUND
    unavailable = call(ShardsUnavailable({"s1": "down"}))
    assert unavailable.code == grpc.StatusCode.UNAVAILABLE
    rebuilt = status.from_code(grpc.StatusCode.NOT_FOUND, "x")
    assert isinstance(rebuilt, NotFound) and status.to_code(rebuilt) == grpc.StatusCode.NOT_FOUND


def test_a_bug_is_internal_and_logged_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="core.status"):
        context = call(KeyError("secret detail"))
    assert context.code == grpc.StatusCode.INTERNAL and "secret" not in context.details
    assert [r.levelno for r in caplog.records] == [logging.ERROR]


def test_a_client_that_went_away_is_one_info_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="core.status"):
        context = call(grpc.RpcError(), active=False)
    assert context.code == grpc.StatusCode.CANCELLED
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "went away" in caplog.records[0].getMessage()


def test_requests_that_did_not_parse_are_invalid_argument() -> None:
    malformed = status.MalformedRequest("vectorsearch.v1.SearchRequest", "DecodeError")
    context = call(None, request=malformed)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and "SearchRequest" in context.details
    stream_context = FakeContext()
    with pytest.raises(Aborted):
        Servicer(None).ClientStream(iter(["ok", malformed]), stream_context)
    assert stream_context.code == grpc.StatusCode.INVALID_ARGUMENT
    assert Servicer(None).ClientStream(iter(["a", "b"]), FakeContext()) == ["a", "b"]


def test_work_stopped_for_a_gone_client_is_cancelled_with_an_info_line(caplog: pytest.LogCaptureFixture) -> None:
    from core import calls

    class Checking(Servicer):
        @status.handled
        def Unary(self, request: Any, context: Any) -> Any:
            calls.check("the next step")  # as the engine does between its steps
            return request

    gone = FakeContext(active=False)
    with caplog.at_level(logging.INFO, logger="core.status"), pytest.raises(Aborted):
        Checking(None).Unary("req", gone)
    assert gone.code == grpc.StatusCode.CANCELLED and "the next step" in gone.details
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert Checking(None).Unary("req", FakeContext()) == "req"  # a live caller is served
    calls.check("outside any call")  # no call served on this thread: nothing to stop


def test_on_end_cancels_shard_work_when_the_served_call_ends() -> None:
    from core import calls

    class Context:
        def __init__(self, active: bool) -> None:
            self.active = active
            self.callbacks: list[Any] = []

        def is_active(self) -> bool:
            return self.active

        def add_callback(self, callback: Any) -> bool:
            if not self.active:
                return False  # grpc: the call already ended, nothing registered
            self.callbacks.append(callback)
            return True

    cancelled: list[str] = []
    live = Context(active=True)
    with calls.serving(live):
        calls.on_end(lambda: cancelled.append("live"))
    assert cancelled == [] and len(live.callbacks) == 1
    live.callbacks[0]()  # what grpc does when the call ends
    assert cancelled == ["live"]
    with calls.serving(Context(active=False)):
        calls.on_end(lambda: cancelled.append("gone"))  # already over: cancelled at once
    assert cancelled == ["live", "gone"]
    calls.on_end(lambda: cancelled.append("outside"))  # no call served: nothing registered
    assert cancelled == ["live", "gone"]
