"""Logging of every process (issue #17): ``--log-format text|json`` and the request id.

JSON lines carry ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, and inside a
served call its ``request_id`` and, when the call has a trace context, ``trace_id`` and
``span_id``; an exception adds ``exc_info``. The text format is the classic one line a record.

:class:`RequestInterceptor` (on the public server; on shards when JSON logs or tracing are on)
gives each call its request id: the caller's ``x-request-id`` metadata, or a new one; it is sent
back as trailing metadata
``x-request-id`` and kept in a ``ContextVar`` for the call's log lines (the fan-out pool runs
in a copy of the caller's context, so its lines carry it too). It also opens the call's tracing
span (``core.tracing.server_span``) and writes one line when the call ends: DEBUG when it
succeeded, INFO when the caller's request failed (bad input, not found, cancelled or past its
deadline: the caller's problem, not the server's), WARNING when the server failed (the
traceback of a bug is logged at ERROR by ``core.status``, with the same request id).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import grpc

from core import interceptors, tracing

REQUEST_ID_KEY = "x-request-id"
_MAX_REQUEST_ID = 128
_request_id: ContextVar[str | None] = ContextVar("vs_request_id", default=None)
rpc_log = logging.getLogger("rpc")

_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNAVAILABLE}
)


def request_id() -> str | None:
    """The request id of the call this thread serves (None outside one)."""
    return _request_id.get()


def internal_message(rid: str | None) -> str:
    """What a client reads for an unexpected server error: nothing of it but the request id
    under which the log holds the exception and its traceback."""
    return f"internal error (request id {rid or 'unknown'}); the server log has the details"


# ---------------------------------------------------------------------------- formatting
class _ContextFilter(logging.Filter):
    """Puts the served call's request id and trace ids on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id.get()
        ids = tracing.current_ids()
        record.trace_id, record.span_id = ids if ids is not None else (None, None)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "trace_id", "span_id", "rpc_method", "code", "duration_ms"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def add_arguments(p: argparse.ArgumentParser, env: Callable[[str, str], str]) -> None:
    """``--log-format`` (``--log-level`` is each process's own)."""
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=env("log_format", "text"),
        help="text (default) or json: one JSON object a line with time, level, logger, message, request_id, trace_id",
    )


def setup(level: str, fmt: str = "text") -> None:
    """Configures the root logger: one stdout handler in ``fmt`` (text or json)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


# ---------------------------------------------------------------------------- the interceptor
def _incoming_id(metadata: Any) -> str:
    for key, value in metadata:
        if key == REQUEST_ID_KEY and isinstance(value, str):
            value = value.strip()[:_MAX_REQUEST_ID]
            if value and value.isascii() and value.isprintable():
                return value
    return uuid.uuid4().hex


def _code(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    code = getattr(context, "code", lambda: None)()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


def _log_end(method: str, code: grpc.StatusCode, started: float) -> None:
    if code == grpc.StatusCode.OK:
        level = logging.DEBUG
    elif code in _SERVER_FAULTS:
        level = logging.WARNING
    else:
        level = logging.INFO
    if not rpc_log.isEnabledFor(level):
        return
    ms = round((time.perf_counter() - started) * 1000, 3)
    extra = {"rpc_method": method, "code": code.name, "duration_ms": ms}
    rpc_log.log(level, "%s %s in %.1f ms", method, code.name, ms, extra=extra)


class RequestInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Request id, server span and end-of-call log line of every call (see the module docstring)."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return interceptors.rewrap(
            handler, lambda behavior, _, streamed: (_streamed if streamed else _unary)(behavior, method)
        )


def _begin(context: grpc.ServicerContext) -> tuple[Any, Any]:
    metadata = context.invocation_metadata() or ()
    rid = _incoming_id(metadata)
    # Trailing, not initial, metadata: it travels with the status at the end, while sending
    # initial metadata early is one more write per call (measured: 0.75-0.85x single-client QPS).
    context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
    return metadata, _request_id.set(rid)


def _unexpected(context: grpc.ServicerContext, method: str) -> None:
    """An exception escaped a handler without a status (not one that went through
    ``core.status.abort``, whose ``context.abort`` sets it): grpcio would send its text as
    UNKNOWN. Logs it with the traceback and ends the call as INTERNAL with the generic message."""
    if getattr(context, "code", lambda: None)() is not None:
        return  # aborted with a status: the exception is grpcio's way of ending the call
    rid = _request_id.get()
    rpc_log.exception("%s failed (request id %s)", method, rid)
    context.abort(grpc.StatusCode.INTERNAL, internal_message(rid))


def _unary(behavior: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Any:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        metadata, token = _begin(context)
        failed = True
        try:
            with tracing.server_span(method, metadata):
                try:
                    reply = behavior(request, context)
                except Exception:
                    _unexpected(context, method)
                    raise
            failed = False
            return reply
        finally:
            _log_end(method, _code(context, failed), started)
            _request_id.reset(token)

    return call


def _streamed(behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]], method: str) -> Any:
    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started = time.perf_counter()
        metadata, token = _begin(context)
        failed = True
        try:
            with tracing.server_span(method, metadata):
                try:
                    yield from behavior(request, context)
                except Exception:
                    _unexpected(context, method)
                    raise
            failed = False
        finally:
            _log_end(method, _code(context, failed), started)
            _request_id.reset(token)

    return call
