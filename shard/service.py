"""gRPC servicer for ShardService: decodes requests, calls the registry, encodes replies.

This is the only shard module that imports grpc. Domain errors become status codes in
``_STATUS`` (one place); anything else is INTERNAL and logged, and the process keeps serving.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import numpy as np

from core import errors
from core.spec import CollectionSpec, make_spec
from core.vectors import Matrix, decode_matrix
from shard import records
from shard.collection import QueryHits
from shard.registry import Registry
from vsproto.v1 import shard_service_pb2 as pb
from vsproto.v1 import shard_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

log = logging.getLogger(__name__)

_STATUS: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.CorruptionError: grpc.StatusCode.DATA_LOSS,
}

F = TypeVar("F", bound=Callable[..., Any])


def status_for(exc: errors.DomainError) -> grpc.StatusCode:
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return grpc.StatusCode.INTERNAL


def _handle_errors(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: ShardServicer, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except errors.DomainError as exc:
            context.abort(status_for(exc), str(exc))
        except Exception as exc:
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")

    return wrapper  # type: ignore[return-value]


def spec_to_proto(spec: CollectionSpec) -> types_pb2.CollectionSpec:
    return types_pb2.CollectionSpec(
        name=spec.name,
        dimension=spec.dimension,
        metric=types_pb2.Metric.Name(spec.metric.value),
        hnsw=types_pb2.HnswParams(m=spec.m, ef_construction=spec.ef_construction, ef_search=spec.ef_search),
    )


def spec_from_proto(message: types_pb2.CollectionSpec) -> CollectionSpec:
    return make_spec(
        message.name,
        message.dimension,
        message.metric,
        message.hnsw.m,
        message.hnsw.ef_construction,
        message.hnsw.ef_search,
    )


def matrix_from_proto(vectors: types_pb2.Vectors, dimension: int, what: str) -> Matrix:
    return decode_matrix(vectors.dimension, vectors.packed, vectors.values, dimension, what)


def matrix_to_proto(matrix: Matrix) -> types_pb2.Vectors:
    return types_pb2.Vectors(dimension=matrix.shape[1], packed=np.ascontiguousarray(matrix, dtype="<f4").tobytes())


def _result(hits: QueryHits) -> pb.QueryResult:
    return pb.QueryResult(ids=hits.ids, distances=hits.distances.tolist())


class ShardServicer(pb_grpc.ShardServiceServicer):
    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    @_handle_errors
    def CreateCollection(self, request: pb.CreateCollectionRequest, context: grpc.ServicerContext) -> Any:
        created, spec = self._registry.create(spec_from_proto(request.spec))
        return pb.CreateCollectionResponse(created=created, spec=spec_to_proto(spec))

    @_handle_errors
    def DropCollection(self, request: pb.DropCollectionRequest, context: grpc.ServicerContext) -> Any:
        return pb.DropCollectionResponse(dropped=self._registry.drop(request.collection))

    @_handle_errors
    def ListCollections(self, request: pb.ListCollectionsRequest, context: grpc.ServicerContext) -> Any:
        return pb.ListCollectionsResponse(collections=[spec_to_proto(s) for s in self._registry.list()])

    @_handle_errors
    def Upsert(self, request: pb.UpsertRequest, context: grpc.ServicerContext) -> Any:
        collection = self._registry.get(request.collection)
        if not request.ids:
            raise errors.InvalidArgument("upsert: empty batch")
        matrix = matrix_from_proto(request.vectors, collection.spec.dimension, "vectors")
        seq, count = collection.upsert(request.ids, matrix)
        return pb.UpsertResponse(seq=seq, upserted=count)

    @_handle_errors
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> Any:
        seq, count = self._registry.get(request.collection).delete(request.ids)
        return pb.DeleteResponse(seq=seq, deleted=count)

    @_handle_errors
    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> Any:
        found, matrix, missing = self._registry.get(request.collection).get(request.ids)
        return pb.GetResponse(ids=found, vectors=matrix_to_proto(matrix), missing_ids=missing)

    @_handle_errors
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> Any:
        collection = self._registry.get(request.collection)
        queries = matrix_from_proto(request.queries, collection.spec.dimension, "queries")
        hits = collection.search(queries, request.k, request.ef, request.allow_ids or None)
        return pb.SearchResponse(results=[_result(h) for h in hits])

    @_handle_errors
    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> Any:
        collection = self._registry.get(request.collection)
        stats = collection.stats()
        return pb.StatsResponse(
            stats=pb.CollectionStats(
                spec=spec_to_proto(collection.spec),
                count=stats.count,
                graph_elements=stats.graph_elements,
                deleted=stats.deleted,
                delta_size=stats.delta_size,
                wal_bytes=stats.wal_bytes,
                last_applied_seq=stats.last_applied_seq,
                snapshot_seq=stats.snapshot_seq,
                compactions=stats.compactions,
                compacting=stats.compacting,
            )
        )

    @_handle_errors
    def Compact(self, request: pb.CompactRequest, context: grpc.ServicerContext) -> Any:
        result = self._registry.compact(request.collection, request.wait)
        if result is None:
            return pb.CompactResponse()
        return pb.CompactResponse(snapshot_seq=result.snapshot_seq, rebuilt=result.rebuilt)

    def ReadWal(self, request: pb.ReadWalRequest, context: grpc.ServicerContext) -> Iterator[pb.ReadWalResponse]:
        try:
            stream = self._registry.get(request.collection).read_wal(request.from_seq)
            for seq, payload in stream:
                yield pb.ReadWalResponse(seq=seq, op=records.to_wal_op(payload))
        except errors.DomainError as exc:
            context.abort(status_for(exc), str(exc))
        except Exception as exc:
            log.exception("ReadWal failed")
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
