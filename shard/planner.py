"""Filtered search over one collection's layers: the per-query plan (docs/filtered-search.md §6).

A filter is evaluated on every layer as of the reader's view (``shard/filtering.py``), which
gives the exact number of matching items per layer before any vector is touched. Then:

* delta layers (at most ``compact_delta_items`` rows) are always searched exactly, with the
  rows that do not match hidden;
* the graph is searched by the cheaper of two plans under a cost model with two constants
  (``PlanCosts``): exact search over the matching labels costs ``exact_row_us`` per label;
  a graph search costs ``graph_node_us`` per node it visits, about ``E * N / m`` for ``m`` of
  ``N`` labels allowed and ``E = max(ef, k)`` results wanted (Lucene and Qdrant pick the same
  way). A filter that matches every live label is a plain graph search; one that matches none
  skips the graph.

The graph plan (``filtered-graph``) asks hnswlib for ``ceil(1.2 * E * N / m)`` candidates and
keeps the allowed ones; a query left with fewer than ``min(k, m)`` widens its candidate list
fourfold inside the shard (no round trip), and once the next widening would cost more than the
exact plan it is answered exactly. So every query gets ``min(k, m)`` results: recall is the
graph's, never a short page.

Thread-safety: pure functions over published, immutable layer state (a ``Graph`` and the rows
of a ``Delta`` below the ``rows`` the caller read); any number run concurrently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.filters import Filter
from core.vectors import Matrix
from shard import exact
from shard.delta import Delta
from shard.fields import ColumnIndex
from shard.filtering import evaluate
from shard.graph import Graph
from shard.labelset import LabelSet

PLAN_GRAPH = "graph"
"""No filter, or the filter matches every live item of the graph: a plain graph search."""
PLAN_EXACT = "exact"
"""Exact search over the matching items."""
PLAN_FILTERED_GRAPH = "filtered-graph"
"""Graph search keeping the allowed candidates, widened in the shard while a query is short."""
PLAN_EMPTY = "empty"
"""Nothing matches: no vector is touched."""
PLANS = (PLAN_GRAPH, PLAN_EXACT, PLAN_FILTERED_GRAPH, PLAN_EMPTY)

FORCE_AUTO = "auto"
FORCE_EXACT = "exact"
FORCE_GRAPH = "graph"

_OVERSAMPLE = 1.2
_WIDEN = 4

Part = tuple[npt.NDArray[np.object_], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class PlanCosts:
    """The cost model's constants (microseconds) and an override for tests and benchmarks:
    ``force`` = ``"exact"`` or ``"graph"`` takes that plan whenever some but not all labels
    match."""

    exact_row_us: float = 0.3
    graph_node_us: float = 1.0
    force: str = FORCE_AUTO

    def __post_init__(self) -> None:
        if self.force not in (FORCE_AUTO, FORCE_EXACT, FORCE_GRAPH):
            raise ValueError(f"force must be auto, exact or graph, got {self.force!r}")
        if self.exact_row_us <= 0 or self.graph_node_us <= 0:
            raise ValueError("plan costs must be positive")


@dataclass
class GraphOutcome:
    """The graph's part of a filtered search and what it took."""

    part: Part | None  # None: search the graph unfiltered (every live label matches)
    plan: str
    matched: int
    scored: int = 0  # labels scored exactly, or graph candidates taken
    candidates: int = 0  # the largest candidate list asked of the graph
    widenings: int = 0


def graph_universe(graph: Graph, view_seq: int) -> LabelSet:
    """The graph's labels visible at ``view_seq``: live, and not superseded by a delta write
    with seq <= ``view_seq``."""
    live = graph.fields.live
    if graph.shadowed == 0:
        return live
    hidden = graph.shadow_seq[: graph.elements] <= view_seq
    if not hidden.any():
        return live
    return live - LabelSet(graph.elements, dense=hidden)


