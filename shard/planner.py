"""Filtered search over one collection's layers: the per-query plan (docs/filtered-search.md §6).

A filter is evaluated on every layer as of the reader's view (``shard/filtering.py``), which
gives the exact number of matching items per layer before any vector is touched. Then:

* delta layers (at most ``compact_delta_items`` rows) are always searched exactly, with the
  rows that do not match hidden;
* the graph is searched by the cheapest plan under a cost model (``PlanCosts``; ``m`` of ``N``
  visible labels allowed, ``E = max(ef, k)`` results wanted): exact search over the matching
  labels (``exact_row_us`` a label; also whenever ``m <= 2E``); the swept masked graph search,
  which scores every neighbour and keeps expanding until it holds ``E`` allowed results
  (``graph_node_us`` per unit of ``E·N/m``); or, while at most ``ACORN_MAX_SHARE`` is allowed,
  ACORN-1, which scores only allowed nodes (``acorn_per_ef_us`` per unit of ``E``, about flat in
  ``N/m``). Lucene, Qdrant and Weaviate choose between the same kinds of plan. A filter that
  matches every live label is a plain graph search; one that matches none skips the graph.

The native searches (``shard._vsnative``) check the allowed labels in C++ per candidate; a query
they leave short of ``min(k, m)`` results (allowed labels out of the traversal's reach) is
answered exactly. Without the module the graph plan asks hnswlib for ``ceil(1.2 * E * N / m)``
unfiltered candidates and keeps the allowed ones; a short query widens its candidate list
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
from shard.delta import Block, Delta
from shard.fields import ColumnIndex
from shard.filtering import evaluate
from shard.graph import RESCORE_FACTOR, Graph
from shard.labelset import LabelSet

PLAN_GRAPH = "graph"
"""No filter, or the filter matches every live item of the graph: a plain graph search."""
PLAN_EXACT = "exact"
"""Exact search over the matching items."""
PLAN_FILTERED_GRAPH = "filtered-graph"
"""Graph search keeping the allowed candidates: the native masked sweep, or without the module
unfiltered candidates post-filtered and widened in the shard while a query is short."""
PLAN_ACORN = "acorn"
"""Native ACORN-1 graph search: only allowed nodes are scored, reached through disallowed ones."""
PLAN_EMPTY = "empty"
"""Nothing matches: no vector is touched."""
PLANS = (PLAN_GRAPH, PLAN_EXACT, PLAN_FILTERED_GRAPH, PLAN_ACORN, PLAN_EMPTY)

FORCE_AUTO = "auto"
FORCE_EXACT = "exact"
FORCE_GRAPH = "graph"
FORCE_SWEEP = "sweep"
FORCE_ACORN = "acorn"
FORCES = (FORCE_AUTO, FORCE_EXACT, FORCE_GRAPH, FORCE_SWEEP, FORCE_ACORN)

_OVERSAMPLE = 1.2
_WIDEN = 4

Part = tuple[npt.NDArray[np.object_], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class PlanCosts:
    """The cost model's constants (microseconds; None: the measured defaults of the index at
    hand, native or not) and an override for tests and benchmarks: ``force`` takes that plan
    whenever some but not all labels match (``"graph"``: the cheaper graph plan; ``"acorn"``
    falls back to ``"sweep"`` without the native module)."""

    exact_row_us: float | None = None
    graph_node_us: float | None = None
    acorn_per_ef_us: float | None = None
    force: str = FORCE_AUTO

    def __post_init__(self) -> None:
        if self.force not in FORCES:
            raise ValueError(f"force must be one of {FORCES}, got {self.force!r}")
        if any(c is not None and c <= 0 for c in (self.exact_row_us, self.graph_node_us, self.acorn_per_ef_us)):
            raise ValueError("plan costs must be positive")

    def of(self, native: bool) -> tuple[float, float, float]:
        """(µs per label scored exactly, µs per unit of E·N/m of a swept graph search, µs per
        unit of E of an ACORN search; inf without the native module)."""
        defaults = _NATIVE_COSTS if native else _NUMPY_COSTS
        given = (self.exact_row_us, self.graph_node_us, self.acorn_per_ef_us if native else None)
        exact_us, sweep_us, acorn_us = (d if g is None else g for g, d in zip(given, defaults, strict=True))
        return exact_us, sweep_us, acorn_us


# Measured on 100k real MiniLM 384-d embeddings (bench/filter_cost.py --data bench/data/minilm,
# bench/results/filter-cost.md), M 16, one thread, where an unfiltered search at ef 64 takes
# ~340 µs: native exact_query 0.08 µs a label while the set stays in cache (~5k labels), 0.15-0.19
# beyond 10k; the swept masked search ~3.7-4.6 µs per unit of E·N/m; ACORN ~13 µs per unit of E
# from 1% to 15% allowed (it barely depends on N/m; its recall at a given E falls below ~8%, so it
# is asked for 1.5·E there). Without the module: numpy gather + exact 0.3-0.45 µs a label, and
# hnswlib's unfiltered search for 1.2·E·N/m candidates ~5 µs per unit.
_NATIVE_COSTS = (0.16, 4.0, 13.0)
_NUMPY_COSTS = (0.4, 5.0, math.inf)
ACORN_MAX_SHARE = 0.15
"""ACORN is considered only while at most this share of the labels is allowed: above it the
allowed labels are dense enough that it sweeps anyway and costs what the sweep does."""
ACORN_WIDE_BELOW = 0.08
"""Below this share ACORN is asked for 1.5·E results, which keeps its recall at E's level."""


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
    return search_allowed(graph, allowed, universe.count, queries, k, ef, costs, threads)


