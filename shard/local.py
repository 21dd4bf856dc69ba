"""``LocalShard``: the shard interface over a registry owned by this process.

Calls go straight to the collections in the calling thread: no messages, no serialisation,
no second validation (a ``Batch`` is already valid). Errors are the collections' own domain
errors. ``timeout`` is accepted for the interface and ignored: a local call cannot be left
running behind the caller's back.

``epoch`` is the ring version of the caller's view of the cluster (0: unchecked, the
coordinator and admin tools). Every data call of a handle whose epoch is older than the
shard's ``min_epoch`` is refused with ``WrongRoute`` before it does anything (for writes, the
check is repeated under the collection's write lock, with the write fences). The control calls
are never refused by epoch. A handle is cheap: ``with_epoch`` makes one per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from core.filters import Filter
from core.spec import CollectionSpec
from core.vectors import Batch, Queries
from shard.records import WalEntry
from shard.registry import Registry
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


class LocalShard:
    """Implements ``shard.api.ShardApi``. The owner of ``registry`` opens and closes it."""

    def __init__(self, registry: Registry, epoch: int = 0) -> None:
        self.registry = registry
        self.epoch = epoch

    def with_epoch(self, epoch: int) -> LocalShard:
        """A handle on the same registry for callers on ring version ``epoch``."""
        return self if epoch == self.epoch else LocalShard(self.registry, epoch)

    def _admit(self) -> Registry:
        if self.epoch:
            self.registry.control.admit(self.epoch)
        return self.registry

    def _guard(self, replicate: bool) -> Callable[[Sequence[str]], None] | None:
        """The check a write runs under its collection's write lock: the ring version again
        (it may have risen since :meth:`_admit`) and, for a client write, the fences."""
        control = self.registry.control
        epoch = self.epoch
        if replicate:
            return (lambda ids: control.admit(epoch)) if epoch else None

        def guard(ids: Sequence[str]) -> None:
            control.admit(epoch)
            control.check_writes(ids)

        return guard

    def create_collection(self, spec: CollectionSpec, timeout: float | None = None) -> tuple[bool, CollectionSpec]:
        return self._admit().create(spec)

    def drop_collection(self, name: str, timeout: float | None = None) -> bool:
        return self._admit().drop(name)

    def list_collections(self, timeout: float | None = None) -> list[CollectionSpec]:
        return self._admit().list()

    def upsert(
        self, collection: str, batch: Batch, timeout: float | None = None, *, replicate: bool = False
    ) -> WriteResult:
        return self._admit().get(collection).upsert_batch(batch, self._guard(replicate))

    def delete(
        self, collection: str, ids: Sequence[str], timeout: float | None = None, *, replicate: bool = False
    ) -> WriteResult:
        return self._admit().get(collection).delete_ids(ids, self._guard(replicate))

    def get(self, collection: str, ids: Sequence[str], timeout: float | None = None) -> Fetched:
        return self._admit().get(collection).fetch(ids)

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
        return (
            self._admit()
            .get(collection)
            .plan_search(queries, k, ef, allow_ids=allow_ids, filter=filter, explain=explain)
        )

    def stats(self, collection: str, timeout: float | None = None) -> CollectionStats:
        return self._admit().get(collection).stats()

    def compact(self, collection: str, wait: bool, timeout: float | None = None) -> CompactResult | None:
        return self._admit().compact(collection, wait)

    def read_wal(self, collection: str, from_seq: int, timeout: float | None = None) -> Iterator[WalEntry]:
        return self._admit().get(collection).read_wal(from_seq)

    def scan(
        self,
        collection: str,
        ranges: Sequence[KeyRange] = (),
        batch_size: int = 1024,
        timeout: float | None = None,
    ) -> Iterator[ScanBatch]:
        return self._admit().get(collection).scan(ranges, batch_size)

    def spec(self, collection: str) -> CollectionSpec:
        """The spec of a collection on this shard (``NotFound`` if absent; ``WrongRoute`` for a
        stale handle)."""
        return self._admit().get(collection).spec

    # ------------------------------------------------------------------ rebalancing controls
    def control(self, timeout: float | None = None) -> ControlState:
        return self.registry.control.snapshot()

    def set_min_epoch(self, epoch: int, timeout: float | None = None) -> int:
        return self.registry.set_min_epoch(epoch)

    def set_fence(self, key: str, ranges: Sequence[KeyRange] | None, timeout: float | None = None) -> None:
        self.registry.set_fence(key, ranges)

    def pin_wal(self, collection: str, key: str, from_seq: int, timeout: float | None = None) -> None:
        self.registry.pin_wal(collection, key, from_seq)

    def unpin_wal(self, key: str, timeout: float | None = None) -> None:
        self.registry.unpin_wal(key)

    def close(self) -> None:
        """Nothing to release: the owner of the registry closes it."""
