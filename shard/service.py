"""gRPC servicer of ShardService: convert the request, call the shard, convert the reply.

The only shard module that imports grpc. It serves a ``LocalShard`` (the same interface the
router uses in-process), converts with ``shard/convert.py`` and maps errors with the one
two-way map of ``core/status.py``; anything that is not a domain error is INTERNAL and logged,
and the process keeps serving.

A request from the network is validated here (ids, layout, dimension, finiteness, metric),
once, into a ``core.vectors.Batch`` before the collection sees it.

Ring version: a call's metadata ``vs-ring-version`` (decimal; absent = 0, unchecked) picks the
``LocalShard`` handle that serves it (``LocalShard.with_epoch``), which refuses the data calls
of a stale version (ABORTED). The control RPCs ignore it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc

from core import faults
from core.errors import InvalidArgument
from core.status import handled, handled_stream
from core.vectors import prepare_queries
from shard import convert
from shard.control import MAX_FENCE_RANGES
from shard.local import LocalShard
from vsproto.common import matrix_from_proto, spec_from_proto, spec_to_proto
from vsproto.filters import filter_from_proto
from vsproto.v1 import shard_service_pb2 as pb
from vsproto.v1 import shard_service_pb2_grpc as pb_grpc

DEFAULT_SCAN_BATCH = 1024
_MAX_EPOCH_DIGITS = 20  # a uint64


class ShardServicer(pb_grpc.ShardServiceServicer):
    def __init__(self, shard: LocalShard) -> None:
        self._base = shard

    def _for(self, context: grpc.ServicerContext) -> LocalShard:
        """The handle serving this call: the base one, at the caller's ring version."""
        for key, value in context.invocation_metadata() or ():
            if key == convert.RING_VERSION_KEY:
                text = value if isinstance(value, str) else value.decode("ascii", "replace")
                if not (text.isascii() and text.isdigit() and len(text) <= _MAX_EPOCH_DIGITS):
                    raise InvalidArgument(
                        f"metadata {convert.RING_VERSION_KEY} must be a decimal ring version, got {text[:40]!r}"
                    )
                return self._base.with_epoch(int(text))
        return self._base.with_epoch(0)

    @handled
    def CreateCollection(self, request: pb.CreateCollectionRequest, context: grpc.ServicerContext) -> Any:
        shard = self._for(context)
        created, spec = shard.create_collection(spec_from_proto(request.spec))
        return pb.CreateCollectionResponse(created=created, spec=spec_to_proto(spec))

    @handled
    def DropCollection(self, request: pb.DropCollectionRequest, context: grpc.ServicerContext) -> Any:
        shard = self._for(context)
        return pb.DropCollectionResponse(dropped=shard.drop_collection(request.collection))

    @handled
    def ListCollections(self, request: pb.ListCollectionsRequest, context: grpc.ServicerContext) -> Any:
        shard = self._for(context)
        return pb.ListCollectionsResponse(collections=[spec_to_proto(s) for s in shard.list_collections()])

    @handled
    def Upsert(self, request: pb.UpsertRequest, context: grpc.ServicerContext) -> Any:
        shard = self._for(context)
        batch = convert.upsert_from_proto(request, shard.spec(request.collection))
        result = shard.upsert(request.collection, batch, replicate=request.replicate)
        return pb.UpsertResponse(seq=result.seq, upserted=result.count)

    @handled
    def Delete(self, request: pb.DeleteRequest, context: grpc.ServicerContext) -> Any:
        shard = self._for(context)
        result = shard.delete(request.collection, request.ids, replicate=request.replicate)
        return pb.DeleteResponse(seq=result.seq, deleted=result.count)

    @handled
    def Get(self, request: pb.GetRequest, context: grpc.ServicerContext) -> Any:
        shard = self._for(context)
        return convert.fetched_to_proto(shard.get(request.collection, request.ids))

    @handled
    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> Any:
        shard = self._for(context)
        spec = shard.spec(request.collection)  # NOT_FOUND before the query is looked at
        queries = prepare_queries(matrix_from_proto(request.queries, "queries"), spec)
        node = filter_from_proto(request.filter) if request.HasField("filter") else None
        reply = shard.search(
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
        shard = self._for(context)
        stats = convert.stats_to_proto(shard.stats(request.collection))
        stats.spec.CopyFrom(spec_to_proto(shard.spec(request.collection)))
        return pb.StatsResponse(stats=stats)

    @handled
    def Compact(self, request: pb.CompactRequest, context: grpc.ServicerContext) -> Any:
        shard = self._for(context)
        shard.spec(request.collection)  # NOT_FOUND before anything else
        faults.pause("shard_compact")
        return convert.compacted_to_proto(shard.compact(request.collection, request.wait))

    @handled_stream
    def ReadWal(self, request: pb.ReadWalRequest, context: grpc.ServicerContext) -> Iterator[pb.ReadWalResponse]:
        shard = self._for(context)
        for entry in shard.read_wal(request.collection, request.from_seq):
            yield convert.wal_entry_to_proto(entry)

    @handled_stream
    def ScanItems(self, request: pb.ScanItemsRequest, context: grpc.ServicerContext) -> Iterator[pb.ScanItemsResponse]:
        shard = self._for(context)
        ranges = convert.ranges_from_proto(list(request.ranges))
        batch_size = request.batch_size or DEFAULT_SCAN_BATCH
        for batch in shard.scan(request.collection, ranges, batch_size):
            yield convert.scan_batch_to_proto(batch)

    # ------------------------------------------------------------------ rebalancing controls
    # Never refused by ring version: served by the base handle, whatever the metadata says.
    @handled
    def GetControl(self, request: pb.GetControlRequest, context: grpc.ServicerContext) -> Any:
        return convert.control_to_proto(self._base.control())

    @handled
    def SetMinEpoch(self, request: pb.SetMinEpochRequest, context: grpc.ServicerContext) -> Any:
        return pb.SetMinEpochResponse(min_epoch=self._base.set_min_epoch(request.epoch))

    @handled
    def SetFence(self, request: pb.SetFenceRequest, context: grpc.ServicerContext) -> Any:
        if len(request.ranges) > MAX_FENCE_RANGES:  # before building them
            raise InvalidArgument(f"at most {MAX_FENCE_RANGES} ranges per fence, got {len(request.ranges)}")
        self._base.set_fence(request.key, convert.ranges_from_proto(list(request.ranges)))
        return pb.SetFenceResponse()

    @handled
    def PinWal(self, request: pb.PinWalRequest, context: grpc.ServicerContext) -> Any:
        self._base.pin_wal(request.collection, request.key, request.from_seq)
        return pb.PinWalResponse()

    @handled
    def UnpinWal(self, request: pb.UnpinWalRequest, context: grpc.ServicerContext) -> Any:
        self._base.unpin_wal(request.key)
        return pb.UnpinWalResponse()
