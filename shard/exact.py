"""Exact (brute-force) search with the same distance conventions as hnswlib.

"l2" is the squared Euclidean distance; "ip" is ``1 - dot`` (cosine collections store
normalised vectors, so this is also the cosine distance).

For l2 the fast form ``|q|^2 + |x|^2 - 2 q.x`` loses precision when norms are large relative to
the distances (float32 cancellation), so candidates are preselected with it, with a margin, and
re-ranked with the direct ``sum((q - x)^2)``; returned l2 distances are always the direct ones.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from core.vectors import Matrix

Distances = npt.NDArray[np.float32]
Positions = npt.NDArray[np.intp]
_RERANK_MARGIN = 16

PARALLEL_MIN_VALUES = 3_000_000
"""A scan of several blocks holding at least this many floats (12 MB: ~7,800 rows at 384-d)
is split over ``threads`` (``search``): beyond the cache a scan runs at memory speed, and two
cores draw more of it than one (bench/results/delta-scan.md)."""

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The process's scan helpers (one per core, started on first use)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="exact-scan")
        return _pool


def squared_norms(vectors: Matrix) -> npt.NDArray[np.float32]:
    """``|x|^2`` of every row: what :func:`distances` computes for l2 when not given them."""
    return np.einsum("ij,ij->i", vectors, vectors)


def distances(queries: Matrix, vectors: Matrix, space: str, norms: npt.NDArray[np.float32] | None = None) -> Distances:
    """(nq, n) distance matrix; for l2 the fast (approximate) form, see the module docstring.
    ``norms``: the rows' :func:`squared_norms`, when the caller keeps them (l2 then reads the
    rows once instead of twice)."""
    dots = queries @ vectors.T
    if space == "l2":
        q2 = np.einsum("ij,ij->i", queries, queries)[:, None]
        x2 = (squared_norms(vectors) if norms is None else norms)[None, :]
        return np.maximum(q2 + x2 - 2.0 * dots, 0.0).astype(np.float32, copy=False)
    return (1.0 - dots).astype(np.float32, copy=False)


def top_k(dist: Distances, k: int) -> tuple[Positions, Distances]:
    """Column positions and distances of the ``k`` smallest per row, ascending, stable."""
    n = dist.shape[1]
    if k >= n:
        order = np.argsort(dist, axis=1, kind="stable")
    else:
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        sub = np.take_along_axis(dist, part, axis=1)
        # Sort the partition by (distance, position) so ties are deterministic.
        order_in_part = np.lexsort((part, sub), axis=1)
        order = np.take_along_axis(part, order_in_part, axis=1)
    return order, np.take_along_axis(dist, order, axis=1)


def search(
    queries: Matrix,
    vectors: Matrix | Sequence[Matrix],
    space: str,
    k: int,
    hidden: npt.NDArray[np.bool_] | None = None,
    norms: Sequence[npt.NDArray[np.float32] | None] | None = None,
    threads: int = 1,
) -> tuple[Positions, Distances]:
    """Exact top-``k`` rows per query over ``vectors`` (one matrix, or blocks read as their
    concatenation); rows where ``hidden`` is True get distance inf (callers drop those).
    ``norms``: each block's :func:`squared_norms` where the caller keeps them (None for a block
    without; same results).
    ``threads`` > 1: blocks of a scan past ``PARALLEL_MIN_VALUES`` are scored on up to that many
    threads, the caller's included (same results; a helper that has not started by the time the
    caller is done with its own share is not waited for: the caller scores that share too).
    Returns (nq, min(k, n)) row positions and distances."""
    blocks = [vectors] if isinstance(vectors, np.ndarray) else list(vectors)
    block_norms: Sequence[npt.NDArray[np.float32] | None] = [None] * len(blocks) if norms is None else norms
    if len(block_norms) != len(blocks):
        raise ValueError(f"{len(block_norms)} norm arrays for {len(blocks)} blocks")
    n = sum(len(b) for b in blocks)
    k = min(k, n)
    if len(blocks) == 1:
        dist = distances(queries, blocks[0], space, block_norms[0])
    else:
        dist = np.concatenate(_block_distances(queries, blocks, block_norms, space, threads), axis=1)
    if hidden is not None:
        dist[:, hidden] = np.inf
    if space != "l2":
        return top_k(dist, k)
    positions, _ = top_k(dist, min(n, k + _RERANK_MARGIN))
    diff = _gather(blocks, positions) - queries[:, None, :]
    direct = np.einsum("qcd,qcd->qc", diff, diff).astype(np.float32)
    if hidden is not None:
        direct[hidden[positions]] = np.inf
    order, best = top_k(direct, k)
    return np.take_along_axis(positions, order, axis=1), best


def _block_distances(
    queries: Matrix,
    blocks: list[Matrix],
    norms: Sequence[npt.NDArray[np.float32] | None],
    space: str,
    threads: int,
) -> list[Distances]:
    """:func:`distances` of every block, in block order; split over ``threads`` (see
    :func:`search`) when the blocks hold at least ``PARALLEL_MIN_VALUES`` floats."""

    def score(share: list[int]) -> list[Distances]:
        return [distances(queries, blocks[i], space, norms[i]) for i in share]

    every = list(range(len(blocks)))
    size = sum(b.size for b in blocks)
    if threads <= 1 or size < PARALLEL_MIN_VALUES:
        return score(every)
    shares = [every[i :: min(threads, len(blocks))] for i in range(min(threads, len(blocks)))]
    pool = _executor()
    try:
        futures = [pool.submit(score, share) for share in shares[1:]]
    except RuntimeError:  # the interpreter is shutting down: no new helpers
        return score(every)
    out: list[Distances | None] = [None] * len(blocks)
    for i, d in zip(shares[0], score(shares[0]), strict=True):
        out[i] = d
    for share, future in zip(shares[1:], futures, strict=True):
        got = score(share) if future.cancel() else future.result()
        for i, d in zip(share, got, strict=True):
            out[i] = d
    return [d for d in out if d is not None]


def _gather(blocks: list[Matrix], positions: Positions) -> Matrix:
    """Rows at ``positions`` of the concatenation of ``blocks``, without concatenating them."""
    if len(blocks) == 1:
        return blocks[0][positions]
    starts = np.cumsum([0] + [len(b) for b in blocks])
    which = np.searchsorted(starts, positions, side="right") - 1
    out = np.empty((*positions.shape, blocks[0].shape[1]), dtype=np.float32)
    for number in np.unique(which).tolist():
        mask = which == number
        out[mask] = blocks[number][positions[mask] - starts[number]]
    return out
