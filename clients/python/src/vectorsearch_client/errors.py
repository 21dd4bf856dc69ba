"""Exceptions carrying the gRPC status code and message of a failed call."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc


class VectorSearchError(Exception):
    """A call failed with ``code`` (a ``grpc.StatusCode``) and the server's ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class NotFound(VectorSearchError):
    """Unknown collection (or, for search_by_id, item; for admin calls, shard or rebalance)."""


class InvalidArgument(VectorSearchError):
    """The request is malformed (wrong dimension, bad id, bad filter, ...); nothing changed."""


class AlreadyExists(VectorSearchError):
    """A different collection (or shard) of that name exists."""


class FailedPrecondition(VectorSearchError):
    """The system is not in a state for the call (e.g. a rebalance is already running)."""


class ResourceExhausted(VectorSearchError):
    """Too large a message, or a saturated embedding service; ``retry_after_s`` is the server's
    hint (from the ``retry-after-ms`` trailing metadata) when it sent one."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(code, message)
        self.retry_after_s = retry_after_s


class Unavailable(VectorSearchError):
    """The server, or a shard it needs, did not answer; retrying is safe for idempotent calls."""


class DeadlineExceeded(VectorSearchError):
    """The call's deadline passed."""


class Aborted(VectorSearchError):
    """The call was aborted by a concurrent change; retry it."""


class Unimplemented(VectorSearchError):
    """The server does not offer the call (a server older than this client)."""


class Unauthenticated(VectorSearchError):
    """The server requires an API key and the call had none, or an unknown or revoked one."""


class PermissionDenied(VectorSearchError):
    """The API key's role may not make the call, or the collection is not one of the key's."""


class UnreadableReply(ValueError):
    """The server's reply holds a value this client does not know (e.g. a rebalance state added
    by a newer server); the call itself succeeded."""


_BY_CODE: dict[grpc.StatusCode, type[VectorSearchError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.ABORTED: Aborted,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_code(value: int) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of a numeric google.rpc.Code (UNKNOWN for one it does not know)."""
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)


def _retry_after_s(trailing: Iterable[Any] | None) -> float | None:
    for entry in trailing or ():
        key, value = entry[0], entry[1]
        if key == "retry-after-ms":
            try:
                return float(value.decode() if isinstance(value, bytes) else value) / 1000.0
            except ValueError:
                return None
    return None


def from_rpc_error(exc: grpc.RpcError) -> VectorSearchError:
    """The exception for a failed call (``grpc.RpcError`` of the sync or asyncio API)."""
    code_fn = getattr(exc, "code", None)
    code = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    details_fn = getattr(exc, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(exc)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        trailing_fn = getattr(exc, "trailing_metadata", None)
        trailing = trailing_fn() if callable(trailing_fn) else None
        return ResourceExhausted(code, message, _retry_after_s(trailing))
    return _BY_CODE.get(code, VectorSearchError)(code, message)


def not_ready(timeout: float) -> Unavailable:
    """What ``wait_ready`` raises when no server answered within ``timeout`` seconds."""
    return Unavailable(grpc.StatusCode.UNAVAILABLE, f"no server answered within {timeout:g} s")
