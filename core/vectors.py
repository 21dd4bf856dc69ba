"""Validation and normalisation of vector batches and ids (pure numpy, no per-element loops)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.errors import InvalidArgument
from core.limits import MAX_ID_BYTES
from core.spec import MAX_DIMENSION, CollectionSpec, Metric
from core.text import check_text

Matrix = npt.NDArray[np.float32]

FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_NORM = float(np.sqrt(FLOAT32_MAX / 4))
"""The largest norm an inner-product or L2 vector may have: below it, every distance between two
stored or query vectors (at most 4x the larger squared norm) is finite in float32."""

ELEMENT_SIZES = {"float32": 4, "float64": 8}


def unpack_matrix(
    dimension: int, packed: bytes, values: Sequence[float], what: str, rows: int = 0, element_type: str = "float32"
) -> Matrix:
    """Turns wire vectors (packed little-endian bytes of ``element_type``, "float32" or
    "float64", or a list of floats) into an (n, dimension) float32 matrix, checking the layout
    only (see :func:`check_matrix`).

    ``rows`` (0: not declared) is the number of rows the sender meant: when given, the bytes or
    values must hold exactly that many, and a disagreement is InvalidArgument naming the likely
    cause (8-byte elements declared as float32, or the reverse). float64 values are narrowed to
    float32; one beyond float32's range is InvalidArgument. float32 ``packed`` is read with
    ``np.frombuffer`` (no per-element work); the result may be read-only.
    """
    if not 1 <= dimension <= MAX_DIMENSION:
        raise InvalidArgument(f"{what}: dimension must be in 1..{MAX_DIMENSION}, got {dimension}")
    if packed and len(values):
        raise InvalidArgument(f"{what}: set exactly one of packed and values, not both")
    size = ELEMENT_SIZES[element_type]
    if not packed:
        if element_type != "float32":
            raise InvalidArgument(f"{what}: element_type applies to packed bytes only; values are float32")
        if len(values) % dimension:
            raise InvalidArgument(f"{what}: {len(values)} values is not a multiple of dimension {dimension}")
        if rows and len(values) != rows * dimension:
            raise InvalidArgument(
                f"{what}: {len(values)} values, but rows x dimension = {rows} x {dimension} = {rows * dimension}"
            )
        return np.asarray(values, dtype=np.float32).reshape(-1, dimension)
    if rows and len(packed) != rows * dimension * size:
        other = 12 - size  # the other element size: 4 <-> 8
        hint = ""
        if len(packed) == rows * dimension * other:
            hint = (
                f": the bytes hold {other}-byte elements; declare element_type {'FLOAT64' if other == 8 else 'FLOAT32'}"
            )
        raise InvalidArgument(
            f"{what}: packed holds {len(packed)} bytes, but rows x dimension x {size} bytes = "
            f"{rows} x {dimension} x {size} = {rows * dimension * size}{hint}"
        )
    if len(packed) % (size * dimension):
        raise InvalidArgument(
            f"{what}: packed length {len(packed)} is not a multiple of dimension x {size} = {size * dimension}"
        )
    if size == 4:
        return np.frombuffer(packed, dtype="<f4").reshape(-1, dimension)
    wide = np.frombuffer(packed, dtype="<f8").reshape(-1, dimension)
    finite = np.isfinite(wide)
    if (np.abs(wide[finite]) > FLOAT32_MAX).any():
        raise InvalidArgument(f"{what}: a float64 value is beyond float32's range (+-{FLOAT32_MAX:.3g})")
    return wide.astype(np.float32)


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
    """Returns what the index stores/queries: L2-normalised rows for cosine, else the input.

    Norms are computed in float64, so a cosine vector with huge (or tiny) finite values is
    normalised exactly instead of overflowing to zeros. For inner product and L2 a row whose norm
    exceeds ``MAX_NORM`` is InvalidArgument (its distances would overflow float32)."""
    wide = matrix.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))
    if metric is not Metric.COSINE:
        if (norms > MAX_NORM).any():
            row = int(np.argmax(norms > MAX_NORM))
            raise InvalidArgument(
                f"{what}: row {row} has norm {norms[row]:.3g}, above {MAX_NORM:.3g} "
                f"(its distances would overflow float32; scale the vectors down)"
            )
        return matrix
    if not (norms > 0).all():
        raise InvalidArgument(f"{what}: a zero vector has no direction (cosine metric)")
    return (wide / norms[:, None]).astype(np.float32)


def validate_ids(ids: Sequence[str], what: str = "ids", max_items: int | None = None) -> list[str]:
    """Checks that a batch is non-empty, has at most ``max_items`` ids (None: no bound), and
    every id is 1..256 bytes of storable UTF-8 (``core.text.check_text``)."""
    if not ids:
        raise InvalidArgument(f"{what}: empty batch")
    if max_items is not None and len(ids) > max_items:
        raise InvalidArgument(f"{what}: {len(ids)} ids, at most {max_items} per request")
    out = list(ids)
    for item in out:
        check_text(item, f"{what}: id", MAX_ID_BYTES, allow_empty=False)
    return out


def last_positions(ids: Sequence[str]) -> list[int] | None:
    """The positions of each id's last occurrence, in order; None when every id is unique."""
    positions = {item: i for i, item in enumerate(ids)}
    if len(positions) == len(ids):
        return None
    return sorted(positions.values())


