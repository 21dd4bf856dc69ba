"""The one proto <-> domain conversion module of the internal shard API (shard_service.proto).

The servicer (``shard/service.py``) and the remote client (``shard/remote.py``) use these and
nothing else to cross the wire, so both sides agree by construction. Messages shared with the
public API (specs, vectors) convert in ``vsproto/common.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import Internal, InvalidArgument
from core.spec import CollectionSpec
from core.vectors import Batch, prepare_batch
from shard import records
from shard.records import WalEntry
from shard.types import (
    CollectionStats,
    CompactResult,
    ControlState,
    Fetched,
    KeyRange,
    QueryHits,
    ScanBatch,
    SearchReply,
    SearchStats,
)
from vsproto.common import matrix_from_proto, matrix_to_proto
from vsproto.v1 import shard_service_pb2 as pb

# The request metadata carrying the caller's ring version, in decimal (absent: 0, unchecked).
RING_VERSION_KEY = "vs-ring-version"


# ---------------------------------------------------------------------- search
def reply_to_proto(reply: SearchReply) -> pb.SearchResponse:
    message = pb.SearchResponse(results=[pb.QueryResult(ids=h.ids, distances=h.distances.tolist()) for h in reply.hits])
    stats = reply.stats
    if stats is not None:
        message.stats.CopyFrom(
            pb.SearchStats(
                plan=stats.plan,
                matched=stats.matched,
                matched_in_delta=stats.matched_in_delta,
                scored=stats.scored,
                candidates=stats.candidates,
                widenings=stats.widenings,
                micros=stats.micros,
            )
        )
    return message


def reply_from_proto(message: pb.SearchResponse) -> SearchReply:
    hits = [QueryHits(list(r.ids), np.asarray(r.distances, dtype=np.float32)) for r in message.results]
    if not message.HasField("stats"):
        return SearchReply(hits)
    s = message.stats
    stats = SearchStats(s.plan, s.matched, s.matched_in_delta, s.scored, s.candidates, s.widenings, s.micros)
    return SearchReply(hits, stats)


# ---------------------------------------------------------------------- get
def fetched_to_proto(fetched: Fetched) -> pb.GetResponse:
    return pb.GetResponse(
        ids=fetched.ids,
        vectors=matrix_to_proto(fetched.vectors),
        missing_ids=fetched.missing,
        payloads=fetched.payloads if any(fetched.payloads) else (),
        versions=fetched.versions,
    )


def fetched_from_proto(reply: pb.GetResponse, dimension_hint: int = 0) -> Fetched:
    if reply.ids:
        vectors = matrix_from_proto(reply.vectors, "vectors")
    else:
        vectors = np.empty((0, max(dimension_hint, reply.vectors.dimension)), dtype=np.float32)
    count = len(reply.ids)
    return Fetched(
        list(reply.ids),
        vectors,
        list(reply.missing_ids),
        _payloads(reply.payloads, count),
        _versions(reply.versions, count),
    )


def _payloads(messages: Sequence[bytes], count: int) -> list[bytes]:
    """One payload per id: the message's (a shard sends none when no item has one)."""
    if not messages:
        return [b""] * count
    if len(messages) != count:
        raise Internal(f"the shard sent {len(messages)} payloads for {count} ids")
    return list(messages)


def _versions(messages: Sequence[int], count: int) -> list[int]:
    """One version per id: the message's (a shard older than versions sends none: 0, unknown)."""
    if not messages:
        return [0] * count
    if len(messages) != count:
        raise Internal(f"the shard sent {len(messages)} versions for {count} ids")
    return list(messages)


# ---------------------------------------------------------------------- stats and compaction
def stats_to_proto(stats: CollectionStats) -> pb.CollectionStats:
    return pb.CollectionStats(
        count=stats.count,
        graph_elements=stats.graph_elements,
        deleted=stats.deleted,
        delta_size=stats.delta_size,
        wal_bytes=stats.wal_bytes,
        last_applied_seq=stats.last_applied_seq,
        snapshot_seq=stats.snapshot_seq,
        compactions=stats.compactions,
        compacting=stats.compacting,
        legacy_items=stats.legacy_items,
    )


