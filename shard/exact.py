"""Exact (brute-force) search with the same distance conventions as hnswlib.

"l2" is the squared Euclidean distance; "ip" is ``1 - dot`` (cosine collections store
normalised vectors, so this is also the cosine distance).

For l2 the fast form ``|q|^2 + |x|^2 - 2 q.x`` loses precision when norms are large relative to
the distances (float32 cancellation), so candidates are preselected with it, with a margin, and
re-ranked with the direct ``sum((q - x)^2)``; returned l2 distances are always the direct ones.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shard.vectors import Matrix

Distances = npt.NDArray[np.float32]
Positions = npt.NDArray[np.intp]
_RERANK_MARGIN = 16


def distances(queries: Matrix, vectors: Matrix, space: str) -> Distances:
    """(nq, n) distance matrix; for l2 the fast (approximate) form, see the module docstring."""
    dots = queries @ vectors.T
    if space == "l2":
        q2 = np.einsum("ij,ij->i", queries, queries)[:, None]
        x2 = np.einsum("ij,ij->i", vectors, vectors)[None, :]
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
    queries: Matrix, vectors: Matrix, space: str, k: int, hidden: npt.NDArray[np.bool_] | None = None
) -> tuple[Positions, Distances]:
    """Exact top-``k`` rows of ``vectors`` per query; rows where ``hidden`` is True get distance
    inf (callers drop those). Returns (nq, min(k, n)) positions and distances."""
    n = vectors.shape[0]
    k = min(k, n)
    dist = distances(queries, vectors, space)
    if hidden is not None:
        dist[:, hidden] = np.inf
    if space != "l2":
        return top_k(dist, k)
    positions, _ = top_k(dist, min(n, k + _RERANK_MARGIN))
    diff = vectors[positions] - queries[:, None, :]
    direct = np.einsum("qcd,qcd->qc", diff, diff).astype(np.float32)
    if hidden is not None:
        direct[hidden[positions]] = np.inf
    order, best = top_k(direct, k)
    return np.take_along_axis(positions, order, axis=1), best
