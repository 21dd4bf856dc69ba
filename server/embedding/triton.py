"""``TritonEmbedder``: texts and encoded images to CLIP embeddings, computed by the ``clip_text``
and ``clip_image`` models of a Triton Inference Server over its gRPC service (the generated
stubs that ship in ``tritonclient.grpc``; inference requests as prebuilt bytes, see ``wire``).

Contracts:

- **Thread-safe**: one embedder serves every caller of a process (one gRPC channel, one cache,
  one in-flight bound).
- **Input first**: every input is checked (``checks``) before the cache or Triton is asked.
- **Cache**: a vector is cached under (model identity, kind, sha256 of the input); a hit skips
  Triton entirely, and identical inputs within one call are sent once. Results are stored only
  if no reconnect to Triton happened during the call (the model may have changed).
- **Concurrency**: items missing from the cache go to Triton as one request each, all in flight
  at once, so Triton's dynamic batcher batches them with each other and with other callers'.
- **Back-pressure**: at most ``max_in_flight`` requests are in flight from this embedder; a call
  that finds them all taken by others for ``admission_wait_s`` gets ``ResourceExhausted`` with
  ``retry_after_s`` (never an unbounded queue).
- **Deadlines**: every call takes ``timeout`` seconds and returns within it (plus a fraction of a
  second of gRPC bookkeeping), whether Triton answers, hangs or is gone. UNAVAILABLE is retried
  with backoff within the deadline; Triton unreachable is ``Unavailable`` naming the model and
  the address.
- **Recovery**: the gRPC channel reconnects by itself (backoff capped at ``RECONNECT_MAX_MS``),
  so the same embedder works again once Triton is back; no restart of the caller is needed.
- **Identity**: ``identity(kind)`` is read from the model config (``model_identity``), cached,
  and read again after any reconnect or UNAVAILABLE answer (Triton may have restarted with
  other weights) and after ``identity_max_age_s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import grpc
import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2, service_pb2_grpc

from core.channels import close_channel
from core.errors import DeadlineExceeded, DomainError, InvalidArgument
from server.embedding import metrics
from server.embedding.cache import CacheKey, EmbeddingCache, LruCache, Vector
from server.embedding.checks import check_image, check_text
from server.embedding.dispatch import Sender, dispatch
from server.embedding.limiter import InFlightLimiter
from server.embedding.model_info import ModelInfo, ModelStats, parse_config, parse_stats
from server.embedding.triton_errors import RetryPolicy, is_retryable, to_domain
from server.embedding.wire import MODEL_INFER

Kind = Literal["text", "image"]
TEXT: Kind = "text"
IMAGE: Kind = "image"

RECONNECT_MAX_MS = 500
MAX_SEND_BYTES = 64 * 2**20
MAX_RECEIVE_BYTES = 64 * 2**20


def channel_args() -> list[tuple[str, Any]]:
    """gRPC channel options: message sizes that fit one image within the checks' limit, and a
    short reconnect backoff so a restarted Triton is found again within about a second."""
    return [
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
    ]


class TritonEmbedder:
    """See the module doc. ``url``: Triton's gRPC ``host:port``; ``cache``: an
    ``EmbeddingCache`` (``make_cache``), an in-process LRU when None."""

    def __init__(
        self,
        url: str,
        text_model: str = "clip_text",
        image_model: str = "clip_image",
        *,
        max_in_flight: int = 64,
        admission_wait_s: float = 0.25,
        cache: EmbeddingCache | None = None,
        retry: RetryPolicy | None = None,
        identity_max_age_s: float = 60.0,
    ) -> None:
        self.url = url
        self.models: dict[Kind, str] = {TEXT: text_model, IMAGE: image_model}
        self.cache: EmbeddingCache = cache if cache is not None else LruCache()
        self.limiter = InFlightLimiter(max_in_flight)
        self.admission_wait_s = admission_wait_s
        self.retry = retry or RetryPolicy()
        self.identity_max_age_s = identity_max_age_s
        self._lock = threading.Lock()
        self._generation = 0
        self._connected_once = False
        self._state: grpc.ChannelConnectivity | None = None
        self._info: dict[Kind, ModelInfo] = {}
        self._channel: grpc.Channel | None = grpc.insecure_channel(url, options=channel_args())
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        # ModelInfer with bytes in and out: requests are built and responses read by ``wire``.
        infer = self._channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)
        self._sender = Sender(infer, self.limiter, self.retry, admission_wait_s, url, self._stale)
        # Watching the channel is how a reconnect (maybe to a restarted Triton with other
        # weights) is noticed even when no call failed.
        self._channel.subscribe(self._on_connectivity, try_to_connect=False)

    # -- connection generation: bumped when the channel (re)connects or a call saw UNAVAILABLE --

    def _on_connectivity(self, state: grpc.ChannelConnectivity) -> None:
        """Losing the connection, and any READY after the first, make the identity stale: the
        next connection may reach another Triton process (restarted with other weights)."""
        ready = grpc.ChannelConnectivity.READY
        previous, self._state = self._state, state
        if (previous == ready and state != ready) or (state == ready and self._connected_once):
            self._stale()
        if state == ready:
            self._connected_once = True

    def _stale(self) -> None:
        with self._lock:
            self._generation += 1

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation

    # -- model identity --

    def model_info(self, kind: Kind, timeout: float = 5.0) -> ModelInfo:
        """The model's identity, width and tensor names; cached (see the module doc)."""
        return self._model_info(kind, time.monotonic() + timeout)

    def identity(self, kind: Kind, timeout: float = 5.0) -> str:
        """The identity (architecture + weights checksum) of the model that embeds ``kind``."""
        return self.model_info(kind, timeout).identity

    def dim(self, kind: Kind, timeout: float = 5.0) -> int:
        return self.model_info(kind, timeout).dim

    def _model_info(self, kind: Kind, deadline: float) -> ModelInfo:
        with self._lock:
            info, generation = self._info.get(kind), self._generation
        if (
            info is not None
            and info.generation == generation
            and time.monotonic() - info.read_at < self.identity_max_age_s
        ):
            return info
        request = service_pb2.ModelConfigRequest(name=self.models[kind])
        response = self._retrying(lambda t: self._stub.ModelConfig(request, timeout=t), kind, deadline)
        parsed = parse_config(response.config, self.url, generation, time.monotonic())
        with self._lock:
            self._info[kind] = parsed
        return parsed

    def _retrying(self, call: Callable[[float], Any], kind: Kind, deadline: float) -> Any:
        """``call(timeout)`` retried on UNAVAILABLE within ``deadline``; raises its domain error."""
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"Triton at {self.url} did not answer for model {self.models[kind]!r} in time")
            try:
                return call(remaining)
            except grpc.RpcError as e:
                retryable = is_retryable(e)
                if retryable:
                    self._stale()
                pause = self.retry.backoff(attempt)
                if not retryable or attempt >= self.retry.attempts or time.monotonic() + pause >= deadline:
                    raise to_domain(
                        e,
                        model=self.models[kind],
                        url=self.url,
                        what="config",
                        attempts=attempt,
                        retry_after_s=self.limiter.retry_after_s(),
                    ) from None
                time.sleep(pause)

    # -- embedding --

    def embed_texts(self, texts: Sequence[str], timeout: float) -> npt.NDArray[np.float32]:
        """L2-normalised embeddings ``[len(texts), D]`` float32. Raises InvalidArgument (naming
        the index) for a bad text before anything is sent; otherwise the first item's error
        (Unavailable, DeadlineExceeded, ResourceExhausted with ``retry_after_s``, ...)."""
        data: list[bytes] = []
        for i, text in enumerate(texts):
            try:
                data.append(check_text(text))
            except InvalidArgument as e:
                raise InvalidArgument(f"texts[{i}]: {e}") from None
        deadline = self._deadline(timeout)
        if not data:
            return np.empty((0, self._model_info(TEXT, deadline).dim), dtype=np.float32)
        results = self._embed(TEXT, data, deadline)
        for i, result in enumerate(results):
            if isinstance(result, DomainError):
                raise _at(f"texts[{i}]", result) from None
        return np.stack(results).astype(np.float32, copy=False)  # type: ignore[arg-type]

    def embed_text_items(self, texts: Sequence[object], timeout: float) -> list[Vector | DomainError]:
        """Per item: the embedding ``[D]`` or that text's error (a bad text fails alone)."""
        return self._embed_items(TEXT, texts, check_text, timeout)

    def embed_images(self, images: Sequence[bytes], timeout: float) -> list[Vector | DomainError]:
        """Per item: the embedding ``[D]`` of an encoded image (JPEG, PNG, WebP), or that image's
        error: InvalidArgument for an empty, oversize, corrupt, truncated or unsupported image
        (the others still succeed); Unavailable / DeadlineExceeded / ResourceExhausted when
        Triton could not embed it. Never raises a DomainError."""
        return self._embed_items(IMAGE, images, check_image, timeout)

    def _embed_items(
        self, kind: Kind, items: Sequence[object], check: Callable[[object], bytes], timeout: float
    ) -> list[Vector | DomainError]:
        out: list[Vector | DomainError | None] = [None] * len(items)
        data: list[bytes] = []
        where: list[int] = []
        for i, item in enumerate(items):
            try:
                data.append(check(item))
                where.append(i)
            except InvalidArgument as e:
                out[i] = e
        deadline = self._deadline(timeout)
        if data:
            try:
                results = self._embed(kind, data, deadline)
            except DomainError as e:  # the model's identity could not be read: every item fails
                results = [e] * len(data)
            for i, result in zip(where, results, strict=True):
                out[i] = result
        return [r for r in out if r is not None]

    @staticmethod
    def _deadline(timeout: float) -> float:
        if not timeout > 0:
            raise InvalidArgument(f"timeout must be positive, not {timeout}")
        return time.monotonic() + timeout

    def _embed(self, kind: Kind, data: Sequence[bytes], deadline: float) -> list[Vector | DomainError]:
        """Cache, then Triton for the misses (each distinct input once)."""
        info = self._model_info(kind, deadline)
        keys = [CacheKey.of(info.identity, kind, d) for d in data]
        out: list[Vector | DomainError | None] = [
            v if v is not None and v.shape == (info.dim,) else None for v in self.cache.get_many(keys)
        ]
        first: dict[CacheKey, int] = {}
        for i, key in enumerate(keys):
            if out[i] is None:
                first.setdefault(key, i)
        cached = len(keys) - sum(1 for v in out if v is None)
        failed = 0
        if first:
            sent = list(first.values())
            results = dispatch(self._sender, info, [data[i] for i in sent], deadline, kind)
            by_key = {keys[i]: r for i, r in zip(sent, results, strict=True)}
            for i, key in enumerate(keys):
                if out[i] is None:
                    out[i] = by_key[key]
            if self.generation == info.generation:
                self.cache.put_many([(k, r) for k, r in by_key.items() if not isinstance(r, DomainError)])
            failed = sum(1 for r in out if isinstance(r, DomainError))
        metrics.items(kind, cached, len(keys) - cached - failed, failed)
        return [r for r in out if r is not None]

    # -- operations --

    def model_stats(self, kind: Kind, timeout: float = 5.0) -> ModelStats:
        """Triton's counters for the model of ``kind`` (items inferred, executions)."""
        name = self.models[kind]
        request = service_pb2.ModelStatisticsRequest(name=name)
        response = self._retrying(
            lambda t: self._stub.ModelStatistics(request, timeout=t), kind, time.monotonic() + timeout
        )
        return parse_stats(response, name)

    def ready(self, timeout: float = 1.0) -> bool:
        """True if Triton is up and both models are READY (one quick check, no retries)."""
        stub = self._stub
        try:
            return bool(
                stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=timeout).ready
                and all(
                    stub.ModelReady(service_pb2.ModelReadyRequest(name=m), timeout=timeout).ready
                    for m in self.models.values()
                )
            )
        except grpc.RpcError:
            return False

    def close(self) -> None:
        if self._channel is not None:
            self._channel.unsubscribe(self._on_connectivity)
            close_channel(self._channel)
            self._channel = None

    def __enter__(self) -> TritonEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _at(where: str, error: DomainError) -> DomainError:
    """An InvalidArgument with ``where`` (the input the caller can point at) in front of its
    message; any other error as it is (it is about Triton, not the input)."""
    return InvalidArgument(f"{where}: {error}") if isinstance(error, InvalidArgument) else error
