"""Prometheus metrics shared by every process (issue #17): per-RPC counts and latencies from one
gRPC server interceptor, the ``--metrics-listen`` HTTP endpoint, and the router's metrics.

Metrics live in prometheus-client's default registry: one process serves one endpoint, and a
single-node server (which owns a shard in its own process) exports both sets from it.

The interceptor costs one ``perf_counter`` pair and a dict lookup per call: the label children
of a (method, code) pair are cached, so the hot path never builds label tuples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from core import interceptors

log = logging.getLogger(__name__)

# Latency buckets from 100 µs (a small exact search) to 30 s (a compaction waited for).
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

RPC_REQUESTS = Counter("vs_rpc_requests", "gRPC calls served, by full method name and status code", ["method", "code"])
RPC_SECONDS = Histogram(
    "vs_rpc_duration_seconds",
    "gRPC call latency on the serving side (for response streams: until the last message)",
    ["method", "code"],
    buckets=_BUCKETS,
)

# router/fanout.py: a search answered without some shard (SearchOutcome.partial).
FANOUT_PARTIAL = Counter(
    "vs_fanout_partial_results", "searches answered partially, by the shard that did not answer", ["shard"]
)
# router/rebalance.py: the latest rebalance as this server's coordinator loop last read it.
REBALANCE_STATE = Gauge(
    "vs_rebalance_state", "1 for the state of the latest rebalance (all 0 when there was none)", ["state"]
)
REBALANCE_ITEMS_COPIED = Gauge("vs_rebalance_items_copied", "items copied by the latest rebalance's moves")
# server/ratelimit.py: calls refused with RESOURCE_EXHAUSTED by a rate limit or the concurrency cap.
RATE_LIMITED = Counter(
    "vs_rate_limited", "calls refused by a limit: requests or items per second, or concurrency", ["limit"]
)


class _Children:
    """(counter, histogram) label children per (method, code), made once."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        key = (method, code)
        pair = self._cache.get(key)
        if pair is None:
            pair = (RPC_REQUESTS.labels(method, code.name), RPC_SECONDS.labels(method, code.name))
            self._cache[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)


def _code(context: grpc.ServicerContext, failed: bool) -> grpc.StatusCode:
    """The status the call ends with: what the handler set or aborted with; OK when it returned
    without one, UNKNOWN when it raised without one (as grpcio answers)."""
    code = getattr(context, "code", lambda: None)()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if failed else grpc.StatusCode.OK


class MetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Counts and times every RPC of the server it is installed on (``grpc.server(...,
    interceptors=[MetricsInterceptor()])``), by full method name and status code."""

    def __init__(self) -> None:
        self._children = _Children()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        observe = self._children.observe
        return interceptors.rewrap(
            handler, lambda behavior, _, streamed: (_timed_stream if streamed else _timed)(behavior, method, observe)
        )


_Observe = Callable[[str, grpc.StatusCode, float], None]


def _timed(behavior: Callable[[Any, grpc.ServicerContext], Any], method: str, observe: _Observe) -> Any:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.perf_counter()
        failed = True
        try:
            reply = behavior(request, context)
            failed = False
            return reply
        finally:
            observe(method, _code(context, failed), time.perf_counter() - started)

    return call


def _timed_stream(
    behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]], method: str, observe: _Observe
) -> Any:
    def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started = time.perf_counter()
        failed = True
        try:
            yield from behavior(request, context)
            failed = False
        finally:
            observe(method, _code(context, failed), time.perf_counter() - started)

    return call


def serve(listen: str) -> str:
    """Serves ``/metrics`` of the default registry on ``listen`` (HOST:PORT, port 0 = any) from
    a daemon thread; returns the bound HOST:PORT."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    httpd, _thread = start_http_server(int(port), addr=host)
    bound = f"{host}:{httpd.server_port}"
    log.info("metrics on http://%s/metrics", bound)
    return bound


def write_address(ready_file: str, address: str) -> None:
    """Writes the metrics address atomically to ``<ready_file>.metrics`` (when a ready file is
    used), before the ready file itself, so a caller that saw the ready file finds it."""
    if not ready_file:
        return
    target = Path(ready_file + ".metrics")
    tmp = Path(ready_file + ".metrics.tmp")
    tmp.write_text(address)
    tmp.replace(target)
