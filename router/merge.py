"""Merging per-shard top-k results into one top-k list (pure functions, no I/O).

Contracts:

- Order: hits are ranked by ``(distance, id)`` ascending; lower distance is closer, and equal
  distances are broken by id (Python string order, i.e. by code point), so the result is
  deterministic whatever the order in which shards answered or listed their hits.
- De-duplication: an id appears at most once in a result, with the best (smallest) distance it
  had in any shard. An id lives on two shards while it is moving between them, and both answer.
- NaN distances are ignored (a NaN is not comparable, so it cannot be ranked); ±inf are kept.
- Cost: O(total hits) to de-duplicate plus O(unique · log k) to select, via ``heapq.nsmallest``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["Hit", "merge_batches", "merge_top_k"]


class Hit(NamedTuple):
    """One search result: an id and its distance to the query (lower is closer). A named tuple:
    immutable, and cheap to make by the thousand on the search path."""

    id: str
    distance: float


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be an int > 0, got {k!r}")


def _rank(hit: Hit) -> tuple[float, str]:
    return (hit.distance, hit.id)


def merge_top_k(per_shard: Sequence[Sequence[Hit]], k: int) -> list[Hit]:
    """The ``k`` best hits over all shards, ordered by ``(distance, id)``.

    ``per_shard[s]`` is shard ``s``'s hits in any order. Ids are de-duplicated, keeping the
    smallest distance; NaN distances are dropped. Fewer than ``k`` hits come back when fewer
    unique ids remain. The result does not depend on the order of the shards or of the hits
    within each shard. The inputs are not modified; the returned ``Hit`` objects are the input
    objects. Raises ``ValueError`` if ``k`` is not an int > 0.
    """
    _check_k(k)
    best: dict[str, Hit] = {}
    for hits in per_shard:
        for hit in hits:
            distance = hit.distance
            if math.isnan(distance):
                continue
            seen = best.get(hit.id)
            if seen is None or distance < seen.distance:
                best[hit.id] = hit
    return heapq.nsmallest(k, best.values(), key=_rank)


def merge_batches(
    per_shard: Sequence[Sequence[Sequence[Hit]]],
    k: int,
    *,
    num_queries: int | None = None,
) -> list[list[Hit]]:
    """Merge a batch of queries: result ``i`` is :func:`merge_top_k` over ``per_shard[s][i]``.

    ``per_shard[s]`` is shard ``s``'s answer to the whole batch, one hit list per query. Every
    shard must answer the same number of queries, else ``ValueError``. With no shards the batch
    size is unknown, so ``[]`` comes back unless ``num_queries`` is given; when given, every
    shard must answer exactly that many queries, and no shards give ``num_queries`` empty lists.
    Raises ``ValueError`` if ``k`` is not an int > 0 or ``num_queries`` is negative.
    """
    _check_k(k)
    if num_queries is not None and (isinstance(num_queries, bool) or num_queries < 0):
        raise ValueError(f"num_queries must be an int >= 0, got {num_queries!r}")
    counts = {len(batch) for batch in per_shard}
    if num_queries is not None:
        counts.add(num_queries)
    if len(counts) > 1:
        detail = ", ".join(str(len(batch)) for batch in per_shard)
        expected = "" if num_queries is None else f" (expected {num_queries})"
        raise ValueError(f"shards disagree on the number of queries: {detail}{expected}")
    n = counts.pop() if counts else 0
    return [merge_top_k([batch[i] for batch in per_shard], k) for i in range(n)]
