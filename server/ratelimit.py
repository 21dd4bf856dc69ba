"""Rate limits and back-pressure of the public server (issue #18): one gRPC server interceptor.

Per caller (the ``key_id`` of ``core.principal.current()``: an API key, or ``open`` when the
server has no keys) two token buckets (``core.ratelimit``): requests a second and items a
second, where the items of a call are what it carries (vectors, ids, texts, images; per message
of a client stream). The rates are the principal's own ``requests_per_s`` / ``items_per_s``
when set (0 there: unlimited), else the server's flags; 0 everywhere (the default) limits
nothing. Per process, ``--max-concurrent-requests`` bounds the calls served at once (a stream
counts while it is open). gRPC health checks are never limited.

A call over a limit does no work: it ends with RESOURCE_EXHAUSTED, a message naming the limit,
and ``retry-after-ms`` trailing metadata (``core.status.RETRY_AFTER_KEY``): when the bucket
will hold the tokens the call needs. A message of a client stream (UpsertStream,
IngestImages, IngestTexts) that is over the items rate waits for its tokens instead, while
they are due within the call's deadline and at most :data:`STREAM_WAIT_MAX_S` from now (gRPC
flow control then holds the sender back); otherwise the stream ends with the same
RESOURCE_EXHAUSTED (the messages before it were applied; the servicer's message says how many
items). Refusals are counted in ``vs_rate_limited_total{limit=requests|items|concurrency}``.

Installed after ``core.logs.RequestInterceptor`` (the refusal carries the request id) and after
the API-key interceptor, which binds the principal this one reads.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from core import interceptors, metrics, principal, status
from core.errors import ResourceExhausted
from core.principal import Principal
from core.ratelimit import DEFAULT_MAX_KEYS, Clock, ConcurrencyLimit, KeyedLimiter, burst_of

HEALTH_PREFIX = "/grpc.health.v1.Health/"
CONCURRENCY_RETRY_S = 0.05
"""The retry hint of a call refused by the concurrency cap (no bucket says when a slot frees)."""
STREAM_WAIT_MAX_S = 5.0
"""The longest a client stream's message waits for its items' tokens before it is refused."""
_POLL_S = 0.05

_ITEM_FIELDS = {
    "vectorsearch.v1.UpsertRequest": "items",
    "vectorsearch.v1.DeleteRequest": "ids",
    "vectorsearch.v1.GetRequest": "ids",
    "vectorsearch.v1.SearchByTextRequest": "texts",
    "vectorsearch.v1.SearchByImageRequest": "images",
    "vectorsearch.v1.IngestImagesRequest": "items",
    "vectorsearch.v1.IngestTextsRequest": "items",
}


def items_of(message: Any) -> int:
    """How many items a request message carries (0 for calls that carry none, and for a message
    that did not parse: it is refused as INVALID_ARGUMENT anyway)."""
    descriptor = getattr(message, "DESCRIPTOR", None)
    if descriptor is None:
        return 0
    name = descriptor.full_name
    field = _ITEM_FIELDS.get(name)
    if field is not None:
        return len(getattr(message, field))
    if name == "vectorsearch.v1.SearchRequest":
        return _rows(message.queries)
    if name == "vectorsearch.v1.SearchByIdRequest":
        return 1
    return 0


def _rows(vectors: Any) -> int:
    """Query vectors in a ``Vectors`` message: the declared rows, else inferred (at least 1)."""
    if vectors.rows:
        return int(vectors.rows)
    dim = max(1, int(vectors.dimension))
    if vectors.values:
        return max(1, len(vectors.values) // dim)
    width = 8 if vectors.element_type == 2 else 4  # ELEMENT_TYPE_FLOAT64
    return max(1, len(vectors.packed) // (dim * width))


@dataclass(frozen=True)
class RateLimits:
    """The server's defaults (flags). Rates <= 0 and ``max_concurrent`` <= 0 are unlimited."""

    requests_per_s: float = 0.0
    items_per_s: float = 0.0
    burst_s: float = 1.0
    max_concurrent: int = 0
    max_keys: int = DEFAULT_MAX_KEYS

    @property
    def unlimited(self) -> bool:
        """No default limit at all (a key's own limits may still apply)."""
        return self.requests_per_s <= 0 and self.items_per_s <= 0 and self.max_concurrent <= 0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RateLimits:
        return cls(
            requests_per_s=args.rate_limit_requests_per_s,
            items_per_s=args.rate_limit_items_per_s,
            burst_s=args.rate_limit_burst_s,
            max_concurrent=args.max_concurrent_requests,
            max_keys=args.rate_limit_max_keys,
        )


