"""Registers a servicer with a gRPC server so that request bytes which do not parse reach the
servicer as ``core.status.MalformedRequest`` (answered INVALID_ARGUMENT by ``core.status.handled``)
instead of failing inside grpcio as INTERNAL ("Exception deserializing request!").

The method handlers are built from the service's descriptor, the same way the generated
``add_<Service>Servicer_to_server`` builds them, with one difference: the request deserializer
never raises. Bytes that are not a valid message (random bytes, invalid UTF-8 in a string field,
nesting deeper than the parser's recursion limit) become a ``MalformedRequest`` naming the
message type.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory

from core.status import MalformedRequest

_HANDLERS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


def _safe_parser(cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # DecodeError, RecursionError: the bytes are the client's fault
            return MalformedRequest(cls.DESCRIPTOR.full_name, type(exc).__name__)

    return parse


def add_servicer(server: grpc.Server, servicer: object, service: descriptor.ServiceDescriptor) -> None:
    """Adds every method of ``service`` implemented by ``servicer`` (a method named like the
    RPC) to ``server``, with requests parsed by a deserializer that never raises."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        make = _HANDLERS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_safe_parser(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
