"""``LocalShard``: the shard interface over a registry owned by this process.

Calls go straight to the collections in the calling thread: no messages, no serialisation,
no second validation (a ``Batch`` is already valid). Errors are the collections' own domain
errors. ``timeout`` is accepted for the interface and ignored: a local call cannot be left
running behind the caller's back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from core.filters import Filter
from core.spec import CollectionSpec
from core.vectors import Batch, Queries
from shard.records import WalEntry
from shard.registry import Registry
from shard.types import CollectionStats, CompactResult, Fetched, KeyRange, ScanBatch, SearchReply, WriteResult


class LocalShard:
    """Implements ``shard.api.ShardApi``. The owner of ``registry`` opens and closes it."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def create_collection(self, spec: CollectionSpec, timeout: float | None = None) -> tuple[bool, CollectionSpec]:
        return self.registry.create(spec)

    def drop_collection(self, name: str, timeout: float | None = None) -> bool:
        return self.registry.drop(name)

    def list_collections(self, timeout: float | None = None) -> list[CollectionSpec]:
        return self.registry.list()

    def upsert(self, collection: str, batch: Batch, timeout: float | None = None) -> WriteResult:
        return self.registry.get(collection).upsert_batch(batch)

    def delete(self, collection: str, ids: Sequence[str], timeout: float | None = None) -> WriteResult:
        return self.registry.get(collection).delete_ids(ids)

    def get(self, collection: str, ids: Sequence[str], timeout: float | None = None) -> Fetched:
        return self.registry.get(collection).fetch(ids)

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
        return self.registry.get(collection).plan_search(
            queries, k, ef, allow_ids=allow_ids, filter=filter, explain=explain
        )

    def stats(self, collection: str, timeout: float | None = None) -> CollectionStats:
        return self.registry.get(collection).stats()

    def compact(self, collection: str, wait: bool, timeout: float | None = None) -> CompactResult | None:
        return self.registry.compact(collection, wait)

    def read_wal(self, collection: str, from_seq: int, timeout: float | None = None) -> Iterator[WalEntry]:
        return self.registry.get(collection).read_wal(from_seq)

    def scan(
        self,
        collection: str,
        ranges: Sequence[KeyRange] = (),
        batch_size: int = 1024,
        timeout: float | None = None,
    ) -> Iterator[ScanBatch]:
        return self.registry.get(collection).scan(ranges, batch_size)

    def spec(self, collection: str) -> CollectionSpec:
        """The spec of a collection on this shard (``NotFound`` if absent)."""
        return self.registry.get(collection).spec

    def close(self) -> None:
        """Nothing to release: the owner of the registry closes it."""
