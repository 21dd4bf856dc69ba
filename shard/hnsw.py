"""The HNSW index class the shard builds and loads: ``shard._vsnative.Index`` when it is built,
else ``hnswlib.Index`` (docs/filtered-search.md §7).

``shard._vsnative`` (``shard/native/vsnative.cpp``, built by ``python -m shard.native.build``) is
hnswlib 0.8.0's own C++ (the headers of the ``hnswlib==0.8.0`` sdist), so both classes read and
write the same index files: a graph saved by one loads in the other. It has every method and
property of ``hnswlib.Index`` the shard uses, with the same semantics, plus two searches:

- ``knn_query(..., allowed=mask, strategy="sweep" | "acorn")``: graph search restricted to the
  labels ``L`` with ``L < len(mask) and mask[L]``, checked in C++ per candidate (hnswlib's
  ``filter=`` calls Python per candidate). Rows are padded (label -1, distance +inf) instead of
  raising. ``"sweep"`` is hnswlib's filtered traversal, ``"acorn"`` ACORN-1 (see
  :func:`knn_allowed`).
- ``exact_query(queries, labels, k)``: exact top-k over the given labels with the index's own
  SIMD distance on its storage (no gather of the vectors into numpy).
- ``set_int8(lo, scale)`` before ``init_index``/``load_index``: the index stores int8 codes
  (``dim + 4`` bytes a vector) and searches by code distance; ``get_items``/``gather`` return the
  decoded codes. int8 collections only (``shard/graph.py``, docs/quantization.md), which re-score
  with the float32 rows they keep on disk.

Use :func:`knn_allowed` and :func:`exact_labels` for those; they raise
:class:`NativeUnavailableError` on an ``hnswlib.Index``, so a caller checks :data:`NATIVE` (or
:func:`is_native` on the index at hand) and keeps its numpy path for the fallback.

``VS_NATIVE=0`` in the environment (read at import) forces the fallback, for A/B runs and tests.
``VS_NATIVE_HUGEPAGES=0`` keeps hnswlib's own allocation of the native index's level-0 block
(by default, on Linux with transparent huge pages not "never", a block of 4 MB or more is moved to
memory advised for huge pages at ``init_index``/``load_index``: 9-15% faster searches at 100k x
384-d; same files and results).

Thread-safety: with ``hnswlib.Index``, searches (``knn_query``, ``get_items``, and the helpers
here) may run concurrently with each other, never with ``add_items``, ``mark_deleted`` or
``load_index`` on the same index. ``shard._vsnative.Index`` also lets them run beside
``add_items`` and ``mark_deleted``, and takes ``knn_query(..., limit=n)`` (only labels below
``n`` returned): a fold adds to the index its published graph is searched on
(``shard/graph.py``). The GIL is released while the native code searches.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from core.vectors import Matrix

try:
    if os.environ.get("VS_NATIVE", "1") == "0":
        raise ImportError("VS_NATIVE=0")
    from shard import _vsnative as _native
except ImportError:  # not built (python -m shard.native.build), or disabled
    _native = None  # type: ignore[assignment]

NATIVE: bool = _native is not None
"""Whether ``shard._vsnative`` imported (and ``VS_NATIVE`` is not ``0``)."""
NATIVE_READ_ROWS: bool = _native is not None and hasattr(_native, "read_rows")
"""Whether :func:`read_rows` reads natively (a module built before it has no ``read_rows``)."""

Labels = npt.NDArray[np.int64]
Distances = npt.NDArray[np.float32]

Strategy = Literal["sweep", "acorn"]
STRATEGIES: tuple[Strategy, ...] = ("sweep", "acorn")


class NativeUnavailableError(RuntimeError):
    """A native-only search was asked of an ``hnswlib.Index`` (module not built, or VS_NATIVE=0)."""


class HnswIndex(Protocol):
    """What the shard uses of an index; ``hnswlib.Index`` and ``shard._vsnative.Index`` both have it."""

    @property
    def dim(self) -> int: ...

    @property
    def space(self) -> str: ...

    @property
    def element_count(self) -> int: ...

    @property
    def max_elements(self) -> int: ...

    def init_index(
        self, max_elements: int, M: int = ..., ef_construction: int = ..., random_seed: int = ...
    ) -> None: ...

    def load_index(self, path_to_index: str, max_elements: int = ...) -> None: ...

    def save_index(self, path_to_index: str) -> None: ...

    def set_ef(self, ef: int) -> None: ...

    def add_items(self, data: npt.ArrayLike, ids: npt.ArrayLike | None = ..., num_threads: int = ...) -> None: ...

    def mark_deleted(self, label: int) -> None: ...

    def resize_index(self, new_size: int) -> None: ...

    def get_items(self, ids: npt.ArrayLike | None = ..., return_type: str = ...) -> Any: ...

    def knn_query(
        self, data: npt.ArrayLike, k: int = ..., num_threads: int = ..., filter: Any = ...
    ) -> tuple[Any, Any]: ...


def index_class() -> type[Any]:
    """``shard._vsnative.Index`` when available, else ``hnswlib.Index``: ``cls(space, dim)``."""
    if _native is not None:
        return _native.Index
    import hnswlib

    return hnswlib.Index


def new_index(space: str, dim: int) -> HnswIndex:
    """An uninitialised index (call ``init_index`` or ``load_index``) of :func:`index_class`.

    ``space`` is ``"l2"``, ``"ip"`` or ``"cosine"`` (cosine: vectors normalised on insert and
    query, as hnswlib's bindings do); ``dim`` > 0.
    """
    return index_class()(space=space, dim=dim)


def is_native(index: object) -> bool:
    """Whether ``index`` is a ``shard._vsnative.Index`` (has the allowed-set and exact searches)."""
    return _native is not None and isinstance(index, _native.Index)


def deleted_count(index: HnswIndex) -> int | None:
    """How many elements ``index`` holds marked deleted (a native index counts them), else None."""
    if not is_native(index):
        return None
    count: int = index.deleted_count  # type: ignore[attr-defined]
    return count


def _require_native(index: object, what: str) -> Any:
    if not is_native(index):
        reason = "VS_NATIVE=0" if os.environ.get("VS_NATIVE") == "0" else "run `python -m shard.native.build`"
        raise NativeUnavailableError(
            f"{what} needs a shard._vsnative.Index, got {type(index).__module__}.{type(index).__qualname__} "
            f"(shard._vsnative {'loaded' if NATIVE else 'not loaded'}: {reason})"
        )
    return index


def knn_allowed(
    index: HnswIndex,
    queries: Matrix,
    k: int,
    allowed_mask: npt.NDArray[np.bool_] | npt.NDArray[np.uint8],
    num_threads: int = 1,
    strategy: Strategy = "sweep",
) -> tuple[Labels, Distances]:
    """Graph search for the ``k`` nearest allowed, live labels per query.

    A label ``L`` is allowed iff ``L < len(allowed_mask) and allowed_mask[L]`` (a 1-D contiguous
    bool or uint8 array; not copied, must not change during the call). The candidate list is
    ``max(index.ef, k)``: like ``shard/graph.py``, set ``ef`` to 1 on the index and ask
    ``k = max(ef, wanted)``, then keep the first ``wanted`` columns.

    ``strategy``:

    - ``"sweep"`` (default): hnswlib's filtered traversal. Every neighbour of an expanded node is
      scored and disallowed ones are expanded too; it keeps expanding until it holds ``k``
      allowed results or the reachable graph is exhausted, so its cost grows like
      ``k / selectivity`` (bench/results/filter-cost.md, 100k MiniLM rows, against an unfiltered
      search at the same ``k``: 1.75x at 50%, 7x at 10%, 44x at 1%; asked for ``k * sqrt(s)``
      results it has about the unfiltered search's recall for 1.3x at 50%, 2.2x at 20%).
    - ``"acorn"``: ACORN-1 (docs/filtered-search.md §7): only allowed nodes are scored; a
      disallowed neighbour is looked through to its own neighbours (two hops, more where
      allowed nodes are sparse), up to ``4 * M`` allowed nodes collected per expansion; where a
      quarter or more of a node's neighbours are allowed it sweeps instead. Its cost is nearly
      flat in the selectivity: 2-2.5x the unfiltered search at the same ``k`` from 1% to 10%
      (3.8-4.8x at 20%, the sweep's at 50%); its recall falls below ~5% (ask ~1.5x ``k``
      there). When the graph around the query runs out of allowed nodes, more allowed labels are
      taken as entry points, so a row is short only when fewer than ``k`` allowed live labels
      exist.

    Returns ``(labels int64[nq, k], distances float32[nq, k])``, each row ascending by distance;
    a row with fewer than ``k`` allowed results found is padded with label ``-1`` and distance
    ``+inf`` (never raises for that). Labels marked deleted are never returned. ``queries`` is
    float32 ``[nq, dim]`` (or ``[dim]``, one query); converted if needed. ``num_threads`` > 1
    splits the queries over threads (only used when ``nq > 4 * num_threads``, as hnswlib does);
    ``<= 0`` means all cores; results do not depend on it.
    Raises :class:`NativeUnavailableError` for an ``hnswlib.Index``, ``TypeError`` for a mask of
    another dtype or shape, ``ValueError`` for an unknown strategy.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    native = _require_native(index, "knn_allowed")
    labels, distances = native.knn_query(queries, k=k, num_threads=num_threads, allowed=allowed_mask, strategy=strategy)
    return labels, distances


def can_gather(index: HnswIndex) -> bool:
    """Whether :func:`gather` copies rows out of ``index`` (else it returns None)."""
    return is_native(index) and hasattr(index, "gather")


def gather(index: HnswIndex, labels: npt.NDArray[np.int64]) -> Matrix | None:
    """The stored vectors of live ``labels`` copied from the index's own memory (a memcpy each,
    under hnswlib's label lock), or None when ``index`` has no ``gather`` (an ``hnswlib.Index``,
    or a native module built before it): the caller reads them elsewhere. RuntimeError for an
    absent or deleted label. Safe concurrently with searches, not with ``add_items``."""
    if not can_gather(index):
        return None
    rows: Matrix = index.gather(labels)  # type: ignore[attr-defined]
    return rows


def read_rows(fd: int, labels: npt.NDArray[np.int64], dim: int) -> Matrix | None:
    """Rows ``labels`` of a file of float32 rows of ``dim`` (label-major) open on ``fd``, read
    natively (one ``pread`` a row, the GIL released), or None when the native module (or one built
    before ``read_rows``) is not there: the caller reads them itself. OSError on a negative label,
    a read error or a short read."""
    if _native is None or not NATIVE_READ_ROWS:
        return None
    try:
        rows: Matrix = _native.read_rows(fd, labels, dim)
    except RuntimeError as exc:
        raise OSError(str(exc)) from None
    return rows


def exact_labels(
    index: HnswIndex,
    queries: Matrix,
    labels: npt.NDArray[np.integer[Any]] | list[int],
    k: int,
    num_threads: int = 1,
) -> tuple[Labels, Distances]:
    """Exact top-``k`` per query over ``labels`` (no graph traversal, no copy of the vectors).

    Distances are the index's own (hnswlib's SIMD ``fstdistfunc_`` on its stored vectors: l2
    squared, ``1 - dot`` for ip and cosine), so they equal ``knn_query``'s. Labels absent from
    the index, negative, or marked deleted are skipped; duplicates are scored twice (pass unique
    labels). Returns ``(labels int64[nq, k'], distances float32[nq, k'])`` with
    ``k' = min(k, len(labels))``, each row ascending by (distance, label) — ties go to the
    smaller label; rows are padded with ``-1`` / ``+inf`` when fewer than ``k'`` labels remain
    after skipping. ``num_threads`` splits the queries (``<= 0``: all cores).
    Raises :class:`NativeUnavailableError` for an ``hnswlib.Index``.
    """
    native = _require_native(index, "exact_labels")
    found, distances = native.exact_query(queries, np.asarray(labels, dtype=np.int64), k=k, num_threads=num_threads)
    return found, distances