def search_graph(
    graph: Graph, node: Filter, queries: Matrix, k: int, ef: int, view_seq: int, costs: PlanCosts, threads: int
) -> GraphOutcome:
    """The graph's top-``k`` per query among its visible labels that match ``node``
    (``ef``: the candidate list of an unfiltered search, already at least ``k``)."""
    universe = graph_universe(graph, view_seq)
    allowed = evaluate(node, graph.fields.index, universe)
    m, n = allowed.count, universe.count
    nq = len(queries)
    if m == 0:
        return GraphOutcome(_empty(nq), PLAN_EMPTY, 0)
    if m == n:
        return GraphOutcome(None, PLAN_GRAPH, m)
    exact_cost = costs.exact_row_us * m
    graph_cost = costs.graph_node_us * ef * n / m
    use_exact = costs.force == FORCE_EXACT or (costs.force == FORCE_AUTO and (m <= 2 * ef or exact_cost <= graph_cost))
    if use_exact:
        labels = allowed.labels().astype(np.int64)
        return GraphOutcome(_exact_part(graph, queries, labels, k), PLAN_EXACT, m, scored=m)
    return _postfiltered(graph, allowed, queries, k, ef, n, costs, threads)


def _postfiltered(
    graph: Graph, allowed: LabelSet, queries: Matrix, k: int, ef: int, n: int, costs: PlanCosts, threads: int
) -> GraphOutcome:
    m = allowed.count
    mask = allowed.mask()
    nq = len(queries)
    take = min(k, m)
    out_labels = np.full((nq, take), -1, dtype=np.int64)
    out_dist = np.full((nq, take), np.inf, dtype=np.float32)
    want = min(graph.live, math.ceil(_OVERSAMPLE * ef * n / m))
    pending = np.arange(nq)
    outcome = GraphOutcome(None, PLAN_FILTERED_GRAPH, m)
    while len(pending):
        outcome.candidates = max(outcome.candidates, want)
        labels, dist = graph.knn(queries[pending], want, want, min(len(pending), threads))
        outcome.scored += labels.size
        keep = mask[labels]
        short = []
        for row, query in enumerate(pending.tolist()):
            found = np.flatnonzero(keep[row])[:take]
            if len(found) < take:
                short.append(query)
                continue
            out_labels[query] = labels[row, found]
            out_dist[query] = dist[row, found]
        if not short:
            break
        pending = np.array(short, dtype=np.int64)
        exhausted = labels.shape[1] >= graph.live
        if exhausted or costs.graph_node_us * want * _WIDEN > costs.exact_row_us * m:
            # The graph holds too few allowed labels near these queries: answer them exactly.
            labels_exact = allowed.labels().astype(np.int64)
            found_labels, found_dist = _exact_labels(graph, queries[pending], labels_exact, take)
            out_labels[pending] = found_labels
            out_dist[pending] = found_dist
            outcome.scored += m * len(pending)
            break
        want = min(graph.live, want * _WIDEN)
        outcome.widenings += 1
    outcome.part = (graph.ids_of(out_labels), out_dist)
    return outcome


def _exact_labels(
    graph: Graph, queries: Matrix, labels: npt.NDArray[np.int64], k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    order, best = exact.search(queries, graph.vectors(labels), graph.index.space, k)
    return labels[order], best


def _exact_part(graph: Graph, queries: Matrix, labels: npt.NDArray[np.int64], k: int) -> Part:
    found, best = _exact_labels(graph, queries, labels, k)
    return graph.ids_of(found), best


def _empty(nq: int) -> Part:
    return np.empty((nq, 0), dtype=object), np.empty((nq, 0), dtype=np.float32)


def search_delta(
    layer: Delta, node: Filter | None, queries: Matrix, k: int, view_seq: int, space: str
) -> tuple[Part, int]:
    """Exact top-``k`` per query over the delta's rows visible at ``view_seq`` that match
    ``node`` (None: every visible row), and how many rows that is."""
    rows = layer.rows  # before the blocks and the columns (see delta.py)
    blocks = list(layer.blocks(rows))
    if not blocks:
        return _empty(len(queries)), 0
    visible = np.concatenate([b.visible(view_seq) for b in blocks])
    if node is None:
        allowed = visible
    else:
        allowed = evaluate(node, ColumnIndex(layer.columns, rows), LabelSet(rows, dense=visible)).mask()
    matched = int(np.count_nonzero(allowed))
    if matched == 0:
        return _empty(len(queries)), 0
    order, best = exact.search(queries, [b.vectors for b in blocks], space, k, ~allowed)
    ids = layer.ids
    names = np.array([ids[i] for i in order.ravel().tolist()], dtype=object).reshape(order.shape)
    return (names, best), matched
