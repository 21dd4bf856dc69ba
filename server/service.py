"""gRPC servicers for the public SearchService and AdminService: decode, call Engine, encode.

Every handler is wrapped by ``_handled``: domain errors become their status code (see
errors.py); anything else is logged and returned as INTERNAL, and the process keeps serving.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from core.errors import InvalidArgument
from router.topology import TopologyStore
from server import errors
from server.engine import Engine, SearchResult
from server.metadata import AttrValue, ItemMeta
from shard.client import ShardClient
from shard.service import spec_from_proto, spec_to_proto
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import admin_service_pb2_grpc as admin_grpc
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import shard_service_pb2 as shard_pb

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])


def _handled(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            code = errors.status_for(exc)
            if code is None:
                log.exception("%s failed", method.__name__)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
            context.abort(code, str(exc))

    return wrapper  # type: ignore[return-value]


def meta_from_proto(message: pb.Metadata) -> ItemMeta:
    attributes: dict[str, AttrValue] = {}
    for name, value in message.attributes.items():
        kind = value.WhichOneof("value")
        if kind is None:
            raise InvalidArgument(f"attribute {name!r} has no value set")
        attributes[name] = getattr(value, kind)
    return ItemMeta(message.uri, list(message.tags), attributes)


def meta_to_proto(meta: ItemMeta) -> pb.Metadata:
    message = pb.Metadata(uri=meta.uri, tags=meta.tags)
    for name, value in meta.attributes.items():
        target = message.attributes[name]
        if isinstance(value, bool):
            target.bool_value = value
        elif isinstance(value, int):
            target.int_value = value
        elif isinstance(value, float):
            target.double_value = value
        else:
            target.string_value = value
    return message


def _remaining(context: grpc.ServicerContext) -> float | None:
    return context.time_remaining()


class SearchServicer(pb_grpc.SearchServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @_handled
    def CreateCollection(self, request: pb.CreateCollectionRequest, context: grpc.ServicerContext) -> Any:
        created, spec = self.engine.create_collection(spec_from_proto(request.spec), _remaining(context))
        return pb.CreateCollectionResponse(created=created, spec=spec_to_proto(spec))

    @_handled
    def DropCollection(self, request: pb.DropCollectionRequest, context: grpc.ServicerContext) -> Any:
        return pb.DropCollectionResponse(dropped=self.engine.drop_collection(request.collection, _remaining(context)))

    @_handled
    def ListCollections(self, request: pb.ListCollectionsRequest, context: grpc.ServicerContext) -> Any:
        specs = self.engine.metadata.list_collections()
        return pb.ListCollectionsResponse(collections=[spec_to_proto(s) for s in specs])

    @_handled
    def DescribeCollection(self, request: pb.DescribeCollectionRequest, context: grpc.ServicerContext) -> Any:
        spec = self.engine.metadata.spec(request.collection)
        count = self.engine.metadata.count(request.collection)
        return pb.DescribeCollectionResponse(spec=spec_to_proto(spec), count=count)

    def _upsert(self, request: pb.UpsertRequest, collection: str, context: grpc.ServicerContext) -> int:
        if not request.items:
            raise InvalidArgument("upsert: empty batch")
        ids = [item.id for item in request.items]
        metas = [meta_from_proto(item.metadata) if item.HasField("metadata") else ItemMeta() for item in request.items]
        return self.engine.upsert(collection, ids, request.vectors, metas, _remaining(context))

    @_handled
    def Upsert(self, request: pb.UpsertRequest, context: grpc.ServicerContext) -> Any:
        return pb.UpsertResponse(upserted=self._upsert(request, request.collection, context))

    @_handled
    def UpsertStream(self, request_iterator: Iterator[pb.UpsertRequest], context: grpc.ServicerContext) -> Any:
        total = 0
        collection = ""
        for request in request_iterator:
            collection = request.collection or collection
            if not collection:
                raise InvalidArgument("upsert stream: the first message must name the collection")
            try:
                total += self._upsert(request, collection, context)
            except Exception as exc:
                code = errors.status_for(exc) or grpc.StatusCode.INTERNAL
                context.abort(code, f"{exc} (after {total} items were upserted)")
        return pb.UpsertResponse(upserted=total)

    @_handled
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> Any:
        return pb.DeleteResponse(deleted=self.engine.delete(request.collection, request.ids, _remaining(context)))

    @_handled
    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> Any:
        vectors, metas = self.engine.get(request.collection, request.ids, _remaining(context))
        reply = pb.GetResponse()
        for item_id in request.ids:
            if item_id in vectors:
                item = reply.items.add(id=item_id, metadata=meta_to_proto(metas.get(item_id, ItemMeta())))
                if request.include_vectors:
                    item.vector.extend(vectors[item_id].tolist())
            else:
                reply.missing_ids.append(item_id)
        return reply

    @_handled
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> Any:
        result = self.engine.search(
            request.collection,
            request.queries,
            request.k,
            request.ef,
            request.filter if request.HasField("filter") else None,
            request.include_metadata,
            request.include_vectors,
            request.require_all_shards,
            _remaining(context),
        )
        return _search_response(result)

    @_handled
    def SearchById(self, request: pb.SearchByIdRequest, context: grpc.ServicerContext) -> Any:
        vector = self.engine.search_by_id(request.collection, request.id, _remaining(context))
        result = self.engine.search(
            request.collection,
            vector,
            request.k,
            request.ef,
            request.filter if request.HasField("filter") else None,
            request.include_metadata,
            request.include_vectors,
            request.require_all_shards,
            _remaining(context),
            exclude=request.id,
        )
        return _search_response(result)


def _search_response(result: SearchResult) -> pb.SearchResponse:
    reply = pb.SearchResponse(partial=bool(result.failed), failed_shards=sorted(result.failed))
    for row in result.hits:
        query = reply.results.add()
        for hit in row:
            out = query.hits.add(id=hit.id, distance=hit.distance)
            meta = result.metadata.get(hit.id)
            if meta is not None:
                out.metadata.CopyFrom(meta_to_proto(meta))
            vector = result.vectors.get(hit.id)
            if vector is not None:
                out.vector.extend(vector.tolist())
    return reply


class AdminServicer(admin_grpc.AdminServiceServicer):
    def __init__(
        self,
        topology: TopologyStore,
        engine: Engine,
        probe_timeout_s: float = 1.0,
    ) -> None:
        self.topology = topology
        self.engine = engine
        self.probe_timeout_s = probe_timeout_s

    @_handled
    def Compact(self, request: admin_pb.CompactRequest, context: grpc.ServicerContext) -> Any:
        stats = self.engine.compact(request.collection, request.wait, _remaining(context))
        reply = admin_pb.CompactResponse()
        for shard_id, s in stats.items():
            reply.shards.add(shard_id=shard_id, count=s.count, graph_elements=s.graph_elements, delta_size=s.delta_size)
        return reply

    @_handled
    def ClusterStatus(self, request: admin_pb.ClusterStatusRequest, context: grpc.ServicerContext) -> Any:
        topology = self.topology.load()
        known = self.engine.router.clients  # the router is replaced when the topology changes
        reply = admin_pb.ClusterStatusResponse(ring_version=topology.ring_version)
        for shard in topology.shards:
            status = reply.shards.add(shard_id=shard.shard_id, address=shard.address, weight=shard.weight)
            endpoint = known.get(shard.shard_id)
            temporary = None
            if endpoint is None:  # the topology is newer than this server's router
                endpoint = temporary = ShardClient(shard.address, timeout=self.probe_timeout_s)
            try:
                listed = endpoint.stub.ListCollections(shard_pb.ListCollectionsRequest(), timeout=self.probe_timeout_s)
                for spec in listed.collections:
                    stats = endpoint.stub.Stats(
                        shard_pb.StatsRequest(collection=spec.name), timeout=self.probe_timeout_s
                    ).stats
                    status.collection_counts[spec.name] = stats.count
                status.healthy = True
            except grpc.RpcError as exc:
                status.healthy = False
                status.error = f"{exc.code().name}: {exc.details()}"
            finally:
                if temporary is not None:
                    temporary.close()
        return reply