def stats_from_proto(message: pb.CollectionStats) -> CollectionStats:
    return CollectionStats(
        count=message.count,
        graph_elements=message.graph_elements,
        deleted=message.deleted,
        delta_size=message.delta_size,
        wal_bytes=message.wal_bytes,
        last_applied_seq=message.last_applied_seq,
        snapshot_seq=message.snapshot_seq,
        compactions=message.compactions,
        compacting=message.compacting,
        legacy_items=message.legacy_items,
    )


def compacted_to_proto(result: CompactResult | None) -> pb.CompactResponse:
    if result is None:
        return pb.CompactResponse()
    return pb.CompactResponse(snapshot_seq=result.snapshot_seq, rebuilt=result.rebuilt)


def compacted_from_proto(reply: pb.CompactResponse, waited: bool) -> CompactResult | None:
    return CompactResult(reply.snapshot_seq, reply.rebuilt) if waited else None


# ---------------------------------------------------------------------- WAL and scans
def wal_entry_to_proto(entry: WalEntry) -> pb.ReadWalResponse:
    return pb.ReadWalResponse(seq=entry.seq, op=records.to_proto(entry.op))


def wal_entry_from_proto(message: pb.ReadWalResponse) -> WalEntry:
    return WalEntry(message.seq, records.from_proto(message.op))


def ranges_to_proto(ranges: list[KeyRange]) -> list[pb.KeyRange]:
    return [pb.KeyRange(start=r.start, end=r.end) for r in ranges]


def ranges_from_proto(messages: list[pb.KeyRange]) -> list[KeyRange]:
    return [KeyRange(m.start, m.end) for m in messages]


def scan_batch_to_proto(batch: ScanBatch) -> pb.ScanItemsResponse:
    return pb.ScanItemsResponse(
        ids=batch.ids,
        vectors=matrix_to_proto(batch.vectors),
        applied_seq=batch.applied_seq,
        payloads=batch.payloads if any(batch.payloads) else (),
        versions=batch.versions,
    )


def scan_batch_from_proto(message: pb.ScanItemsResponse) -> ScanBatch:
    vectors = matrix_from_proto(message.vectors, "vectors") if message.ids else np.empty((0, 0), dtype=np.float32)
    count = len(message.ids)
    return ScanBatch(
        list(message.ids),
        vectors,
        message.applied_seq,
        _payloads(message.payloads, count),
        _versions(message.versions, count),
    )


# ---------------------------------------------------------------------- writes
def upsert_to_proto(collection: str, batch: Batch, replicate: bool = False) -> pb.UpsertRequest:
    return pb.UpsertRequest(
        collection=collection,
        ids=batch.ids,
        vectors=matrix_to_proto(batch.vectors),
        payloads=batch.payloads or (),
        replicate=replicate,
    )


def upsert_from_proto(request: pb.UpsertRequest, spec: CollectionSpec) -> Batch:
    """The validated batch of an upsert request (``core.vectors.prepare_batch``)."""
    if not request.ids:
        raise InvalidArgument("upsert: empty batch")
    payloads = list(request.payloads) if request.payloads else None
    return prepare_batch(request.ids, matrix_from_proto(request.vectors, "vectors"), spec, payloads=payloads)


# ---------------------------------------------------------------------- rebalancing controls
def control_to_proto(state: ControlState) -> pb.GetControlResponse:
    return pb.GetControlResponse(
        min_epoch=state.min_epoch,
        fences=[pb.Fence(key=key, ranges=ranges_to_proto(ranges)) for key, ranges in state.fences.items()],
        pins=[
            pb.WalPin(key=key, collection=collection, from_seq=seq)
            for key, pins in state.pins.items()
            for collection, seq in pins.items()
        ],
    )


def control_from_proto(message: pb.GetControlResponse) -> ControlState:
    pins: dict[str, dict[str, int]] = {}
    for pin in message.pins:
        pins.setdefault(pin.key, {})[pin.collection] = pin.from_seq
    return ControlState(message.min_epoch, {f.key: ranges_from_proto(list(f.ranges)) for f in message.fences}, pins)
