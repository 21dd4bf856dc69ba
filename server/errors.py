"""The one place that maps domain errors to gRPC status codes for the public API."""

from __future__ import annotations

import grpc

from router.fanout import ShardsUnavailable
from router.topology import SchemaTooNew
from shard import errors

_STATUS: dict[type[Exception], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    ShardsUnavailable: grpc.StatusCode.UNAVAILABLE,
    SchemaTooNew: grpc.StatusCode.FAILED_PRECONDITION,
}


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    """The status for a known domain error, or None for a bug (reported as INTERNAL)."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return None
