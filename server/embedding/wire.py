"""Triton's ``ModelInfer`` on the wire, without tritonclient's per-request wrappers: the
embedder's only hot path, so it costs as little client CPU per item as gRPC allows.

- A request is bytes: the model's fixed part (model name, the BYTES input ``[1, 1]``, the
  requested output), serialised once per model, followed by the two fields that change per
  item, encoded by hand: the ``timeout`` parameter (Triton's queue timeout, microseconds) and
  ``raw_input_contents`` (the item as Triton's BYTES tensor: 4-byte little-endian length, then
  the bytes). Protobuf merges concatenated messages, so Triton reads one ``ModelInferRequest``.
- A response is parsed with the generated ``ModelInferResponse`` and its float32 output read
  straight from ``raw_output_contents`` (``numpy.frombuffer``: read-only, no copy).
- Errors are the ``grpc.RpcError`` of the call (``triton_errors`` reads its code and details),
  or ``CallFailure`` for what gRPC reports otherwise (a cancelled future).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

from core.errors import DomainError, Internal
from server.embedding.cache import Vector

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

_PARAMETERS_FIELD = b"\x22"  # ModelInferRequest.parameters (4), length-delimited map entry
_RAW_INPUT_FIELD = b"\x3a"  # ModelInferRequest.raw_input_contents (7), length-delimited
_TIMEOUT_KEY = b"\x0a\x07timeout"  # map entry key (1): "timeout"
_ENTRY_VALUE_FIELD = b"\x12"  # map entry value (2): InferParameter
_INT64_PARAM_FIELD = b"\x10"  # InferParameter.int64_param (2), varint


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass(frozen=True)
class RequestTemplate:
    """The serialised fixed part of one model's requests; ``request`` appends an item."""

    prefix: bytes

    @classmethod
    def of(cls, model: str, input_name: str, output_name: str) -> RequestTemplate:
        request = service_pb2.ModelInferRequest(model_name=model)
        tensor = request.inputs.add()
        tensor.name = input_name
        tensor.datatype = "BYTES"
        tensor.shape.extend([1, 1])
        request.outputs.add().name = output_name
        return cls(request.SerializeToString())

    def request(self, payload: bytes, timeout_us: int) -> bytes:
        """The serialised ``ModelInferRequest`` of one item (a BYTES element ``payload``) that
        Triton may keep queued for at most ``timeout_us`` microseconds."""
        value = _INT64_PARAM_FIELD + varint(timeout_us)
        entry = _TIMEOUT_KEY + _ENTRY_VALUE_FIELD + varint(len(value)) + value
        n = len(payload)
        return b"".join(
            (
                self.prefix,
                _PARAMETERS_FIELD,
                varint(len(entry)),
                entry,
                _RAW_INPUT_FIELD,
                varint(n + 4),
                n.to_bytes(4, "little"),
                payload,
            )
        )


def vector_of(response: bytes, model: str, dim: int) -> Vector | DomainError:
    """The ``[dim]`` float32 vector of a serialised ``ModelInferResponse``, or Internal when the
    model answered anything else."""
    message = service_pb2.ModelInferResponse.FromString(response)
    outputs, raw = message.outputs, message.raw_output_contents
    if len(outputs) == 1 and len(raw) == 1 and outputs[0].datatype == "FP32" and len(raw[0]) == 4 * dim:
        return np.frombuffer(raw[0], dtype="<f4")
    shapes = [list(o.shape) for o in outputs]
    types = [o.datatype for o in outputs]
    return Internal(f"model {model!r} answered outputs {types} of shapes {shapes}, expected one FP32 [1, {dim}]")


@dataclass(frozen=True)
class CallFailure:
    """A failed call that is not a ``grpc.RpcError`` (same reading as tritonclient's exception:
    ``status()`` is ``"StatusCode.X"``)."""

    code: str
    text: str

    def status(self) -> str:
        return f"StatusCode.{self.code}"

    def message(self) -> str:
        return self.text


CANCELLED = CallFailure("CANCELLED", "cancelled by the client")


def outcome(future: grpc.Future[Any]) -> tuple[bytes | None, object | None]:
    """(response bytes, None) or (None, error) of a finished ``ModelInfer`` future."""
    try:
        return future.result(), None
    except grpc.FutureCancelledError:
        return None, CANCELLED
    except grpc.RpcError as e:
        return None, e


@functools.lru_cache(maxsize=64)
def template_for(model: str, input_name: str, output_name: str) -> RequestTemplate:
    """``RequestTemplate.of``, built once per model and tensor names."""
    return RequestTemplate.of(model, input_name, output_name)
