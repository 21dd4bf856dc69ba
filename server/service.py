"""gRPC servicers of the public SearchService and AdminService: convert, call the engine,
convert.

Every unary handler is wrapped by ``core.status.handled``: domain errors become their status
code through the one two-way map (``core/status.py``); anything else is logged and returned as
INTERNAL, and the process keeps serving. Conversions live in ``server/convert.py``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from core import principal, status
from core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from core.status import handled
from router.moves import RebalanceAdmin
from router.topology import TopologyStore
from server import convert
from server.auth.keys import KeyStore
from server.engine import Engine
from server.fetch import FetchPolicy, UriFetcher
from server.media import ItemOutcome, MediaEngine
from vsproto.common import spec_from_proto, spec_to_proto
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import admin_service_pb2_grpc as admin_grpc
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc

DEFAULT_MAX_STREAMS = 1_024


class StreamSlots:
    """A bound on the client streams served at once. The server's thread pool has one thread per
    slot on top of the threads for unary calls (``server/main.py``), so streams held open, even
    idle ones, can never take the threads Search, Get and Health need. Thread-safe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """A slot for the duration of the block; ResourceExhausted at once when none is free."""
        with self._lock:
            if self._used >= self.limit:
                raise ResourceExhausted(
                    f"{self.limit} client streams are open on this server, the most it serves; retry"
                )
            self._used += 1
        try:
            yield
        finally:
            with self._lock:
                self._used -= 1


