"""WAL record payloads: the logged operations (domain types) and their on-disk encodings.

The frame carries the seq (shard/wal.py); the payload encodes one operation, in the format of
its segment's version:

* format 2 (written by :func:`encode`): a serialised ``vectorsearch.shard.v1.WalOp``;
* format 1 (read only): the public ``vectorsearch.v1.WalRecord`` with seq unset, parsed through
  its internal mirror ``vectorsearch.shard.v1.WalRecordV1`` (same field numbers and types).

:func:`decode` reads both. Nothing here depends on the public API's messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from google.protobuf.message import DecodeError

from core.errors import CorruptionError
from core.vectors import Matrix
from vsproto.v1 import wal_pb2

FORMAT_V1 = 1
FORMAT_V2 = 2


@dataclass(frozen=True)
class UpsertOp:
    """``ids[i]`` takes row i of ``vectors`` and ``payloads[i]`` (None: no item has a payload)."""

    ids: list[str]
    vectors: Matrix
    payloads: list[bytes] | None = None


@dataclass(frozen=True)
class DeleteOp:
    ids: list[str]


Op = UpsertOp | DeleteOp


@dataclass(frozen=True)
class WalEntry:
    """One decoded log record: its seq and the operation."""

    seq: int
    op: Op


def to_proto(op: Op) -> wal_pb2.WalOp:
    """The format-2 message of ``op`` (also what ShardService.ReadWal streams)."""
    if isinstance(op, UpsertOp):
        upsert = wal_pb2.WalUpsert(
            ids=op.ids,
            dimension=op.vectors.shape[1],
            vectors=np.ascontiguousarray(op.vectors, dtype="<f4").tobytes(),
            payloads=op.payloads or (),
        )
        return wal_pb2.WalOp(upsert=upsert)
    return wal_pb2.WalOp(delete=wal_pb2.WalDelete(ids=op.ids))


def encode(op: Op) -> bytes:
    """The format-2 payload of ``op``."""
    payload: bytes = to_proto(op).SerializeToString()
    return payload


def decode(payload: bytes, version: int) -> Op:
    """Reads a payload of segment format ``version`` (1 or 2).

    Raises CorruptionError when the payload does not parse or holds no operation; the frame's
    checksum passed, so that is a bug or a foreign file, not a torn write.
    """
    try:
        if version == FORMAT_V2:
            return from_proto(wal_pb2.WalOp.FromString(payload))
        if version == FORMAT_V1:
            return _from_v1(wal_pb2.WalRecordV1.FromString(payload))
    except DecodeError as exc:
        raise CorruptionError(f"write-ahead log record of format {version} does not parse: {exc}") from exc
    raise CorruptionError(f"unknown write-ahead log record format {version}")


def _rows(data: bytes, dimension: int, count: int) -> Matrix:
    if dimension == 0 or len(data) != 4 * dimension * count:
        raise CorruptionError(
            f"write-ahead log upsert of {count} ids has {len(data)} bytes of vectors for dimension {dimension}"
        )
    return np.frombuffer(data, dtype="<f4").reshape(count, dimension)


def from_proto(message: wal_pb2.WalOp) -> Op:
    """The operation of a format-2 message (``CorruptionError`` when it holds none)."""
    kind = message.WhichOneof("op")
    if kind == "upsert":
        upsert = message.upsert
        ids = list(upsert.ids)
        payloads = list(upsert.payloads) or None
        if payloads is not None and len(payloads) != len(ids):
            raise CorruptionError(f"write-ahead log upsert of {len(ids)} ids has {len(payloads)} payloads")
        return UpsertOp(ids, _rows(upsert.vectors, upsert.dimension, len(ids)), payloads)
    if kind == "delete":
        return DeleteOp(list(message.delete.ids))
    raise CorruptionError("write-ahead log record of format 2 holds no operation")


def _from_v1(message: wal_pb2.WalRecordV1) -> Op:
    kind = message.WhichOneof("op")
    if kind == "upsert":
        ids = list(message.upsert.ids)
        vectors = message.upsert.vectors
        if vectors.values:  # format 1 always wrote packed; the message allows either
            values = np.asarray(vectors.values, dtype=np.float32)
            return UpsertOp(ids, _rows(values.astype("<f4").tobytes(), vectors.dimension, len(ids)))
        return UpsertOp(ids, _rows(vectors.packed, vectors.dimension, len(ids)))
    if kind == "delete":
        return DeleteOp(list(message.delete.ids))
    raise CorruptionError("write-ahead log record of format 1 holds no operation")
