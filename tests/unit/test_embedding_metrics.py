"""``server.embedding.metrics`` as ``dispatch`` and the caches drive it, without Triton: requests
counted by kind and outcome (an error's gRPC status code) on the blocking and the in-flight paths,
items per call, and cache lookups by result."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from prometheus_client import REGISTRY
from tritonclient.grpc import service_pb2

from core.errors import InvalidArgument
from server.embedding import metrics
from server.embedding.cache import CacheKey, LruCache
from server.embedding.dispatch import Sender, dispatch
from server.embedding.limiter import InFlightLimiter
from server.embedding.model_info import ModelInfo
from server.embedding.triton_errors import RetryPolicy

DIM = 4
INFO = ModelInfo("clip_text", "arch@sha256:0", DIM, "TEXT", "EMBEDDING", 0, 0.0)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Refused(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self) -> str:
        return "bad input"


def answer() -> bytes:
    message = service_pb2.ModelInferResponse(model_name="clip_text")
    output = message.outputs.add()
    output.name, output.datatype = "EMBEDDING", "FP32"
    output.shape.extend([1, DIM])
    message.raw_output_contents.append(np.ones(DIM, dtype="<f4").tobytes())
    return message.SerializeToString()


class Done:
    """A finished gRPC future: its callback runs at once."""

    def __init__(self, reply: Callable[[], bytes]) -> None:
        self._reply = reply

    def result(self) -> bytes:
        return self._reply()

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        callback(self)

    def cancel(self) -> bool:
        return False


class Rpc:
    """``ModelInfer``: payloads starting with ``bad`` are refused, the others answered."""

    def __call__(self, request: bytes, timeout: float) -> bytes:
        return self.reply(request)()

    def future(self, request: bytes, timeout: float) -> Done:
        return Done(self.reply(request))

    @staticmethod
    def reply(request: bytes) -> Callable[[], bytes]:
        def call() -> bytes:
            if b"bad" in request:
                raise Refused()
            return answer()

        return call


def send(payloads: list[bytes]) -> list[Any]:
    sender = Sender(Rpc(), InFlightLimiter(8), RetryPolicy(), 0.1, "test:8001", lambda: None)
    return dispatch(sender, INFO, payloads, time.monotonic() + 5, "text")


def test_requests_are_counted_by_kind_and_outcome_on_both_paths() -> None:
    ok, refused = (
        sample("vs_embedding_triton_requests_total", kind="text", code=c) for c in ("OK", "INVALID_ARGUMENT")
    )
    timed = sample("vs_embedding_triton_request_duration_seconds_count", kind="text", code="OK")
    calls = sample("vs_embedding_batch_items_count", kind="text")
    sent = sample("vs_embedding_batch_items_sum", kind="text")

    (one,) = send([b"a cat"])  # blocking path
    assert one.shape == (DIM,)
    (bad,) = send([b"bad one"])
    assert isinstance(bad, InvalidArgument)
    several = send([b"x", b"bad two", b"y"])  # in-flight path
    assert [isinstance(r, InvalidArgument) for r in several] == [False, True, False]

    assert sample("vs_embedding_triton_requests_total", kind="text", code="OK") == ok + 3
    assert sample("vs_embedding_triton_requests_total", kind="text", code="INVALID_ARGUMENT") == refused + 2
    assert sample("vs_embedding_triton_request_duration_seconds_count", kind="text", code="OK") == timed + 3
    assert sample("vs_embedding_batch_items_count", kind="text") == calls + 3
    assert sample("vs_embedding_batch_items_sum", kind="text") == sent + 5


def test_memory_cache_lookups_are_counted_by_result() -> None:
    hits = sample("vs_embedding_cache_lookups_total", cache="memory", result="hit")
    misses = sample("vs_embedding_cache_lookups_total", cache="memory", result="miss")
    cache = LruCache()
    key = CacheKey.of("id", "text", b"x")
    cache.get_many([key])
    cache.put_many([(key, np.ones(DIM, dtype=np.float32))])
    cache.get_many([key, key, CacheKey.of("id", "text", b"y")])
    assert sample("vs_embedding_cache_lookups_total", cache="memory", result="hit") == hits + 2
    assert sample("vs_embedding_cache_lookups_total", cache="memory", result="miss") == misses + 2
    metrics.cache_lookups("memory", 0, 0)  # nothing to add: no change
    assert sample("vs_embedding_cache_lookups_total", cache="memory", result="hit") == hits + 2
