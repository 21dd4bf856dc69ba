"""gRPC servicer of ShardService: convert the request, call the shard, convert the reply.

The only shard module that imports grpc. It serves a ``LocalShard`` (the same interface the
router uses in-process), converts with ``shard/convert.py`` and maps errors with the one
two-way map of ``core/status.py``; anything that is not a domain error is INTERNAL and logged,
and the process keeps serving.

A request from the network is validated here (ids, layout, dimension, finiteness, metric),
once, into a ``core.vectors.Batch`` before the collection sees it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from core import faults
from core.status import handled, handled_stream
from core.vectors import prepare_queries
from shard import convert
from shard.local import LocalShard
from vsproto.common import matrix_from_proto, spec_from_proto, spec_to_proto
from vsproto.filters import filter_from_proto
from vsproto.v1 import shard_service_pb2 as pb
from vsproto.v1 import shard_service_pb2_grpc as pb_grpc

DEFAULT_SCAN_BATCH = 1024


class ShardServicer(pb_grpc.ShardServiceServicer):
    def __init__(self, shard: LocalShard) -> None:
        self._shard = shard

    @handled
    def CreateCollection(self, request: pb.CreateCollectionRequest, context: grpc.ServicerContext) -> Any:
        created, spec = self._shard.create_collection(spec_from_proto(request.spec))
        return pb.CreateCollectionResponse(created=created, spec=spec_to_proto(spec))

    @handled
    def DropCollection(self, request: pb.DropCollectionRequest, context: grpc.ServicerContext) -> Any:
        return pb.DropCollectionResponse(dropped=self._shard.drop_collection(request.collection))

    @handled
    def ListCollections(self, request: pb.ListCollectionsRequest, context: grpc.ServicerContext) -> Any:
        return pb.ListCollectionsResponse(collections=[spec_to_proto(s) for s in self._shard.list_collections()])

    @handled
    def Upsert(self, request: pb.UpsertRequest, context: grpc.ServicerContext) -> Any:
        batch = convert.upsert_from_proto(request, self._shard.spec(request.collection))
        result = self._shard.upsert(request.collection, batch)
        return pb.UpsertResponse(seq=result.seq, upserted=result.count)

    @handled
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> Any:
        result = self._shard.delete(request.collection, request.ids)
        return pb.DeleteResponse(seq=result.seq, deleted=result.count)

    @handled
    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> Any:
        return convert.fetched_to_proto(self._shard.get(request.collection, request.ids))

    @handled
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> Any:
        spec = self._shard.spec(request.collection)  # NOT_FOUND before the query is looked at
        queries = prepare_queries(matrix_from_proto(request.queries, "queries"), spec)
        node = filter_from_proto(request.filter) if request.HasField("filter") else None
        reply = self._shard.search(
            request.collection,
            queries,
            request.k,
            request.ef,
            request.allow_ids or None,
            filter=node,
            explain=request.explain,
        )
        return convert.reply_to_proto(reply)

    @handled
    def Stats(self, request: pb.StatsRequest, context: grpc.ServicerContext) -> Any:
        stats = convert.stats_to_proto(self._shard.stats(request.collection))
        stats.spec.CopyFrom(spec_to_proto(self._shard.spec(request.collection)))
        return pb.StatsResponse(stats=stats)

    @handled
    def Compact(self, request: pb.CompactRequest, context: grpc.ServicerContext) -> Any:
        self._shard.spec(request.collection)  # NOT_FOUND before anything else
        faults.pause("shard_compact")
        return convert.compacted_to_proto(self._shard.compact(request.collection, request.wait))

    @handled_stream
    def ReadWal(self, request: pb.ReadWalRequest, context: grpc.ServicerContext) -> Iterator[pb.ReadWalResponse]:
        for entry in self._shard.read_wal(request.collection, request.from_seq):
            yield convert.wal_entry_to_proto(entry)

    @handled_stream
    def ScanItems(self, request: pb.ScanItemsRequest, context: grpc.ServicerContext) -> Iterator[pb.ScanItemsResponse]:
        ranges = convert.ranges_from_proto(list(request.ranges))
        batch_size = request.batch_size or DEFAULT_SCAN_BATCH
        for batch in self._shard.scan(request.collection, ranges, batch_size):
            yield convert.scan_batch_to_proto(batch)
