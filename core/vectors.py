"""Validation and normalisation of vector batches and ids (pure numpy, no per-element loops)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.errors import InvalidArgument
from core.spec import MAX_DIMENSION, MAX_ID_BYTES, CollectionSpec, Metric

Matrix = npt.NDArray[np.float32]


def unpack_matrix(dimension: int, packed: bytes, values: Sequence[float], what: str) -> Matrix:
    """Turns wire vectors (packed little-endian float32 bytes, or a list of floats) into an
    (n, dimension) float32 matrix, checking the layout only (see :func:`check_matrix`).

    ``packed`` is read with ``np.frombuffer`` (no per-element work); the result may be read-only.
    """
    if not 1 <= dimension <= MAX_DIMENSION:
        raise InvalidArgument(f"{what}: dimension must be in 1..{MAX_DIMENSION}, got {dimension}")
    if packed and len(values):
        raise InvalidArgument(f"{what}: set exactly one of packed and values, not both")
    if packed:
        if len(packed) % (4 * dimension):
            raise InvalidArgument(
                f"{what}: packed length {len(packed)} is not a multiple of dimension*4 = {4 * dimension}"
            )
        return np.frombuffer(packed, dtype="<f4").reshape(-1, dimension)
    if len(values) % dimension:
        raise InvalidArgument(f"{what}: {len(values)} values is not a multiple of dimension {dimension}")
    return np.asarray(values, dtype=np.float32).reshape(-1, dimension)


def check_matrix(matrix: Matrix, expected_dim: int, what: str) -> Matrix:
    """Checks a batch against a collection: 2-D, ``expected_dim`` columns, at least one row,
    every value finite. Returns it as float32 (a view when it already is)."""
    if matrix.ndim != 2:
        raise InvalidArgument(f"{what}: expected a matrix of rows, got {matrix.ndim} dimensions")
    if matrix.shape[1] != expected_dim:
        raise InvalidArgument(f"{what}: dimension {matrix.shape[1]} does not match the collection's {expected_dim}")
    if matrix.shape[0] == 0:
        raise InvalidArgument(f"{what}: no vectors given")
    matrix = np.asarray(matrix, dtype=np.float32)
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


@dataclass(frozen=True)
class Batch:
    """A validated write batch: unique ids (last duplicate won), one float32 row each, rows
    already prepared for the collection's metric (normalised for cosine), C-contiguous.

    Only :func:`prepare_batch` and :meth:`take` make one, so a ``Batch`` is proof that the
    input was checked: shards accept it without validating again.
    """

    ids: list[str]
    vectors: Matrix

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, positions: Sequence[int]) -> Batch:
        """The sub-batch at ``positions`` (still valid: a subset of a valid batch)."""
        if len(positions) == len(self.ids):
            return self
        return Batch([self.ids[p] for p in positions], np.ascontiguousarray(self.vectors[list(positions)]))


@dataclass(frozen=True)
class Queries:
    """Validated query rows for one collection: finite, the collection's dimension, prepared
    for its metric (normalised for cosine), C-contiguous float32. Only :func:`prepare_queries`
    makes one, so shards search it without checking again."""

    vectors: Matrix

    def __len__(self) -> int:
        return len(self.vectors)


def prepare_queries(matrix: Matrix, spec: CollectionSpec, what: str = "queries") -> Queries:
    """Checks query rows for ``spec``'s collection (:func:`check_matrix`; zero vectors are
    refused for cosine) and prepares them for its metric."""
    checked = check_matrix(matrix, spec.dimension, what)
    return Queries(np.ascontiguousarray(prepare_for_metric(checked, spec.metric, what), dtype=np.float32))


def prepare_batch(ids: Sequence[str], vectors: Matrix, spec: CollectionSpec, what: str = "vectors") -> Batch:
    """Validates a write for ``spec``'s collection: ids (1..256 UTF-8 bytes, non-empty batch),
    one row per id, rows as :func:`check_matrix` wants them; prepares the rows for the metric
    (zero vectors are refused for cosine) and keeps each id's last occurrence."""
    id_list = validate_ids(ids)
    vectors = check_matrix(vectors, spec.dimension, what)
    if len(id_list) != vectors.shape[0]:
        raise InvalidArgument(f"{len(id_list)} ids but {vectors.shape[0]} vectors")
    prepared = prepare_for_metric(vectors, spec.metric, what)
    id_list, prepared = last_wins(id_list, prepared)
    return Batch(id_list, np.ascontiguousarray(prepared, dtype=np.float32))