@dataclass(frozen=True)
class Batch:
    """A validated write batch: unique ids (last duplicate won), one float32 row each, rows
    already prepared for the collection's metric (normalised for cosine), C-contiguous.

    Only :func:`prepare_batch` and :meth:`take` make one, so a ``Batch`` is proof that the
    input was checked: shards accept it without validating again.
    """

    ids: list[str]
    vectors: Matrix
    # One opaque payload per id, stored with its vector in one log record (None: no payloads).
    payloads: list[bytes] | None = None

    def __post_init__(self) -> None:
        if self.payloads is not None and len(self.payloads) != len(self.ids):
            raise InvalidArgument(f"{len(self.ids)} ids but {len(self.payloads)} payloads")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, positions: Sequence[int]) -> Batch:
        """The sub-batch at ``positions`` (still valid: a subset of a valid batch)."""
        if len(positions) == len(self.ids):
            return self
        payloads = None if self.payloads is None else [self.payloads[p] for p in positions]
        return Batch([self.ids[p] for p in positions], np.ascontiguousarray(self.vectors[list(positions)]), payloads)


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


def prepare_batch(
    ids: Sequence[str],
    vectors: Matrix,
    spec: CollectionSpec,
    what: str = "vectors",
    max_items: int | None = None,
    payloads: Sequence[bytes] | None = None,
) -> Batch:
    """Validates a write for ``spec``'s collection: ids (:func:`validate_ids`, at most
    ``max_items``), one row per id, rows as :func:`check_matrix` wants them, and no payloads
    or one per id; prepares the rows for the metric (:func:`prepare_for_metric`) and keeps
    each id's last occurrence (with its payload)."""
    id_list = validate_ids(ids, max_items=max_items)
    if payloads is not None and len(payloads) != len(id_list):
        raise InvalidArgument(f"{len(id_list)} ids but {len(payloads)} payloads")
    vectors = check_matrix(vectors, spec.dimension, what)
    if len(id_list) != vectors.shape[0]:
        hint = ""
        if vectors.shape[0] == 2 * len(id_list):
            hint = " (float64 bytes read as float32? declare element_type FLOAT64 and rows in Vectors)"
        raise InvalidArgument(f"{len(id_list)} ids but {vectors.shape[0]} vectors{hint}")
    prepared = prepare_for_metric(vectors, spec.metric, what)
    keep = last_positions(id_list)
    payload_list = None if payloads is None else list(payloads)
    if keep is not None:
        id_list, prepared = [id_list[i] for i in keep], prepared[keep]
        payload_list = None if payload_list is None else [payload_list[i] for i in keep]
    return Batch(id_list, np.ascontiguousarray(prepared, dtype=np.float32), payload_list)
