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
from shard import exact, hnsw
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
    """The cost model's constants (microseconds; None: the measured defaults of the index at
    hand, native or not) and an override for tests and benchmarks: ``force`` = ``"exact"`` or
    ``"graph"`` takes that plan whenever some but not all labels match."""

    exact_row_us: float | None = None
    graph_node_us: float | None = None
    force: str = FORCE_AUTO

    def __post_init__(self) -> None:
        if self.force not in (FORCE_AUTO, FORCE_EXACT, FORCE_GRAPH):
            raise ValueError(f"force must be auto, exact or graph, got {self.force!r}")
        if any(c is not None and c <= 0 for c in (self.exact_row_us, self.graph_node_us)):
            raise ValueError("plan costs must be positive")

    def of(self, native: bool) -> tuple[float, float]:
        """(µs per label scored exactly, µs per unit of E·N/m of graph search) for a native
        index or an hnswlib one."""
        exact_us, graph_us = _NATIVE_COSTS if native else _NUMPY_COSTS
        return (
            exact_us if self.exact_row_us is None else self.exact_row_us,
            graph_us if self.graph_node_us is None else self.graph_node_us,
        )


# Measured on 50k real MiniLM 384-d embeddings (bench/data/minilm), M 16, one thread: native
# exact_query 0.06-0.11 µs a label (5k-25k labels); the native masked graph search ("sweep")
# about 0.66 x the unfiltered search / selectivity, i.e. ~3.5 µs per unit of E·N/m (an
# unfiltered search at ef 64 took 350 µs); without the module, numpy gather + exact 0.3-0.45 µs
# a label and hnswlib's unfiltered search for 1.2·E·N/m candidates ~5 µs per unit. (Clustered
# synthetic data is ~4x cheaper to traverse; the crossover moves with it, the plans stay exact.)
_NATIVE_COSTS = (0.1, 3.5)
_NUMPY_COSTS = (0.4, 5.0)


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
    native = hnsw.is_native(graph.index)
    exact_us, graph_us = costs.of(native)
    use_exact = costs.force == FORCE_EXACT or (
        costs.force == FORCE_AUTO and (m <= 2 * ef or exact_us * m <= graph_us * ef * n / m)
    )
    if use_exact:
        labels = allowed.labels().astype(np.int64)
        return GraphOutcome(_exact_part(graph, queries, labels, k, threads), PLAN_EXACT, m, scored=m)
    if native:
        return _masked(graph, allowed, queries, k, ef, threads)
    return _postfiltered(graph, allowed, queries, k, ef, n, (exact_us, graph_us), threads)


def _masked(graph: Graph, allowed: LabelSet, queries: Matrix, k: int, ef: int, threads: int) -> GraphOutcome:
    """The native graph search with the allowed labels checked per candidate in C++ (it keeps
    expanding until it holds ``ef`` allowed results); a query it leaves short (allowed labels
    out of its reach) is answered exactly."""
    m = allowed.count
    take = min(k, m)
    want = min(ef, m)
    labels, dist = hnsw.knn_allowed(graph.index, queries, want, allowed.mask(), threads)
    labels, dist = labels[:, :take], dist[:, :take]
    outcome = GraphOutcome(None, PLAN_FILTERED_GRAPH, m, scored=labels.size, candidates=want)
    short = np.flatnonzero((labels < 0).any(axis=1))
    if len(short):
        labels, dist = labels.copy(), dist.copy()
        found, best = _exact_labels(graph, queries[short], allowed.labels().astype(np.int64), take, threads)
        labels[short], dist[short] = found, best
        outcome.scored += m * len(short)
        outcome.widenings = 1
    outcome.part = (graph.ids_of(labels), dist)
    return outcome


def _postfiltered(
    graph: Graph,
    allowed: LabelSet,
    queries: Matrix,
    k: int,
    ef: int,
    n: int,
    costs: tuple[float, float],
    threads: int,
) -> GraphOutcome:
    """Without the native module: unfiltered graph candidates with the allowed ones kept,
    widened fourfold while a query is short, and answered exactly once that costs less."""
    exact_us, graph_us = costs
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
        if exhausted or graph_us * want * _WIDEN > exact_us * m:
            # The graph holds too few allowed labels near these queries: answer them exactly.
            labels_exact = allowed.labels().astype(np.int64)
            found_labels, found_dist = _exact_labels(graph, queries[pending], labels_exact, take, threads)
            out_labels[pending] = found_labels
            out_dist[pending] = found_dist
            outcome.scored += m * len(pending)
            break
        want = min(graph.live, want * _WIDEN)
        outcome.widenings += 1
    outcome.part = (graph.ids_of(out_labels), out_dist)
    return outcome


def _exact_labels(
    graph: Graph, queries: Matrix, labels: npt.NDArray[np.int64], k: int, threads: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Exact top-``k`` over live ``labels``: the native scan of the index's own storage, else
    a numpy gather and ``shard/exact.py``."""
    if hnsw.is_native(graph.index):
        return hnsw.exact_labels(graph.index, queries, labels, k, threads)
    order, best = exact.search(queries, graph.vectors(labels), graph.index.space, k)
    return labels[order], best


def _exact_part(graph: Graph, queries: Matrix, labels: npt.NDArray[np.int64], k: int, threads: int) -> Part:
    found, best = _exact_labels(graph, queries, labels, k, threads)
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
