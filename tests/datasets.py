"""Seeded synthetic data for tests and the demo.

Real embeddings (text, CLIP) have a low intrinsic dimension and form clusters; isotropic noise
in 128 dimensions has neither and is an unrealistic worst case for any graph index. So points
are drawn from clusters in a low-dimensional latent space, mapped linearly into ``dim``
dimensions, plus a little isotropic noise. Queries come from the same distribution.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]


def embedding_like(n: int, dim: int, seed: int, latent: int = 48, clusters: int = 50, noise: float = 0.05) -> Matrix:
    """``n`` rows of ``dim``-d vectors; the generator's shape depends only on ``(dim, seed)``."""
    shape_rng = np.random.default_rng(seed)
    latent = min(latent, dim)
    centers = shape_rng.standard_normal((clusters, latent))
    projection = shape_rng.standard_normal((latent, dim)) / np.sqrt(latent)
    rng = np.random.default_rng([seed, n])
    points = centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, latent))
    out = points @ projection + noise * rng.standard_normal((n, dim))
    return out.astype(np.float32)


def data_and_queries(n: int, nq: int, dim: int, seed: int) -> tuple[Matrix, Matrix]:
    """A data set and held-out queries from the same distribution."""
    both = embedding_like(n + nq, dim, seed)
    return both[:n], both[n:]


def clustered(n: int, dim: int, seed: int) -> Matrix:
    return embedding_like(n, dim, seed)


def exact_top_k(data: Matrix, queries: Matrix, k: int, metric: str) -> npt.NDArray[np.int64]:
    """Indices of the exact k nearest rows of ``data`` per query, under the shard's metric."""
    data64 = data.astype(np.float64)
    q64 = queries.astype(np.float64)
    if metric == "cosine":
        data64 = data64 / np.linalg.norm(data64, axis=1, keepdims=True)
        q64 = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
    if metric == "l2":
        dist = (q64**2).sum(1)[:, None] + (data64**2).sum(1)[None, :] - 2 * q64 @ data64.T
    else:
        dist = -(q64 @ data64.T)
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


def recall_at_k(truth: npt.NDArray[np.int64], found: list[list[str]], ids: list[str]) -> float:
    k = truth.shape[1]
    hits = sum(len({ids[j] for j in truth[q]} & set(found[q][:k])) for q in range(len(found)))
    return hits / (k * len(found))
