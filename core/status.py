"""The one two-way map between domain errors and gRPC status codes.

Servicers turn a raised ``DomainError`` into its status with :func:`abort`; clients of a
remote service turn a ``grpc.RpcError`` back into the same domain error with
:func:`from_rpc_error`, so a shard's NOT_FOUND is ``NotFound`` whether the shard is in-process
or across a socket. Anything that is not a ``DomainError`` is a bug: it is logged and sent as
INTERNAL, and the process keeps serving.

What a client reads (issue #18): an unexpected error is INTERNAL with a generic message naming
the call's request id (also in the ``x-request-id`` trailing metadata, ``core.logs``), while the
exception and its traceback go to the log under that id. A domain error keeps its message, less
what a client must never see: absolute file paths become ``<path>``, and a message carrying SQL
text is replaced as a whole by the generic one (the original is logged under the request id).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc

from core import calls, errors, logs

log = logging.getLogger(__name__)

# Order matters only for from_code: the first class listed for a code is the one rebuilt.
_TABLE: tuple[tuple[type[errors.DomainError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.CorruptionError, grpc.StatusCode.DATA_LOSS),
    (errors.Internal, grpc.StatusCode.INTERNAL),
    (errors.WrongRoute, grpc.StatusCode.ABORTED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
)
_TO_CODE: dict[type[errors.DomainError], grpc.StatusCode] = dict(_TABLE)
_FROM_CODE: dict[grpc.StatusCode, type[errors.DomainError]] = {}
for _cls, _code in _TABLE:
    _FROM_CODE.setdefault(_code, _cls)
# A remote callee's CANCELLED means the call did not finish: retry it like UNAVAILABLE.
_FROM_CODE[grpc.StatusCode.CANCELLED] = errors.Unavailable
# Trailing metadata of a RESOURCE_EXHAUSTED whose error carries a retry hint (milliseconds).
RETRY_AFTER_KEY = "retry-after-ms"


# An absolute path: a "/" that starts a token (not inside a URI like file:///x or a word like items/s).
_ABS_PATH = re.compile(r"(?<![\w:/.~-])/[^\s'\"()\[\]{},;]*[^\s'\"()\[\]{},;:.]")  # (not its closing : or .)
# SQL text as SQLAlchemy and database drivers put it in their messages.
_SQL = re.compile(
    r"\[SQL:|sqlalche\.me|\b(?:SELECT|INSERT|UPDATE|DELETE)\b.*\b(?:FROM|INTO|SET|WHERE|VALUES)\b", re.DOTALL
)


def public_message(message: str) -> str:
    """``message`` as a client may read it: no absolute paths, no SQL (see the module docstring)."""
    if _SQL.search(message):
        return logs.internal_message(logs.request_id())
    return _ABS_PATH.sub("<path>", message)


def to_code(exc: BaseException) -> grpc.StatusCode | None:
    """The status code of a domain error (by its nearest mapped base class), None for a bug."""
    for cls in type(exc).__mro__:
        code = _TO_CODE.get(cls)
        if code is not None:
            return code
    return None


def from_code(code: grpc.StatusCode, details: str) -> errors.DomainError:
    """The domain error a status code stands for (unknown codes are ``Internal``)."""
    return _FROM_CODE.get(code, errors.Internal)(details or code.name)


def from_rpc_error(exc: grpc.RpcError) -> errors.DomainError:
    """The domain error carried by a failed call of a gRPC client."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    error = from_code(code, details or "")
    if isinstance(error, errors.ResourceExhausted) and callable(getattr(exc, "trailing_metadata", None)):
        metadata: Any = exc.trailing_metadata() or ()  # (key, value) pairs; grpc-stubs says otherwise
        for key, value in metadata:
            if key == RETRY_AFTER_KEY and str(value).isdigit():
                error.retry_after_s = int(value) / 1000
    return error


def abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> NoReturn:
    """Ends the call with the status of ``exc``; a non-domain error is logged as a bug, unless
    the client had already gone away (one info line, see :func:`client_gone`)."""
    code = to_code(exc)
    if isinstance(exc, errors.Cancelled):
        log.info("%s: %s", method, exc)
    if code is None and client_gone(context, method, exc):
        context.abort(grpc.StatusCode.CANCELLED, "the client went away")
    rid = logs.request_id()
    if code is None:
        log.exception("%s failed (request id %s)", method, rid)
        context.abort(grpc.StatusCode.INTERNAL, logs.internal_message(rid))
    if isinstance(exc, errors.ResourceExhausted) and exc.retry_after_s is not None:
        kept = tuple(context.trailing_metadata() or ())  # e.g. the request id (core/logs.py)
        context.set_trailing_metadata((*kept, (RETRY_AFTER_KEY, str(max(1, round(exc.retry_after_s * 1000))))))
    message = str(exc)
    public = public_message(message)
    if public != message:
        log.warning("%s: %s: %s (request id %s; the client was sent: %s)", method, code.name, message, rid, public)
    context.abort(code, public)


class MalformedRequest:
    """Stands in for a request message whose bytes did not parse (see ``vsproto.handlers``)."""

    def __init__(self, message_type: str, reason: str) -> None:
        self.message_type = message_type
        self.reason = reason

    def error(self) -> errors.InvalidArgument:
        return errors.InvalidArgument(
            f"the request is not a valid {self.message_type} message ({self.reason}: "
            "bad bytes, invalid UTF-8 in a string field, or nesting too deep)"
        )


def check_parsed(request: Any) -> Any:
    """``request``, or InvalidArgument when it is a :class:`MalformedRequest`."""
    if isinstance(request, MalformedRequest):
        raise request.error()
    return request


def parsed_stream(requests: Iterator[Any]) -> Iterator[Any]:
    """The messages of a client stream, InvalidArgument at the first that did not parse."""
    for request in requests:
        yield check_parsed(request)


F = TypeVar("F", bound=Callable[..., Any])


def handled(method: F) -> F:
    """Wraps a unary (or client-streaming) servicer method: domain errors become their status
    (see :func:`abort`); a request (or stream message) that did not parse is INVALID_ARGUMENT."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            with calls.serving(context):
                if isinstance(request, Iterator):
                    return method(self, parsed_stream(request), context)
                return method(self, check_parsed(request), context)
        except Exception as exc:
            abort(context, exc, method.__name__)

    return wrapper  # type: ignore[return-value]


def client_gone(context: grpc.ServicerContext, method: str, exc: BaseException) -> bool:
    """True (after one info line) when the call already ended on the client's side: it
    cancelled, disconnected or its deadline passed. Such a failure is not a server error."""
    if context.is_active():
        return False
    log.info("%s: the client went away (cancelled, disconnected or past its deadline): %s", method, type(exc).__name__)
    return True


def handled_stream(method: F) -> F:
    """As :func:`handled`, for a servicer method that returns a response iterator."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, check_parsed(request), context)
        except Exception as exc:
            abort(context, exc, method.__name__)

    return wrapper  # type: ignore[return-value]


def describe(exc: errors.DomainError) -> str:
    """``"CODE: message"``: how a failed shard is named in partial results and health reports."""
    code = to_code(exc)
    return f"{code.name if code is not None else type(exc).__name__}: {exc}"
