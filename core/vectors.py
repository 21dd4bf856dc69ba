"""Validation and normalisation of vector batches and ids (pure numpy, no per-element loops)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from core.errors import InvalidArgument
from core.spec import MAX_ID_BYTES, Metric

Matrix = npt.NDArray[np.float32]


def decode_matrix(dimension: int, packed: bytes, values: Sequence[float], expected_dim: int, what: str) -> Matrix:
    """Turns a wire ``Vectors`` into an (n, dim) float32 matrix, checking dimension and finiteness.

    ``packed`` is read with ``np.frombuffer`` (no per-element work); the result may be read-only.
    """
    if dimension != expected_dim:
        raise InvalidArgument(f"{what}: dimension {dimension} does not match the collection's {expected_dim}")
    if packed and len(values):
        raise InvalidArgument(f"{what}: set exactly one of packed and values, not both")
    if packed:
        if len(packed) % (4 * expected_dim):
            raise InvalidArgument(
                f"{what}: packed length {len(packed)} is not a multiple of dimension*4 = {4 * expected_dim}"
            )
        matrix = np.frombuffer(packed, dtype="<f4").reshape(-1, expected_dim)
    else:
        if len(values) % expected_dim:
            raise InvalidArgument(f"{what}: {len(values)} values is not a multiple of dimension {expected_dim}")
        matrix = np.asarray(values, dtype=np.float32).reshape(-1, expected_dim)
    if matrix.shape[0] == 0:
        raise InvalidArgument(f"{what}: no vectors given")
    if not np.isfinite(matrix).all():
        raise InvalidArgument(f"{what}: vectors must not contain NaN or Inf")
    return matrix


def prepare_for_metric(matrix: Matrix, metric: Metric, what: str) -> Matrix:
    """Returns what the index stores/queries: L2-normalised rows for cosine, else the input."""
    if metric is not Metric.COSINE:
        return matrix
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
    if not (norms > 0).all():
        raise InvalidArgument(f"{what}: a zero vector has no direction (cosine metric)")
    return (matrix / norms[:, None]).astype(np.float32, copy=False)


def validate_ids(ids: Sequence[str], what: str = "ids") -> list[str]:
    """Checks that a batch is non-empty and every id is 1..256 UTF-8 bytes."""
    if not ids:
        raise InvalidArgument(f"{what}: empty batch")
    out = list(ids)
    for item in out:
        # A character is at most 4 UTF-8 bytes, so only long ids need encoding to check.
        if not item or (len(item) > MAX_ID_BYTES // 4 and _utf8_len(item) > MAX_ID_BYTES):
            raise InvalidArgument(f"{what}: id {item[:40]!r} must be 1..{MAX_ID_BYTES} bytes of UTF-8")
    return out


def _utf8_len(item: str) -> int:
    try:
        return len(item.encode())
    except UnicodeEncodeError:
        return MAX_ID_BYTES + 1


def last_wins(ids: list[str], matrix: Matrix) -> tuple[list[str], Matrix]:
    """De-duplicates a batch keeping each id's last occurrence (documented upsert semantics)."""
    positions = {item: i for i, item in enumerate(ids)}
    if len(positions) == len(ids):
        return ids, matrix
    keep = sorted(positions.values())
    return [ids[i] for i in keep], matrix[keep]
