"""Conversions of the messages both APIs share (types.proto): collection specs and vectors.

Used by the public API's and the shard API's conversion modules (``server/convert.py``,
``shard/convert.py``); nothing else converts these.
"""

from __future__ import annotations

import numpy as np

from core.errors import InvalidArgument
from core.spec import CollectionSpec, make_spec
from core.vectors import Matrix, unpack_matrix
from vsproto.v1 import types_pb2


def spec_to_proto(spec: CollectionSpec) -> types_pb2.CollectionSpec:
    return types_pb2.CollectionSpec(
        name=spec.name,
        dimension=spec.dimension,
        metric=types_pb2.Metric.Name(spec.metric.value),
        hnsw=types_pb2.HnswParams(m=spec.m, ef_construction=spec.ef_construction, ef_search=spec.ef_search),
        quantization=types_pb2.Quantization.Name(spec.quantization.value),
    )


def spec_from_proto(message: types_pb2.CollectionSpec) -> CollectionSpec:
    """Validates the fields and fills defaults (``InvalidArgument`` on a bad spec)."""
    return make_spec(
        message.name,
        message.dimension,
        message.metric,
        message.hnsw.m,
        message.hnsw.ef_construction,
        message.hnsw.ef_search,
        message.quantization,
    )


_ELEMENT_TYPES = {
    types_pb2.ELEMENT_TYPE_UNSPECIFIED: "float32",
    types_pb2.ELEMENT_TYPE_FLOAT32: "float32",
    types_pb2.ELEMENT_TYPE_FLOAT64: "float64",
}


def matrix_to_proto(matrix: Matrix) -> types_pb2.Vectors:
    """Packed form: little-endian float32 bytes, row-major, rows and element type declared."""
    return types_pb2.Vectors(
        dimension=matrix.shape[1],
        packed=np.ascontiguousarray(matrix, dtype="<f4").tobytes(),
        rows=matrix.shape[0],
        element_type=types_pb2.ELEMENT_TYPE_FLOAT32,
    )


def matrix_from_proto(message: types_pb2.Vectors, what: str) -> Matrix:
    """The (n, dimension) matrix of either wire form, layout checked (``InvalidArgument``);
    dimension against a collection and finiteness are checked by ``core.vectors.check_matrix``."""
    element_type = _ELEMENT_TYPES.get(message.element_type)
    if element_type is None:
        raise InvalidArgument(f"{what}: unknown element_type {message.element_type}")
    return unpack_matrix(message.dimension, message.packed, message.values, what, message.rows, element_type)