def search_allowed(
    graph: Graph, allowed: LabelSet, n: int, queries: Matrix, k: int, ef: int, costs: PlanCosts, threads: int
) -> GraphOutcome:
    """The graph's top-``k`` per query among ``allowed``, visible labels of the ``n`` visible
    ones, by the cheapest plan (``ef`` as for :func:`search_graph`)."""
    m = allowed.count
    nq = len(queries)
    if m == 0:
        return GraphOutcome(_empty(nq), PLAN_EMPTY, 0)
    if m == n:
        return GraphOutcome(None, PLAN_GRAPH, m)
    native = hnsw.is_native(graph.index)
    exact_us, sweep_us, acorn_us = costs.of(native)
    share = m / n
    acorn_ef = math.ceil(1.5 * ef) if share < ACORN_WIDE_BELOW else ef
    price = {
        PLAN_EXACT: 0.0 if m <= 2 * ef else exact_us * m,
        PLAN_FILTERED_GRAPH: sweep_us * ef * n / m,
        PLAN_ACORN: acorn_us * acorn_ef if share <= ACORN_MAX_SHARE else math.inf,
    }
    force = costs.force
    if force == FORCE_EXACT:
        plan = PLAN_EXACT
    elif force == FORCE_SWEEP or (force == FORCE_ACORN and not native):
        plan = PLAN_FILTERED_GRAPH
    elif force == FORCE_ACORN:
        plan = PLAN_ACORN
    else:
        if force == FORCE_GRAPH:
            del price[PLAN_EXACT]
        plan = min(price, key=lambda p: price[p])
    if plan == PLAN_EXACT:
        labels = allowed.labels().astype(np.int64)
        return GraphOutcome(_exact_part(graph, queries, labels, k, threads), PLAN_EXACT, m, scored=m)
    if not native:
        return _postfiltered(graph, allowed, queries, k, ef, n, (exact_us, sweep_us), threads)
    if plan == PLAN_ACORN:
        return _masked(graph, allowed, queries, k, max(acorn_ef, k), threads, PLAN_ACORN)
    return _masked(graph, allowed, queries, k, ef, threads, PLAN_FILTERED_GRAPH)


