"""Seeded synthetic data for tests, the demo and the benchmarks.

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


def unit_rows(x: Matrix) -> Matrix:
    """``x`` with every row scaled to length 1 (inner product = cosine), contiguous float32."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)