class SearchServicer(pb_grpc.SearchServiceServicer):
    def __init__(
        self, engine: Engine, max_streams: int = DEFAULT_MAX_STREAMS, media: MediaEngine | None = None
    ) -> None:
        self.engine = engine
        # without one, search and ingestion by text or image are FAILED_PRECONDITION
        self.media = media or MediaEngine(engine, None, UriFetcher(FetchPolicy()))
        self.streams = StreamSlots(max_streams)

    @handled
    def CreateCollection(self, request: pb.CreateCollectionRequest, context: grpc.ServicerContext) -> Any:
        spec = spec_from_proto(request.spec)
        created, spec = self.engine.create_collection(spec, context.time_remaining(), request.embedding_model)
        return pb.CreateCollectionResponse(created=created, spec=spec_to_proto(spec))

    @handled
    def DropCollection(self, request: pb.DropCollectionRequest, context: grpc.ServicerContext) -> Any:
        dropped = self.engine.drop_collection(request.collection, context.time_remaining())
        self.media.forget(request.collection)
        return pb.DropCollectionResponse(dropped=dropped)

    @handled
    def ListCollections(self, request: pb.ListCollectionsRequest, context: grpc.ServicerContext) -> Any:
        allowed = principal.current().collections  # a restricted key sees only its collections
        specs = [s for s in self.engine.list_collections() if allowed is None or s.name in allowed]
        return pb.ListCollectionsResponse(collections=[spec_to_proto(s) for s in specs])

    @handled
    def DescribeCollection(self, request: pb.DescribeCollectionRequest, context: grpc.ServicerContext) -> Any:
        spec, count = self.engine.describe_collection(request.collection, context.time_remaining())
        model = self.media.embedding_model(request.collection)
        return pb.DescribeCollectionResponse(spec=spec_to_proto(spec), count=count, embedding_model=model)

    def _upsert(self, request: pb.UpsertRequest, collection: str, context: grpc.ServicerContext) -> int:
        ids, vectors, metas = convert.upsert_from_proto(request)
        return self.engine.upsert(collection, ids, vectors, metas, context.time_remaining())

    @handled
    def Upsert(self, request: pb.UpsertRequest, context: grpc.ServicerContext) -> Any:
        return pb.UpsertResponse(upserted=self._upsert(request, request.collection, context))

    @handled
    def UpsertStream(self, request_iterator: Iterator[pb.UpsertRequest], context: grpc.ServicerContext) -> Any:
        with self.streams.hold():
            return self._upsert_stream(request_iterator, context)

    def _upsert_stream(self, request_iterator: Iterator[pb.UpsertRequest], context: grpc.ServicerContext) -> Any:
        total = 0
        collection = ""
        for request in request_iterator:
            collection = request.collection or collection
            if not collection:
                raise InvalidArgument("upsert stream: the first message must name the collection")
            try:
                total += self._upsert(request, collection, context)
            except Exception as exc:
                code = status.to_code(exc)
                if code is None:
                    raise
                # the same status, with how much of the stream was written
                raise status.from_code(code, f"{exc} (after {total} items were upserted)") from exc
        return pb.UpsertResponse(upserted=total)

    @handled
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> Any:
        deleted = self.engine.delete(request.collection, request.ids, context.time_remaining())
        return pb.DeleteResponse(deleted=deleted)

    @handled
    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> Any:
        vectors, metas = self.engine.get(
            request.collection, request.ids, context.time_remaining(), request.include_vectors
        )
        return convert.get_response_to_proto(request.ids, vectors, metas, request.include_vectors)

    @handled
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> Any:
        result = self.engine.search(convert.search_query_from_proto(request), context.time_remaining())
        return convert.search_result_to_proto(result)

    @handled
    def SearchById(self, request: pb.SearchByIdRequest, context: grpc.ServicerContext) -> Any:
        result = self.engine.search(convert.search_by_id_query_from_proto(request), context.time_remaining())
        return convert.search_result_to_proto(result)

    @handled
    def SearchByText(self, request: pb.SearchByTextRequest, context: grpc.ServicerContext) -> Any:
        result = self.media.search(convert.text_search_from_proto(request), context.time_remaining())
        return convert.search_result_to_proto(result)

    @handled
    def SearchByImage(self, request: pb.SearchByImageRequest, context: grpc.ServicerContext) -> Any:
        result = self.media.search(convert.image_search_from_proto(request), context.time_remaining())
        return convert.search_result_to_proto(result)

    @handled
    def DescribeEmbeddingModel(self, request: pb.DescribeEmbeddingModelRequest, context: grpc.ServicerContext) -> Any:
        model, dimension = self.media.served_model(context.time_remaining())
        return pb.DescribeEmbeddingModelResponse(embedding_model=model, dimension=dimension)

    @handled
    def IngestImages(self, request_iterator: Iterator[pb.IngestImagesRequest], context: grpc.ServicerContext) -> Any:
        with self.streams.hold():
            return self._ingest(request_iterator, "image", context)

    @handled
    def IngestTexts(self, request_iterator: Iterator[pb.IngestTextsRequest], context: grpc.ServicerContext) -> Any:
        with self.streams.hold():
            return self._ingest(request_iterator, "text", context)

    def _ingest(
        self,
        request_iterator: Iterator[pb.IngestImagesRequest] | Iterator[pb.IngestTextsRequest],
        kind: str,
        context: grpc.ServicerContext,
    ) -> pb.IngestResponse:
        """Message by message: the next is read only once this one is embedded and written
        (gRPC flow control holds the client meanwhile: back-pressure)."""
        outcomes: list[ItemOutcome] = []
        collection = ""
        for request in request_iterator:
            collection = request.collection or collection
            if not collection:
                raise InvalidArgument(f"ingest {kind}s: the first message must name the collection")
            if isinstance(request, pb.IngestImagesRequest):
                items = convert.image_items_from_proto(request.items)
            else:
                items = convert.text_items_from_proto(request.items)
            try:
                outcomes += self.media.ingest(collection, kind, items, context.time_remaining())
            except Exception as exc:
                code = status.to_code(exc)
                if code is None:
                    raise
                done = sum(o.error is None for o in outcomes)
                raise status.from_code(code, f"{exc} (after {done} items were ingested)") from exc
        return convert.ingest_response_to_proto(outcomes, self.media.embedding_model(collection) if collection else "")


