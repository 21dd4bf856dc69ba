"""The one way our server interceptors wrap a method's behavior (request id and logs, metrics,
API keys, rate limits): a handler of the same kind, the same (de)serializers, and the behavior
replaced by ``wrap(behavior, request_streaming, response_streaming)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behavior = Callable[[Any, grpc.ServicerContext], Any]
Wrap = Callable[[Behavior, bool, bool], Behavior]

_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def rewrap(handler: grpc.RpcMethodHandler[Any, Any], wrap: Wrap) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with its behavior wrapped (``handler`` itself when it has none)."""
    for attribute, make in _KINDS:
        behavior = getattr(handler, attribute)
        if behavior is not None:
            return make(
                wrap(behavior, handler.request_streaming, handler.response_streaming),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler
