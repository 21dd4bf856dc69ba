"""Exact (brute-force) distances and top-k with the same conventions as hnswlib.

"l2" is the squared Euclidean distance; "ip" is ``1 - dot`` (cosine collections store
normalised vectors, so this is also the cosine distance).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shard.vectors import Matrix


def distances(queries: Matrix, vectors: Matrix, space: str) -> npt.NDArray[np.float32]:
    """(nq, n) distance matrix."""
    dots = queries @ vectors.T
    if space == "l2":
        q2 = np.einsum("ij,ij->i", queries, queries)[:, None]
        x2 = np.einsum("ij,ij->i", vectors, vectors)[None, :]
        return np.maximum(q2 + x2 - 2.0 * dots, 0.0).astype(np.float32, copy=False)
    return (1.0 - dots).astype(np.float32, copy=False)


def top_k(dist: npt.NDArray[np.float32], k: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
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
