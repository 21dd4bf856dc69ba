"""``server.embedding.wire``: hand-built ``ModelInferRequest`` bytes read back by the generated
protobuf parser exactly as Triton reads them; responses decoded or refused; gRPC errors mapped."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from core.errors import DeadlineExceeded, Internal, InvalidArgument, ResourceExhausted, Unavailable
from server.embedding.triton_errors import is_retryable, to_domain
from server.embedding.wire import CANCELLED, RequestTemplate, varint, vector_of


@pytest.mark.parametrize("value", [1, 127, 128, 300, 16_383, 16_384, 2**21, 2**35 + 5, 2**63 - 1])
def test_varint_is_protobufs(value: int) -> None:
    assert service_pb2.InferParameter(uint64_param=value).SerializeToString() == b"\x28" + varint(value)


@pytest.mark.parametrize("payload", [b"x", "naïve café".encode(), b"a" * 127, b"b" * 128, b"\xff\xd8\xff" * 70_000])
@pytest.mark.parametrize("timeout_us", [1_000, 29_999_000])
def test_a_request_reads_back_as_one_bytes_element(payload: bytes, timeout_us: int) -> None:
    request = service_pb2.ModelInferRequest.FromString(
        RequestTemplate.of("clip_text", "TEXT", "EMBEDDING").request(payload, timeout_us)
    )
    assert request.model_name == "clip_text" and request.model_version == ""
    assert [(t.name, t.datatype, list(t.shape)) for t in request.inputs] == [("TEXT", "BYTES", [1, 1])]
    assert [o.name for o in request.outputs] == ["EMBEDDING"]
    assert list(request.parameters) == ["timeout"] and request.parameters["timeout"].int64_param == timeout_us
    assert list(request.raw_input_contents) == [len(payload).to_bytes(4, "little") + payload]


def response(values: np.ndarray, datatype: str = "FP32") -> bytes:
    message = service_pb2.ModelInferResponse(model_name="clip_text")
    output = message.outputs.add()
    output.name, output.datatype = "EMBEDDING", datatype
    output.shape.extend([1, values.size])
    message.raw_output_contents.append(values.tobytes())
    return message.SerializeToString()


def test_a_response_is_its_float32_vector_or_internal() -> None:
    values = np.linspace(-1, 1, 8, dtype=np.float32)
    got = vector_of(response(values), "clip_text", 8)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (8,)
    np.testing.assert_array_equal(got, values)
    assert isinstance(vector_of(response(values), "clip_text", 16), Internal)
    assert isinstance(vector_of(response(values.astype(np.float64)), "clip_text", 8), Internal)
    assert isinstance(vector_of(response(values, "FP16"), "clip_text", 8), Internal)
    assert isinstance(vector_of(b"", "clip_text", 8), Internal)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def domain(exc: object) -> object:
    return to_domain(exc, model="clip_text", url="127.0.0.1:1", what="text", attempts=6, retry_after_s=0.1)


def test_grpc_errors_map_to_domain_errors() -> None:
    down = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    full = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size")
    assert is_retryable(down) and is_retryable(full)
    assert isinstance(domain(down), Unavailable) and "after 6 attempts" in str(domain(down))
    assert isinstance(domain(full), ResourceExhausted) and domain(full).retry_after_s == 0.1  # type: ignore[attr-defined]
    assert isinstance(domain(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")), DeadlineExceeded)
    bad = domain(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "cannot identify image file"))
    assert isinstance(bad, InvalidArgument) and "cannot identify image file" in str(bad)
    assert not is_retryable(CANCELLED) and "cancelled" in str(domain(CANCELLED))
