"""WAL record payloads: the protobuf ``UpsertOp``/``DeleteOp`` of types.proto, without seq.

The frame carries the seq; the payload is a serialised ``WalRecord`` whose seq field is left
unset, so the same bytes can be turned into the streamed ``WalRecord`` by setting it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.vectors import Matrix
from vsproto.v1 import types_pb2, wal_pb2


@dataclass(frozen=True)
class UpsertOp:
    ids: list[str]
    vectors: Matrix


@dataclass(frozen=True)
class DeleteOp:
    ids: list[str]


Op = UpsertOp | DeleteOp


def encode(op: Op) -> bytes:
    record = types_pb2.WalRecord()
    if isinstance(op, UpsertOp):
        record.upsert.ids.extend(op.ids)
        record.upsert.vectors.dimension = op.vectors.shape[1]
        record.upsert.vectors.packed = np.ascontiguousarray(op.vectors, dtype="<f4").tobytes()
    else:
        record.delete.ids.extend(op.ids)
    return record.SerializeToString()


def decode(payload: bytes) -> Op:
    record = types_pb2.WalRecord.FromString(payload)
    kind = record.WhichOneof("op")
    if kind == "upsert":
        dim = record.upsert.vectors.dimension
        vectors = np.frombuffer(record.upsert.vectors.packed, dtype="<f4").reshape(-1, dim)
        return UpsertOp(list(record.upsert.ids), vectors)
    if kind == "delete":
        return DeleteOp(list(record.delete.ids))
    raise ValueError(f"unknown WAL record kind {kind!r}")


def to_wal_op(payload: bytes) -> wal_pb2.WalOp:
    op = decode(payload)
    if isinstance(op, UpsertOp):
        upsert = wal_pb2.WalUpsert(
            ids=op.ids, dimension=op.vectors.shape[1], vectors=np.ascontiguousarray(op.vectors, dtype="<f4").tobytes()
        )
        return wal_pb2.WalOp(upsert=upsert)
    return wal_pb2.WalOp(delete=wal_pb2.WalDelete(ids=op.ids))
