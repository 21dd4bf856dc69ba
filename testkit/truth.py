"""The exact top-k and recall@k that every test and benchmark compares with."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Labels = npt.NDArray[np.int64]
METRICS = ("cosine", "ip", "l2")
CHUNK_ROWS = 16_384


def exact_top_k(data: npt.NDArray[np.float32], queries: npt.NDArray[np.float32], k: int, metric: str = "ip") -> Labels:
    """Row indices of the exact ``k`` nearest rows of ``data`` per query, nearest first.

    Brute force in float64, ties to the lower index. ``cosine`` normalises both sides, ``ip``
    ranks by the largest inner product, ``l2`` by the smallest squared distance. The rows are
    scanned in chunks with a running top-k, so memory stays about queries x CHUNK_ROWS doubles.
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    q64 = queries.astype(np.float64)
    if metric == "cosine":
        q64 = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
    best_dist = np.empty((len(q64), 0), dtype=np.float64)
    best_ids = np.empty((len(q64), 0), dtype=np.int64)
    for lo in range(0, len(data), CHUNK_ROWS):
        rows = data[lo : lo + CHUNK_ROWS].astype(np.float64)
        if metric == "cosine":
            rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        if metric == "l2":
            dist = (q64**2).sum(1)[:, None] + (rows**2).sum(1)[None, :] - 2 * q64 @ rows.T
        else:
            dist = -(q64 @ rows.T)
        ids = np.broadcast_to(np.arange(lo, lo + len(rows), dtype=np.int64), dist.shape)
        all_dist = np.concatenate([best_dist, dist], axis=1)
        all_ids = np.concatenate([best_ids, ids], axis=1)
        order = np.lexsort((all_ids, all_dist), axis=1)[:, :k]  # by distance, then by index
        best_dist = np.take_along_axis(all_dist, order, axis=1)
        best_ids = np.take_along_axis(all_ids, order, axis=1)
    return best_ids


def recall_at_k(truth: Labels, found: Sequence[Any] | npt.NDArray[Any], ids: Sequence[str] | None = None) -> float:
    """Share of the exact top-k found, averaged over the queries in ``found``.

    ``found[q]`` lists what query ``q`` returned, nearest first (only the first k count):
    row indices of the data, or external ids when ``ids[i]`` names row ``i``. Padding such as
    -1 never matches. ``truth`` may hold more rows than ``found``; its first ``len(found)`` count.
    """
    k = truth.shape[1]
    if len(found) == 0:
        return 0.0
    hits = 0
    for q, row in enumerate(found):
        got = row[:k].tolist() if isinstance(row, np.ndarray) else list(row)[:k]
        expected = truth[q].tolist() if ids is None else [ids[j] for j in truth[q]]
        hits += len(set(expected) & set(got))
    return hits / (k * len(found))