class AdminServicer(admin_grpc.AdminServiceServicer):
    """Cluster status, compaction, (with a ``rebalancer``) online rebalancing and (with ``keys``)
    API keys: the topology RPCs check their input, call ``router.moves.RebalanceAdmin`` and
    convert its result; without a rebalancer (key store) they are FAILED_PRECONDITION. Who may
    call which is the interceptor's business (``server/auth``); ClusterStatus shows shard
    addresses only to admins."""

    def __init__(
        self,
        topology: TopologyStore,
        engine: Engine,
        probe_timeout_s: float = 1.0,
        *,
        rebalancer: RebalanceAdmin | None = None,
        keys: KeyStore | None = None,
    ) -> None:
        self.topology = topology
        self.engine = engine
        self.probe_timeout_s = probe_timeout_s
        self.rebalancer = rebalancer
        self.keys = keys

    def _rebalancer(self) -> RebalanceAdmin:
        if self.rebalancer is None:
            raise FailedPrecondition("rebalancing is not available in this server")
        return self.rebalancer

    @handled
    def Compact(self, request: admin_pb.CompactRequest, context: grpc.ServicerContext) -> Any:
        stats = self.engine.compact(request.collection, request.wait, context.time_remaining())
        return convert.compact_response_to_proto(stats)

    @handled
    def ClusterStatus(self, request: admin_pb.ClusterStatusRequest, context: grpc.ServicerContext) -> Any:
        topology = self.topology.load()
        health = convert.shard_health_for(principal.current(), self.engine.shard_health(topology, self.probe_timeout_s))
        if self.rebalancer is None:
            return convert.cluster_status_to_proto(topology.ring_version, health)
        shard_states = getattr(self.rebalancer, "shard_states", None)  # absent on older rebalancers
        running = self.rebalancer.status(0)
        return convert.cluster_status_to_proto(
            topology.ring_version,
            health,
            shard_states=shard_states() if shard_states is not None else None,
            rebalance=running if running is not None and not running.state.finished else None,
        )

    @handled
    def AddShard(self, request: admin_pb.AddShardRequest, context: grpc.ServicerContext) -> Any:
        shard_id, address, weight, start = convert.add_shard_from_proto(request)
        started = self._rebalancer().add_shard(shard_id, address, weight, start=start)
        return convert.add_shard_response_to_proto(started)

    @handled
    def DrainShard(self, request: admin_pb.DrainShardRequest, context: grpc.ServicerContext) -> Any:
        shard_id = convert.shard_id_from_proto(request.shard_id)
        return convert.drain_shard_response_to_proto(self._rebalancer().drain_shard(shard_id))

    @handled
    def RemoveShard(self, request: admin_pb.RemoveShardRequest, context: grpc.ServicerContext) -> Any:
        shard_id = convert.shard_id_from_proto(request.shard_id)
        self._rebalancer().remove_shard(shard_id)
        return admin_pb.RemoveShardResponse()

    @handled
    def Rebalance(self, request: admin_pb.RebalanceRequest, context: grpc.ServicerContext) -> Any:
        rebalancer = self._rebalancer()
        plan = rebalancer.plan()
        return convert.rebalance_response_to_proto(plan, None if request.dry_run else rebalancer.rebalance())

    @handled
    def GetRebalanceStatus(self, request: admin_pb.GetRebalanceStatusRequest, context: grpc.ServicerContext) -> Any:
        return convert.rebalance_status_response_to_proto(self._rebalancer().status(request.rebalance_id))

    @handled
    def AbortRebalance(self, request: admin_pb.AbortRebalanceRequest, context: grpc.ServicerContext) -> Any:
        return convert.abort_rebalance_response_to_proto(self._rebalancer().abort())

    def _keys(self) -> KeyStore:
        if self.keys is None:
            raise FailedPrecondition("API keys are not available in this server")
        return self.keys

    @handled
    def CreateApiKey(self, request: admin_pb.CreateApiKeyRequest, context: grpc.ServicerContext) -> Any:
        record, key = self._keys().create(
            request.name,
            convert.role_from_proto(request.role),
            list(request.collections),
            request.requests_per_s,
            request.items_per_s,
        )
        return admin_pb.CreateApiKeyResponse(key=convert.api_key_to_proto(record), api_key=key)

    @handled
    def ListApiKeys(self, request: admin_pb.ListApiKeysRequest, context: grpc.ServicerContext) -> Any:
        records = self._keys().list(request.include_revoked)
        return admin_pb.ListApiKeysResponse(keys=[convert.api_key_to_proto(r) for r in records])

    @handled
    def RevokeApiKey(self, request: admin_pb.RevokeApiKeyRequest, context: grpc.ServicerContext) -> Any:
        if not request.key_id:
            raise InvalidArgument("key_id is required")
        return admin_pb.RevokeApiKeyResponse(revoked=self._keys().revoke(request.key_id))
