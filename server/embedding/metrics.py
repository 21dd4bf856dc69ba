"""Prometheus metrics of the embedder (issue #17): requests to Triton by kind and outcome, their
latency, how many items a call sends to Triton together, cache lookups, and items embedded.

Registered in prometheus-client's default registry, like ``core.metrics`` and ``shard.metrics``,
so a server started with ``--metrics-listen`` exports them beside its RPC metrics; they exist
only in a process that imports ``server.embedding`` (a server with ``--triton-url``).

The other embedding modules call the functions below and nothing else of prometheus-client. Label
children are made once per label tuple and cached, so a call costs a dict lookup per metric.
Cache hit ratio: ``hit / (hit + miss)`` of ``vs_embedding_cache_lookups_total``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

from server.embedding.triton_errors import status_of

# From 1 ms (a cached-warm text tower) to 30 s (a large image under load, the longest deadline).
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_ITEMS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
KINDS = ("text", "image")

TRITON_REQUESTS = Counter(
    "vs_embedding_triton_requests",
    "ModelInfer requests sent to Triton (one item each; every retry counts), by kind (text/image) and "
    "outcome (OK or the gRPC status code)",
    ["kind", "code"],
)
TRITON_SECONDS = Histogram(
    "vs_embedding_triton_request_duration_seconds",
    "latency of one ModelInfer request to Triton, from send to answer or error, by kind and outcome",
    ["kind", "code"],
    buckets=_SECONDS_BUCKETS,
)
BATCH_ITEMS = Histogram(
    "vs_embedding_batch_items",
    "items one embedding call sends to Triton together (the cache misses, each distinct input once; one "
    "request each, all in flight at once for Triton's dynamic batcher), by kind",
    ["kind"],
    buckets=_ITEMS_BUCKETS,
)
CACHE_LOOKUPS = Counter(
    "vs_embedding_cache_lookups",
    "embedding cache lookups, one per item, by cache (memory/redis) and result (hit/miss)",
    ["cache", "result"],
)
ITEMS = Counter(
    "vs_embedding_items",
    "items the embedder answered, by kind and result: cached (from the cache), embedded (by Triton), "
    "failed (a Triton error, deadline or back-pressure)",
    ["kind", "result"],
)

_requests: dict[tuple[str, str], tuple[Any, Any]] = {}
_batches: dict[str, Any] = {}
_lookups: dict[str, tuple[Any, Any]] = {}
_items: dict[str, tuple[Any, Any, Any]] = {}


def triton_request(kind: str, error: object | None, seconds: float) -> None:
    """One ModelInfer request of ``kind`` ended after ``seconds``: answered (``error`` None) or
    failed with ``error`` (a ``grpc.RpcError`` or ``wire.CallFailure``)."""
    key = (kind, "OK" if error is None else status_of(error))
    pair = _requests.get(key)
    if pair is None:
        pair = _requests[key] = (TRITON_REQUESTS.labels(*key), TRITON_SECONDS.labels(*key))
    pair[0].inc()
    pair[1].observe(seconds)


def batch(kind: str, items: int) -> None:
    """One embedding call sends ``items`` items of ``kind`` to Triton."""
    child = _batches.get(kind)
    if child is None:
        child = _batches[kind] = BATCH_ITEMS.labels(kind)
    child.observe(items)


def cache_lookups(cache: str, hits: int, misses: int) -> None:
    """``hits`` and ``misses`` of one lookup of cache ``cache`` ("memory", "redis")."""
    pair = _lookups.get(cache)
    if pair is None:
        pair = _lookups[cache] = (CACHE_LOOKUPS.labels(cache, "hit"), CACHE_LOOKUPS.labels(cache, "miss"))
    if hits:
        pair[0].inc(hits)
    if misses:
        pair[1].inc(misses)


def items(kind: str, cached: int, embedded: int, failed: int) -> None:
    """The items of one embedder call of ``kind``, by where their answer came from."""
    children = _items.get(kind)
    if children is None:
        children = _items[kind] = (
            ITEMS.labels(kind, "cached"),
            ITEMS.labels(kind, "embedded"),
            ITEMS.labels(kind, "failed"),
        )
    for child, count in zip(children, (cached, embedded, failed), strict=True):
        if count:
            child.inc(count)


# Zero-valued series from the start, so rates and the hit ratio exist before the first call.
for _kind in KINDS:
    _requests[(_kind, "OK")] = (TRITON_REQUESTS.labels(_kind, "OK"), TRITON_SECONDS.labels(_kind, "OK"))
    _batches[_kind] = BATCH_ITEMS.labels(_kind)
    items(_kind, 0, 0, 0)
