"""``RemoteShard``: the shard interface over gRPC, to a ``python -m shard`` process.

One channel per shard, shared by every thread. Vectors travel packed. A failed call raises
the domain error its status code maps to (``core.status``), so callers see the same errors as
from an in-process ``LocalShard``; a call that outlives ``timeout`` raises ``DeadlineExceeded``.

Cancellation: a compaction waited for and the streams (scan, log) end on the shard when the
call served on this thread ends (``core.calls.on_end``), raising ``Cancelled`` here. The short
unary calls are blocking calls that run to completion within their timeout: grpcio can cancel
only a ``.future()`` call, which starts a thread per call on an idle channel and measured
60–170 µs more per Search (0.75 ms) against one shard process here.

Coalescing: concurrent plain one-query searches (no filter, no allow-list, no explain) of one
collection with the same k and ef share a call when ``coalesce_in_flight`` calls of that kind
to the shard are already running (``shard/coalesce.py``): a lone caller's search goes out at
once, as before; a batch request (several queries), and searches of another collection or k or
ef, are never held behind them.

Ring version: every call carries the handle's ``epoch`` as the metadata ``vs-ring-version``
(decimal); the shard refuses the data calls of a stale one with ABORTED (``WrongRoute``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from core import calls, status, tls, tracing
from core.channels import close_channel
from core.errors import Cancelled, InvalidArgument
from core.filters import Filter
from core.spec import CollectionSpec
from core.vectors import Batch, Queries
from shard import convert
from shard.coalesce import Coalescer
from shard.records import WalEntry
from shard.types import (
    CollectionStats,
    CompactResult,
    ControlState,
    Fetched,
    KeyRange,
    ScanBatch,
    SearchReply,
    WriteResult,
)
from vsproto.common import matrix_to_proto, spec_from_proto, spec_to_proto
from vsproto.filters import filter_to_proto
from vsproto.v1 import shard_service_pb2 as pb
from vsproto.v1 import shard_service_pb2_grpc as pb_grpc

T = TypeVar("T")


class RemoteShard:
    """Implements ``shard.api.ShardApi`` over a channel to ``address`` (host:port)."""

    def __init__(self, address: str, max_message_mb: int = 64, epoch: int = 0, coalesce_in_flight: int = 1) -> None:
        """``coalesce_in_flight``: searches in flight to this shard before later ones are batched
        (0: never batch)."""
        limit = max_message_mb << 20
        self.address = address
        self.epoch = epoch
        self._metadata = ((convert.RING_VERSION_KEY, str(epoch)),)
        # plain text, or mutual TLS with the cluster client certificate (core.tls.configure_shard_client)
        self.channel = tls.shard_channel(
            address,
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        self._stub = pb_grpc.ShardServiceStub(self.channel)
        self._owns_channel = True
        self._coalescer = Coalescer(coalesce_in_flight) if coalesce_in_flight > 0 else None

    def with_epoch(self, epoch: int) -> RemoteShard:
        """A handle for ring version ``epoch`` on this handle's channel (closing it leaves the
        channel open: the handle that made the channel closes it)."""
        if epoch == self.epoch:
            return self
        other = object.__new__(RemoteShard)
        other.address = self.address
        other.epoch = epoch
        other._metadata = ((convert.RING_VERSION_KEY, str(epoch)),)
        other.channel = self.channel
        other._stub = self._stub
        other._owns_channel = False
        in_flight = self._coalescer.max_in_flight if self._coalescer is not None else 0
        other._coalescer = Coalescer(in_flight) if in_flight else None
        return other

    def close(self) -> None:
        if self._owns_channel:
            close_channel(self.channel)

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def _unary(self, call: Callable[..., T], request: Any, timeout: float | None) -> T:
        try:
            return call(request, timeout=timeout, metadata=tracing.inject(self._metadata))
        except grpc.RpcError as exc:
            raise status.from_rpc_error(exc) from None

    def _cancellable(self, call: Any, request: Any, timeout: float | None) -> Any:
        """As :meth:`_unary`, cancelled on the shard when the served call ends first."""
        future = call.future(request, timeout=timeout, metadata=tracing.inject(self._metadata))
        calls.on_end(future.cancel)
        try:
            return future.result()
        except grpc.FutureCancelledError:
            raise Cancelled("the caller went away; the shard call was cancelled") from None
        except grpc.RpcError as exc:
            raise status.from_rpc_error(exc) from None

    @staticmethod
    def _stream(responses: Any, convert_one: Callable[[Any], T]) -> Iterator[T]:
        """The converted messages of a server stream, cancelled when the served call ends."""
        calls.on_end(responses.cancel)
        try:
            for message in responses:
                yield convert_one(message)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                raise Cancelled("the caller went away; the shard stream was cancelled") from None
            raise status.from_rpc_error(exc) from None

    # ------------------------------------------------------------------ collections
    def create_collection(self, spec: CollectionSpec, timeout: float | None = None) -> tuple[bool, CollectionSpec]:
        request = pb.CreateCollectionRequest(spec=spec_to_proto(spec))
        reply = self._unary(self._stub.CreateCollection, request, timeout)
        return reply.created, spec_from_proto(reply.spec)

    def drop_collection(self, name: str, timeout: float | None = None) -> bool:
        reply = self._unary(self._stub.DropCollection, pb.DropCollectionRequest(collection=name), timeout)
        return bool(reply.dropped)

    def list_collections(self, timeout: float | None = None) -> list[CollectionSpec]:
        reply = self._unary(self._stub.ListCollections, pb.ListCollectionsRequest(), timeout)
        return [spec_from_proto(s) for s in reply.collections]

    # ------------------------------------------------------------------ writes and reads
    def upsert(
        self, collection: str, batch: Batch, timeout: float | None = None, *, replicate: bool = False
    ) -> WriteResult:
        reply = self._unary(self._stub.Upsert, convert.upsert_to_proto(collection, batch, replicate), timeout)
        return WriteResult(reply.seq, reply.upserted)

    def delete(
        self, collection: str, ids: Sequence[str], timeout: float | None = None, *, replicate: bool = False
    ) -> WriteResult:
        request = pb.DeleteRequest(collection=collection, ids=ids, replicate=replicate)
        reply = self._unary(self._stub.Delete, request, timeout)
        return WriteResult(reply.seq, reply.deleted)

    def get(self, collection: str, ids: Sequence[str], timeout: float | None = None) -> Fetched:
        reply = self._unary(self._stub.Get, pb.GetRequest(collection=collection, ids=ids), timeout)
        return convert.fetched_from_proto(reply)

    def search(
        self,
        collection: str,
        queries: Queries,
        k: int,
        ef: int = 0,
        allow_ids: Sequence[str] | None = None,
        timeout: float | None = None,
        *,
        filter: Filter | None = None,
        explain: bool = False,
    ) -> SearchReply:
        if self._coalescer is not None and len(queries) == 1 and filter is None and allow_ids is None and not explain:
            return self._coalescer.search(
                (collection, k, ef), queries, timeout, lambda rows, left: self._search(collection, rows, k, ef, left)
            )
        return self._search(collection, queries, k, ef, timeout, allow_ids, filter, explain)

    def _search(
        self,
        collection: str,
        queries: Queries,
        k: int,
        ef: int,
        timeout: float | None,
        allow_ids: Sequence[str] | None = None,
        filter: Filter | None = None,
        explain: bool = False,
    ) -> SearchReply:
        request = pb.SearchRequest(
            collection=collection,
            queries=matrix_to_proto(queries.vectors),
            k=k,
            ef=ef,
            allow_ids=allow_ids or (),
            explain=explain,
        )
        if filter is not None:
            request.filter.CopyFrom(filter_to_proto(filter))
        with tracing.client_span("vectorsearch.shard.v1.ShardService/Search", **{"server.address": self.address}):
            return convert.reply_from_proto(self._unary(self._stub.Search, request, timeout))

    # ------------------------------------------------------------------ maintenance and moves
    def stats(self, collection: str, timeout: float | None = None) -> CollectionStats:
        reply = self._unary(self._stub.Stats, pb.StatsRequest(collection=collection), timeout)
        return convert.stats_from_proto(reply.stats)

    def compact(self, collection: str, wait: bool, timeout: float | None = None) -> CompactResult | None:
        request = pb.CompactRequest(collection=collection, wait=wait)
        call = self._cancellable if wait else self._unary  # a waited-for compaction can take minutes
        reply = call(self._stub.Compact, request, timeout)
        return convert.compacted_from_proto(reply, wait)

    def read_wal(self, collection: str, from_seq: int, timeout: float | None = None) -> Iterator[WalEntry]:
        request = pb.ReadWalRequest(collection=collection, from_seq=from_seq)
        responses = self._stub.ReadWal(request, timeout=timeout, metadata=self._metadata)
        return self._stream(responses, convert.wal_entry_from_proto)

    def scan(
        self,
        collection: str,
        ranges: Sequence[KeyRange] = (),
        batch_size: int = 1024,
        timeout: float | None = None,
    ) -> Iterator[ScanBatch]:
        request = pb.ScanItemsRequest(
            collection=collection, ranges=convert.ranges_to_proto(list(ranges)), batch_size=batch_size
        )
        responses = self._stub.ScanItems(request, timeout=timeout, metadata=self._metadata)
        return self._stream(responses, convert.scan_batch_from_proto)

    # ------------------------------------------------------------------ rebalancing controls
    def control(self, timeout: float | None = None) -> ControlState:
        return convert.control_from_proto(self._unary(self._stub.GetControl, pb.GetControlRequest(), timeout))

    def set_min_epoch(self, epoch: int, timeout: float | None = None) -> int:
        if epoch < 0:
            raise InvalidArgument(f"epoch must be >= 0, got {epoch}")
        reply = self._unary(self._stub.SetMinEpoch, pb.SetMinEpochRequest(epoch=epoch), timeout)
        return int(reply.min_epoch)

    def set_fence(self, key: str, ranges: Sequence[KeyRange] | None, timeout: float | None = None) -> None:
        request = pb.SetFenceRequest(key=key, ranges=convert.ranges_to_proto(list(ranges or ())))
        self._unary(self._stub.SetFence, request, timeout)

    def pin_wal(self, collection: str, key: str, from_seq: int, timeout: float | None = None) -> None:
        if from_seq < 0:
            raise InvalidArgument(f"from_seq must be >= 0, got {from_seq}")
        request = pb.PinWalRequest(collection=collection, key=key, from_seq=from_seq)
        self._unary(self._stub.PinWal, request, timeout)

    def unpin_wal(self, key: str, timeout: float | None = None) -> None:
        self._unary(self._stub.UnpinWal, pb.UnpinWalRequest(key=key), timeout)