def _masked(graph: Graph, allowed: LabelSet, queries: Matrix, k: int, ef: int, threads: int, plan: str) -> GraphOutcome:
    """The native graph search with the allowed labels checked per candidate in C++, swept
    (``PLAN_FILTERED_GRAPH``: every neighbour scored, expanding until ``ef`` allowed results are
    held) or by ACORN-1 (``PLAN_ACORN``: only allowed nodes scored, reached through disallowed
    ones); a query it leaves short (allowed labels out of its reach) is answered exactly."""
    m = allowed.count
    take = min(k, m)
    quantized = graph.full_rows is not None  # int8: re-score the candidates on the float32 rows
    want = min(max(ef, take * RESCORE_FACTOR) if quantized else ef, m)
    strategy: hnsw.Strategy = "acorn" if plan == PLAN_ACORN else "sweep"
    labels, dist = hnsw.knn_allowed(graph.index, queries, want, allowed.mask(), threads, strategy)
    taken = int(np.count_nonzero(labels >= 0))  # the allowed results the traversal gathered
    if quantized:
        labels, dist = graph.rescore(queries, labels, take)
    labels, dist = labels[:, :take], dist[:, :take]
    outcome = GraphOutcome(None, plan, m, scored=taken, candidates=want)
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
    if hnsw.is_native(graph.index) and graph.full_rows is None:  # int8: the index holds codes
        return hnsw.exact_labels(graph.index, queries, labels, k, threads)
    order, best = exact.search(queries, graph.vectors(labels), graph.index.space, k)
    return labels[order], best


def _exact_part(graph: Graph, queries: Matrix, labels: npt.NDArray[np.int64], k: int, threads: int) -> Part:
    found, best = _exact_labels(graph, queries, labels, k, threads)
    return graph.ids_of(found), best


def _empty(nq: int) -> Part:
    return np.empty((nq, 0), dtype=object), np.empty((nq, 0), dtype=np.float32)


def search_delta(
    layer: Delta, node: Filter | None, queries: Matrix, k: int, view_seq: int, space: str, threads: int = 1
) -> tuple[Part, int]:
    """Exact top-``k`` per query over the delta's rows visible at ``view_seq`` that match
    ``node`` (None: every visible row), and how many rows that is; a large layer's scan is
    split over up to ``threads`` threads (``exact.search``)."""
    rows = layer.rows  # before the blocks and the columns (see delta.py)
    blocks = list(layer.blocks(rows))
    if not blocks:
        return _empty(len(queries)), 0
    visible = np.concatenate([b.visible(view_seq) for b in blocks])
    if node is None:
        allowed = visible
    else:  # the columns hold every row from 0; rows before the first block's are not this layer's
        first = blocks[0].start
        dense = np.zeros(rows, dtype=np.bool_)
        dense[first:] = visible
        allowed = evaluate(node, ColumnIndex(layer.columns, rows), LabelSet(rows, dense=dense)).mask()[first:]
    matched = int(np.count_nonzero(allowed))
    return scan_delta(layer, blocks, allowed, queries, k, space, threads), matched


def scan_delta(
    layer: Delta,
    blocks: list[Block],
    allowed: npt.NDArray[np.bool_],
    queries: Matrix,
    k: int,
    space: str,
    threads: int = 1,
) -> Part:
    """Exact top-``k`` per query (ids, distances) over the rows of ``blocks`` (``layer``'s,
    consecutive from the first block's ``start``) where ``allowed`` (one flag per row of
    ``blocks``) is set; split over up to ``threads`` threads when large (``exact.search``)."""
    if not blocks or not allowed.any():
        return _empty(len(queries))
    vectors, norms = [b.vectors for b in blocks], [b.norms for b in blocks]
    order, best = exact.search(queries, vectors, space, k, ~allowed, norms, threads)
    ids, first = layer.ids, blocks[0].start
    names = np.array([ids[first + i] for i in order.ravel().tolist()], dtype=object).reshape(order.shape)
    return names, best
