"""The shard interface: what the router and the engine know of a shard.

One protocol, two implementations that the caller cannot tell apart:

* ``shard.local.LocalShard`` calls the collections of a registry owned by this process
  directly (the single-node shape): no messages, no second validation.
* ``shard.remote.RemoteShard`` calls a shard process over gRPC (the distributed shape).

Contract of every method:

* Inputs and outputs are domain types (numpy arrays, ``core.vectors.Batch``, the dataclasses
  of ``shard.types``); no protobuf crosses this interface.
* Failures raise ``core.errors`` domain errors, the same class from both implementations:
  ``NotFound`` (collection), ``InvalidArgument`` (nothing changed), ``AlreadyExists``,
  ``OutOfRange`` (WAL position no longer kept), ``CorruptionError``, ``Unavailable`` (closing,
  unreachable; ``DeadlineExceeded`` when ``timeout`` passed — a write may then have happened),
  ``Internal`` (a bug on the other side), ``WrongRoute`` (a stale ring version, or a client
  write to an id that is moving or moved; nothing was done).
* ``timeout`` (seconds, None = no deadline) bounds remote calls; local calls run to completion
  in the calling thread.
* Writes are durable when they return (under the shard's fsync policy) and idempotent.
* Thread-safety: every method may be called from any thread concurrently.
* Ring version: a handle is made for one ring version ("epoch", ``LocalShard(registry,
  epoch)``, ``RemoteShard(address, epoch=...)``; 0 = unchecked, for the coordinator and admin
  tools). Every data call (collections, writes, reads, stats, compact, read_wal, scan) of a
  handle whose epoch is > 0 and below the shard's ``min_epoch`` raises ``WrongRoute`` and does
  nothing. The control calls (``control`` .. ``unpin_wal``) are never refused by epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from core.filters import Filter
from core.spec import CollectionSpec
from core.vectors import Batch, Queries
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


class ShardApi(Protocol):
    def create_collection(self, spec: CollectionSpec, timeout: float | None = None) -> tuple[bool, CollectionSpec]:
        """Creates the collection; (False, stored spec) when an identical one exists,
        ``AlreadyExists`` when one with another spec does."""
        ...

    def drop_collection(self, name: str, timeout: float | None = None) -> bool:
        """Drops the collection and its data; False when it did not exist."""
        ...

    def list_collections(self, timeout: float | None = None) -> list[CollectionSpec]:
        """The collections on this shard, by name."""
        ...

    def upsert(
        self, collection: str, batch: Batch, timeout: float | None = None, *, replicate: bool = False
    ) -> WriteResult:
        """Logs and applies the batch atomically (all of it or none after a crash).
        ``WrongRoute``, nothing written, when an id's hash is in a write fence, unless
        ``replicate`` (the coordinator copying data between shards)."""
        ...

    def delete(
        self, collection: str, ids: Sequence[str], timeout: float | None = None, *, replicate: bool = False
    ) -> WriteResult:
        """Deletes the ids that exist (one atomic record); missing ids are ignored. Fences as
        :meth:`upsert` (every requested id is checked, existing or not)."""
        ...

    def get(self, collection: str, ids: Sequence[str], timeout: float | None = None) -> Fetched:
        """Current vectors of the ids (read-your-writes), request order; at most 10000 ids."""
        ...

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
        """Top-``k`` per query row (validated by ``core.vectors.prepare_queries``), nearest
        first; restricted to ``allow_ids`` or to the items whose payload matches ``filter``
        (not both: InvalidArgument), planned by the shard on its own data; with the shard's
        ``SearchStats`` when ``explain``. A filter on a collection holding items without a
        payload is FailedPrecondition. Sees every write acknowledged before the call; never
        waits for compaction."""
        ...

    def stats(self, collection: str, timeout: float | None = None) -> CollectionStats:
        """Counters of the collection."""
        ...

    def compact(self, collection: str, wait: bool, timeout: float | None = None) -> CompactResult | None:
        """Folds the delta into the graph and snapshots it; with ``wait=False`` only schedules
        it and returns None."""
        ...

    def read_wal(self, collection: str, from_seq: int, timeout: float | None = None) -> Iterator[WalEntry]:
        """The logged operations from ``from_seq`` in order, up to the last one written when
        the call began; ``OutOfRange`` when ``from_seq`` was already truncated."""
        ...

    def scan(
        self,
        collection: str,
        ranges: Sequence[KeyRange] = (),
        batch_size: int = 1024,
        timeout: float | None = None,
    ) -> Iterator[ScanBatch]:
        """Every live item whose id hash is in one of ``ranges`` (all when empty), as of one
        moment (``ScanBatch.applied_seq``), in batches of at most ``batch_size``."""
        ...

    # ------------------------------------------------------------------ rebalancing controls
    # Persisted in the shard's data directory and durable when a setter returns (shard/control.py).
    # Keys (of fences and pins) are 1..128 characters, InvalidArgument otherwise.

    def control(self, timeout: float | None = None) -> ControlState:
        """The shard's ring version floor, write fences and WAL pins, as of one moment."""
        ...

    def set_min_epoch(self, epoch: int, timeout: float | None = None) -> int:
        """Raises the shard's ``min_epoch`` to ``epoch`` (never lowers it) and returns the
        current one; afterwards handles of an older ring version are refused (``WrongRoute``)
        and none of their writes is still in flight. Idempotent."""
        ...

    def set_fence(self, key: str, ranges: Sequence[KeyRange] | None, timeout: float | None = None) -> None:
        """Sets the write fence ``key`` to ``ranges`` (at most 100000; replacing that key's
        earlier ranges), or removes it when ``ranges`` is empty or None. When it returns, no
        client write (``replicate=False``) to an id whose hash is in a fence can be logged any
        more. Idempotent."""
        ...

    def pin_wal(self, collection: str, key: str, from_seq: int, timeout: float | None = None) -> None:
        """Keeps the collection's log from ``from_seq`` on (compaction truncates nothing at or
        after it) until ``unpin_wal(key)`` or the collection is dropped; pinning again under the
        same key moves the pin. ``NotFound`` for an unknown collection, ``OutOfRange`` when
        ``from_seq`` was already truncated (as ``read_wal`` would say). Idempotent."""
        ...

    def unpin_wal(self, key: str, timeout: float | None = None) -> None:
        """Releases every pin of ``key`` (all collections); nothing when it has none."""
        ...

    def with_epoch(self, epoch: int) -> ShardApi:
        """A handle to the same shard whose calls carry ring version ``epoch`` (refused with
        ``WrongRoute`` once the shard serves only newer ones; 0: unchecked)."""
        ...

    def close(self) -> None:
        """Releases what this handle holds (a channel); never the shard's data."""
        ...