def add_arguments(p: argparse.ArgumentParser, env: Callable[[str, str], str]) -> None:
    """The flags of :class:`RateLimits` (``env``: the server's ``VS_SERVER_*`` reader)."""
    p.add_argument(
        "--rate-limit-requests-per-s",
        type=float,
        default=float(env("rate_limit_requests_per_s", "0")),
        help="calls a second per caller (API key; 'open' without keys) unless its key sets its own; 0: unlimited",
    )
    p.add_argument(
        "--rate-limit-items-per-s",
        type=float,
        default=float(env("rate_limit_items_per_s", "0")),
        help="items a second per caller (vectors, ids, texts, images of its calls); 0: unlimited",
    )
    p.add_argument(
        "--rate-limit-burst-s",
        type=float,
        default=float(env("rate_limit_burst_s", "1")),
        help="a caller may spend this many seconds of its rates at once (the buckets' size; at least 1)",
    )
    p.add_argument(
        "--rate-limit-max-keys",
        type=int,
        default=int(env("rate_limit_max_keys", str(DEFAULT_MAX_KEYS))),
        help="callers whose buckets are kept (least recently seen forgotten: they start full again)",
    )
    p.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=int(env("max_concurrent_requests", "0")),
        help="calls served at once by this process, streams while open, health checks not counted; "
        "more are RESOURCE_EXHAUSTED; 0: unlimited",
    )


def _current_principal(context: grpc.ServicerContext) -> Principal:
    return principal.current()


class RateLimitInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """See the module docstring. ``principal_of(context)`` says who calls (default: the
    principal bound by the API-key interceptor, ``core.principal.current()``)."""

    def __init__(
        self,
        limits: RateLimits,
        principal_of: Callable[[grpc.ServicerContext], Principal] = _current_principal,
        clock: Clock = time.monotonic,
        keys_enforced: Callable[[], bool] = lambda: True,
    ) -> None:
        self.limits = limits
        self.principal_of = principal_of
        self.keys_enforced = keys_enforced
        self.requests = KeyedLimiter(limits.max_keys, clock)
        self.items = KeyedLimiter(limits.max_keys, clock)
        self.concurrency = ConcurrencyLimit(limits.max_concurrent)
        self._refused = {name: metrics.RATE_LIMITED.labels(name) for name in ("requests", "items", "concurrency")}

    # ------------------------------------------------------------------ the decisions
    def _rates(self, who: Principal) -> tuple[float, float]:
        requests = who.requests_per_s if who.requests_per_s is not None else self.limits.requests_per_s
        items = who.items_per_s if who.items_per_s is not None else self.limits.items_per_s
        return requests, items

    def _refusal(self, limit: str, retry_after_s: float, message: str) -> ResourceExhausted:
        self._refused[limit].inc()
        return ResourceExhausted(message, retry_after_s=max(0.001, retry_after_s))

    def _items_wait(self, who: Principal, n: int) -> tuple[float, float]:
        """(seconds until ``n`` items' tokens are due, 0.0 when taken; the items rate)."""
        rate = self._rates(who)[1]
        if rate <= 0 or n <= 0:
            return 0.0, rate
        return self.items.take(who.key_id, n, rate, burst_of(rate, self.limits.burst_s)), rate

    def _items_refusal(self, who: Principal, n: int, wait: float, rate: float) -> ResourceExhausted:
        return self._refusal(
            "items",
            wait,
            f"rate limit: caller {who.key_id!r} may send {rate:g} items a second and this message "
            f"carries {n}; retry in {wait:.3f} s",
        )

    def admit(self, context: grpc.ServicerContext, items: int) -> Principal:
        """Takes a concurrency slot, a request token and ``items`` item tokens; raises
        ResourceExhausted (and holds nothing) when any is not there."""
        who = self.principal_of(context)
        if not self.concurrency.try_acquire():
            raise self._refusal(
                "concurrency",
                CONCURRENCY_RETRY_S,
                f"server busy: {self.limits.max_concurrent} calls are in flight, the most it serves at once; retry",
            )
        try:
            rate = self._rates(who)[0]
            if rate > 0:
                wait = self.requests.take(who.key_id, 1, rate, burst_of(rate, self.limits.burst_s))
                if wait > 0:
                    raise self._refusal(
                        "requests",
                        wait,
                        f"rate limit: caller {who.key_id!r} may make {rate:g} calls a second; retry in {wait:.3f} s",
                    )
            wait, item_rate = self._items_wait(who, items)
            if wait > 0:
                raise self._items_refusal(who, items, wait, item_rate)
        except BaseException:
            self.concurrency.release()
            raise
        return who

    def paced(self, who: Principal, messages: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        """A client stream's messages, each once its items' tokens were taken (see the module
        docstring: it waits while they are due soon, else ResourceExhausted)."""
        for message in messages:
            n = items_of(message)
            while True:
                wait, rate = self._items_wait(who, n)
                if wait <= 0:
                    break
                remaining = context.time_remaining()
                if wait > STREAM_WAIT_MAX_S or (remaining is not None and wait >= remaining):
                    raise self._items_refusal(who, n, wait, rate)
                _sleep(context, wait)
            yield message

    # ------------------------------------------------------------------ the interceptor
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(HEALTH_PREFIX):
            return handler
        if self.limits.unlimited and not self.keys_enforced():
            # No default limits and every caller is OPEN (no per-key limits): nothing to check,
            # and no per-call wrapper to pay for (the default configuration).
            return handler
        wraps = {
            (False, False): self._unary,
            (True, False): self._client_stream,
            (False, True): self._response_stream,
            (True, True): self._both_streams,
        }
        return interceptors.rewrap(handler, lambda behavior, ins, outs: wraps[ins, outs](behavior, method))

    def _admit_or_abort(self, context: grpc.ServicerContext, items: int, method: str) -> Principal:
        try:
            return self.admit(context, items)
        except ResourceExhausted as exc:
            status.abort(context, exc, method)

    def _unary(self, behavior: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Any:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            self._admit_or_abort(context, items_of(request), method)
            try:
                return behavior(request, context)
            finally:
                self.concurrency.release()

        return call

    def _client_stream(self, behavior: Callable[[Iterator[Any], grpc.ServicerContext], Any], method: str) -> Any:
        def call(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            who = self._admit_or_abort(context, 0, method)
            try:
                return behavior(self.paced(who, requests, context), context)
            finally:
                self.concurrency.release()

        return call

    def _response_stream(self, behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]], method: str) -> Any:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            self._admit_or_abort(context, items_of(request), method)
            try:
                yield from behavior(request, context)
            finally:
                self.concurrency.release()

        return call

    def _both_streams(
        self, behavior: Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]], method: str
    ) -> Any:
        def call(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            who = self._admit_or_abort(context, 0, method)
            try:
                yield from behavior(self.paced(who, requests, context), context)
            finally:
                self.concurrency.release()

        return call


def _sleep(context: grpc.ServicerContext, seconds: float) -> None:
    """Sleeps ``seconds``, less when the call ends meanwhile (the next read then fails)."""
    deadline = time.monotonic() + seconds
    while context.is_active():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, _POLL_S))
