"""The service's domain logic: collections, writes, reads and planned (filtered) search.

Combines the metadata store (SQL) and the router (shards). Takes and returns domain types
only (``server/query.py``, ``core.filters``, numpy arrays); knows nothing of gRPC or protobuf.

Write order: input is validated completely first (ids, vectors, metadata types) into a
``core.vectors.Batch``, so bad input changes nothing; new attribute types are fixed in SQL; then
the items (vector and metadata payload in one record) go to their shards, durable there. A
collection created before payload-only collections (``MetadataStore.keeps_index``) also keeps
its SQL item index: a marker before the shard write, the rows after it; a failure in between
leaves a marker that ``repair_index`` resolves from the shards. Deletes run in the same order.

Filtered search: the filter's attribute types are checked against the collection's (cached,
``check_types``), then the filter goes to every shard, which plans the search on its own items
and judges each item on the metadata payload stored with its vector (``shard/planner.py``,
docs/filtered-search.md): no SQL and no re-check here. A collection whose shards still hold
items written before payloads (they answer FAILED_PRECONDITION) is planned on the SQL index
instead (``_filtered``, explain plan ``legacy-sql``): when few items match (at most
``allow_list_small``, or a selectivity of at most ``allow_list_selectivity``, and never more
than ``allow_list_max``), their ids become per-shard allow-lists; otherwise the graph is
searched for ``k / selectivity * oversample`` candidates, filtered in one SQL query, growing
4x until k results are found, and the hits' own metadata has the last word.

Thread-safety: every method may be called from any thread; ``router`` may be replaced (a new
topology) at any time and each call uses the one it read first.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from core import calls, faults, limits, status, tracing
from core.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from core.filters import Filter, matches
from core.items import ItemMeta
from core.spec import MAX_K as SHARD_MAX_K
from core.spec import CollectionSpec, validate_name
from core.text import quote
from core.vectors import Matrix, Queries, prepare_batch, prepare_queries, validate_ids
from router.fanout import Router, SearchOutcome, StoredItem
from router.topology import Topology
from server.filters import check_types, compile_filter
from server.metadata import MetadataStore
from server.query import (
    PLAN_LEGACY_SQL,
    ItemTarget,
    SearchExplain,
    SearchQuery,
    SearchResult,
    ShardHealth,
    VectorTarget,
)
from shard.api import ShardApi
from shard.remote import RemoteShard
from shard.types import CollectionStats
from vsproto import payload

log = logging.getLogger(__name__)
V = TypeVar("V")

MAX_K = limits.MAX_K
MODEL_IDENTITY = re.compile(r"[!-?A-~]{1,400}@sha256:[0-9a-f]{64}")  # printable ASCII but "@", then the digest
SPEC_TTL_S = 5.0
COMPACT_TIMEOUT_S = 3600.0  # a waited compaction with no client deadline


@dataclass(frozen=True)
class EngineOptions:
    timeout_s: float = 10.0
    # Filtered search sends an allow-list when at most allow_list_max items match and either
    # at most allow_list_small match or they are at most allow_list_selectivity of the collection.
    allow_list_max: int = 20_000
    allow_list_small: int = 2_000
    allow_list_selectivity: float = 0.02
    oversample: float = 2.0
    # The largest reply the server may send (its --max-message-mb): a Get or Search whose vectors
    # alone would exceed it is RESOURCE_EXHAUSTED before any work.
    max_reply_bytes: int = limits.DEFAULT_MAX_MESSAGE_BYTES


class Engine:
    def __init__(self, metadata: MetadataStore, router: Router, options: EngineOptions | None = None) -> None:
        self.metadata = metadata
        self.router = router
        self.options = options or EngineOptions()
        # per collection, each read from SQL at most once per SPEC_TTL_S
        self._specs: TtlCache[CollectionSpec] = TtlCache(SPEC_TTL_S)
        self._attr_types: TtlCache[dict[str, str]] = TtlCache(SPEC_TTL_S)
        self._index_kept: TtlCache[bool] = TtlCache(SPEC_TTL_S)

    def spec(self, name: str) -> CollectionSpec:
        """The collection's spec, cached for ``SPEC_TTL_S`` (specs are immutable; the TTL only
        bounds how long a drop by another server goes unnoticed here — the shards answer
        NOT_FOUND meanwhile)."""

        def load() -> CollectionSpec:
            validate_name(name)  # a name no collection can have is refused before any SQL
            return self.metadata.spec(name)

        return self._specs.get(name, load)

    def timeout_for(self, remaining: float | None) -> float:
        """The time a step may take: what is left of the caller's deadline (less a margin to
        answer), at most ``options.timeout_s``."""
        if remaining is None:
            return self.options.timeout_s
        return max(0.05, min(self.options.timeout_s, remaining - 0.05))

    # ------------------------------------------------------------------ collections
    def create_collection(
        self, spec: CollectionSpec, remaining: float | None = None, embedding_model: str = ""
    ) -> tuple[bool, CollectionSpec]:
        """Creates the collection (idempotent); ``embedding_model``, when given, is recorded as
        the model its vectors come from (AlreadyExists when another one is recorded)."""
        if embedding_model and not MODEL_IDENTITY.fullmatch(embedding_model):
            raise InvalidArgument(
                f"embedding_model {quote(embedding_model)} is not a model identity "
                "(<architecture>@sha256:<64 hex digits>)"
            )
        router = self.router
        router.require_shards()  # before the metadata row: a cluster without shards changes nothing
        created, stored = self.metadata.create_collection(spec)
        if embedding_model:
            recorded = self.metadata.record_embedding_model(spec.name, embedding_model)
            if recorded != embedding_model:
                raise AlreadyExists(f"collection {spec.name!r} exists with embedding model {recorded}")
        router.create_collection(stored, self.timeout_for(remaining))  # idempotent: repairs a half-done create
        return created, stored

    def drop_collection(self, name: str, remaining: float | None = None) -> bool:
        for cache in (self._specs, self._attr_types, self._index_kept):
            cache.drop(name)
        in_shards = self.router.drop_collection(name, self.timeout_for(remaining))
        return self.metadata.drop_collection(name) or in_shards

    def list_collections(self) -> list[CollectionSpec]:
        return self.metadata.list_collections()

    def describe_collection(self, name: str, remaining: float | None = None) -> tuple[CollectionSpec, int]:
        """The spec and the item count of a collection, counted by its shards (the store of
        record for items: the SQL index may lag a write that crashed before its commit).
        ShardsUnavailable when a shard does not answer."""
        spec = self.spec(name)
        stats = self.router.stats(name, self.timeout_for(remaining))
        return spec, sum(s.count for s in stats.values())

    def compact(self, collection: str, wait: bool, remaining: float | None = None) -> dict[str, CollectionStats]:
        """Folds every shard's delta into its graph (see AdminService.Compact)."""
        self.spec(collection)
        timeout = COMPACT_TIMEOUT_S if remaining is None else max(0.05, min(COMPACT_TIMEOUT_S, remaining - 0.05))
        return self.router.compact(collection, wait, timeout)

    # ------------------------------------------------------------------ writes
    def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: Matrix,
        metas: Sequence[ItemMeta],
        remaining: float | None = None,
    ) -> int:
        """Writes items (vector + metadata); the last duplicate id wins, for metadata too.

        Each item's metadata travels in its shard payload, in the same log record as its vector
        (``vsproto/payload.py``): once the shard has the write, readers see the new pair, and
        never one without the other. The SQL rows (the filter index) follow after it."""
        spec = self.spec(collection)
        if len(metas) != len(ids):
            raise InvalidArgument(f"{len(ids)} ids but {len(metas)} metadata entries")
        batch = prepare_batch(
            ids, vectors, spec, max_items=limits.MAX_BATCH_ITEMS, payloads=[payload.encode(m) for m in metas]
        )
        last = {item: i for i, item in enumerate(ids)}
        items = [(item, metas[last[item]]) for item in batch.ids]
        new_types = self.metadata.check_types(collection, items)
        calls.check("the shard write")
        if not self._keeps_index(collection):  # the shards are the only index: types, then the write
            if new_types:
                self.metadata.record_types(collection, new_types)
            self.router.upsert(collection, batch, self.timeout_for(remaining))
            faults.point("after_shard_write")
            return len(batch)
        marker = self.metadata.begin_write(collection, batch.ids, new_types)  # types fixed before any shard sees them
        self.router.upsert(collection, batch, self.timeout_for(remaining))
        faults.point("after_shard_write")
        self.metadata.upsert(collection, items, {}, marker)
        return len(batch)

    def delete(self, collection: str, ids: Sequence[str], remaining: float | None = None) -> int:
        self.spec(collection)
        id_list = list(dict.fromkeys(validate_ids(ids, max_items=limits.MAX_BATCH_ITEMS)))
        calls.check("the shard delete")
        if not self._keeps_index(collection):
            deleted = self.router.delete(collection, id_list, self.timeout_for(remaining))
            faults.point("after_shard_delete")
            return deleted
        marker = self.metadata.begin_write(collection, id_list)
        deleted = self.router.delete(collection, id_list, self.timeout_for(remaining))
        faults.point("after_shard_delete")
        self.metadata.delete(collection, id_list, marker)
        return deleted

    def repair_index(self, older_than_s: float, timeout: float = 30.0) -> int:
        """Repairs the SQL index rows of every write whose commit did not follow its shard write
        (a crash, a timeout or an error in between), oldest first: the items are re-read from
        their shards and their rows rewritten to match (``MetadataStore.repair``). Only markers
        older than ``older_than_s`` are taken, so writes still in flight are left to finish.
        Returns how many were repaired; a marker whose shards do not answer stays for the next
        round. Safe to run on any number of servers at once."""
        repaired = 0
        for marker, collection, ids in self.metadata.pending(older_than_s):
            try:
                read = functools.partial(self._read_for_repair, collection, ids, timeout)
                self.metadata.repair(marker, collection, read)
                repaired += 1
            except NotFound:
                self.metadata.forget(marker)  # the collection was dropped
            except DomainError as exc:
                log.warning("index repair of %s (%d ids) postponed: %s", collection, len(ids), status.describe(exc))
        return repaired

    def repair_index_logged(self, older_than_s: float) -> None:
        """One :meth:`repair_index` pass whose failure is logged, not raised (the next pass retries)."""
        try:
            repaired = self.repair_index(older_than_s)
            if repaired:
                log.info("repaired the index rows of %d interrupted writes", repaired)
        except Exception:
            log.exception("index repair failed; retrying later")

    def repair_index_until(
        self, stop: threading.Event, older_than_s: float, interval_s: float, first: bool = True
    ) -> None:
        """The background repair of a serving process: a pass now (when ``first``), then one every
        ``interval_s`` until ``stop`` is set."""
        if first:
            self.repair_index_logged(older_than_s)
        while not stop.wait(interval_s):
            self.repair_index_logged(older_than_s)

    def _read_for_repair(
        self, collection: str, ids: list[str], timeout: float
    ) -> tuple[dict[str, ItemMeta], list[str]]:
        stored = self.router.fetch(collection, ids, timeout)
        present: dict[str, ItemMeta] = {}
        for item, s in stored.items():
            meta = payload.decode(s.payload)
            if meta is not None:  # an item from before payloads: its SQL rows are its truth
                present[item] = meta
        return present, [item for item in ids if item not in stored]

    # ------------------------------------------------------------------ reads
    def get(
        self, collection: str, ids: Sequence[str], remaining: float | None = None, include_vectors: bool = False
    ) -> tuple[dict[str, Matrix], dict[str, ItemMeta]]:
        """Vectors (the shards are the truth for existence) and metadata of the ids (at most
        ``limits.MAX_BATCH_ITEMS``). ``include_vectors`` only sizes the reply: when the vectors
        alone would not fit in one, ResourceExhausted before any work."""
        spec = self.spec(collection)
        id_list = validate_ids(ids, max_items=limits.MAX_BATCH_ITEMS)
        if include_vectors:
            self._check_reply_size(len(id_list), spec.dimension, "Get")
        stored = self.router.fetch(collection, list(dict.fromkeys(id_list)), self.timeout_for(remaining))
        return {item: s.vector for item, s in stored.items()}, self._metadata_of(collection, stored)

    def _metadata_of(self, collection: str, stored: dict[str, StoredItem]) -> dict[str, ItemMeta]:
        """Each item's metadata from its payload, read with its vector; items written before
        payloads existed (empty payload) take theirs from SQL."""
        out: dict[str, ItemMeta] = {}
        legacy: list[str] = []
        for item, s in stored.items():
            meta = payload.decode(s.payload)
            if meta is None:
                legacy.append(item)
            else:
                out[item] = meta
        if legacy:
            out.update(self.metadata.fetch(collection, legacy))
        return out

    def _check_reply_size(self, rows: int, dimension: int, what: str) -> None:
        size = rows * dimension * 4
        if size > self.options.max_reply_bytes:
            raise ResourceExhausted(
                f"{what}: {rows} vectors of dimension {dimension} are {size} bytes, more than one reply may "
                f"carry ({self.options.max_reply_bytes}); ask for fewer, or without vectors"
            )

    @tracing.traced("engine.search")
    def search(self, query: SearchQuery, remaining: float | None = None) -> SearchResult:
        """The k nearest items to each query. Bounds (``core/limits.py``), checked before any
        work: k in 1..MAX_K, at most MAX_QUERIES queries and MAX_RESULT_HITS queries x k, and
        with vectors included, a reply that fits ``max_reply_bytes``."""
        if not 1 <= query.k <= MAX_K:
            raise InvalidArgument(f"k must be in 1..{MAX_K}, got {query.k}")
        spec = self.spec(query.collection)
        if isinstance(query.target, VectorTarget):
            n_queries = len(query.target.vectors)
            if n_queries > limits.MAX_QUERIES:
                raise InvalidArgument(f"{n_queries} queries, at most {limits.MAX_QUERIES} per Search")
            if n_queries * query.k > limits.MAX_RESULT_HITS:
                raise InvalidArgument(
                    f"{n_queries} queries x k={query.k} = {n_queries * query.k} results, "
                    f"at most {limits.MAX_RESULT_HITS} per Search"
                )
        else:
            n_queries = 1
        if query.include_vectors:
            self._check_reply_size(n_queries * query.k, spec.dimension, "Search")
        exclude = None
        if isinstance(query.target, ItemTarget):
            exclude = query.target.item_id
            queries = prepare_queries(self._stored_vector(query.collection, exclude, remaining), spec)
        elif isinstance(query.target, VectorTarget):
            queries = prepare_queries(query.target.vectors, spec)
        else:  # texts and images are embedded first (server/media.py)
            raise Internal(f"the engine searches vectors and items, not {type(query.target).__name__}")
        deadline = time.monotonic() + self.timeout_for(remaining)
        want = query.k + (1 if exclude is not None else 0)
        if query.filter is not None:
            self._check_filter_types(query.collection, query.filter)
        legacy = False
        try:
            outcome = self.router.search(
                query.collection,
                queries,
                want,
                query.ef,
                _left(deadline, "the search"),
                query.require_all_shards,
                filter=query.filter,
                explain=query.explain,
            )
            explain = _explain(outcome) if query.explain else None
        except FailedPrecondition:
            if query.filter is None or not self._keeps_index(query.collection):
                raise  # (without an item index a shard holds no item without a payload)
            # A shard holds items written before payloads: it cannot judge them, SQL can.
            outcome, matching = self._filtered(query, queries, want, deadline)
            legacy = True
            explain = SearchExplain(PLAN_LEGACY_SQL, matching) if query.explain else None
        rows = outcome.results
        if exclude is not None:
            rows = [[h for h in row if h.id != exclude] for row in rows]
        if not legacy and not query.include_metadata and not query.include_vectors:
            return SearchResult([row[: query.k] for row in rows], outcome.failed, {}, {}, explain)
        ids = list(dict.fromkeys(h.id for row in rows for h in row))
        with tracing.span("engine.metadata_join", ids=len(ids)):
            stored = self.router.fetch(query.collection, ids, _left(deadline, "fetching the hits")) if ids else {}
            metadata = self._metadata_of(query.collection, stored)
        if legacy and query.filter is not None:
            # The filter was planned on the SQL index; the item's own metadata, read with its
            # vector, has the last word (the index may lag a write, never lead it). Shards
            # filter on that metadata themselves.
            flt = query.filter
            rows = [[h for h in row if h.id in metadata and matches(flt, metadata[h.id])] for row in rows]
        hits = [row[: query.k] for row in rows]
        kept = {h.id for row in hits for h in row}
        metadata = {i: m for i, m in metadata.items() if i in kept} if query.include_metadata else {}
        vectors = {i: s.vector for i, s in stored.items() if i in kept} if query.include_vectors else {}
        return SearchResult(hits, outcome.failed, metadata, vectors, explain)

    def _keeps_index(self, collection: str) -> bool:
        """Whether the collection keeps the SQL item index (``MetadataStore.keeps_index``),
        cached for ``SPEC_TTL_S``."""
        return self._index_kept.get(collection, lambda: self.metadata.keeps_index(collection))

    def _check_filter_types(self, collection: str, node: Filter) -> None:
        """InvalidArgument when ``node`` names an attribute no item of the collection has, or
        gives one a value of another type (``server/filters.py::check_types``). The types are
        cached for ``SPEC_TTL_S`` and re-read once before refusing (an attribute may be new)."""

        def load() -> dict[str, str]:
            return self.metadata.attribute_types(collection)

        try:
            check_types(node, self._attr_types.get(collection, load))
        except InvalidArgument:
            check_types(node, self._attr_types.get(collection, load, fresh=True))

    def _stored_vector(self, collection: str, item_id: str, remaining: float | None) -> Matrix:
        vectors, _ = self.get(collection, [item_id], remaining)
        if item_id not in vectors:
            raise NotFound(f"item {item_id!r} does not exist in {collection!r}")
        return vectors[item_id][None, :]

    def _filtered(self, query: SearchQuery, queries: Queries, k: int, deadline: float) -> tuple[SearchOutcome, int]:
        """Plans a filtered search on the SQL index (a collection with items the shards cannot
        filter) and runs it; returns the outcome and the number of matching items. Every shard
        round trip gets what is left of the one ``deadline`` and starts only while the caller
        is still there (``_left``)."""
        collection, ef, require_all = query.collection, query.ef, query.require_all_shards
        assert query.filter is not None
        clause = compile_filter(query.filter, collection, self.metadata.attribute_types(collection))
        matching = self.metadata.count_matching(collection, clause)
        if matching == 0:
            return SearchOutcome([[] for _ in range(len(queries))]), 0
        total = max(matching, self.metadata.count(collection))
        options = self.options
        if matching <= options.allow_list_max and (
            matching <= options.allow_list_small or matching <= options.allow_list_selectivity * total
        ):
            allowed = self.metadata.ids_matching(collection, clause)
            timeout = _left(deadline, "the allow-list search")
            return self.router.search(collection, queries, k, ef, timeout, require_all, allow_ids=allowed), matching
        fetch = min(SHARD_MAX_K, max(k, math.ceil(k * total / matching * self.options.oversample)))
        while True:
            timeout = _left(deadline, f"a search for {fetch} candidates")
            outcome = self.router.search(collection, queries, fetch, max(ef, fetch), timeout, require_all)
            candidates = {h.id for row in outcome.results for h in row}
            passing = self.metadata.which_match(collection, list(candidates), clause)
            results = [[h for h in row if h.id in passing][:k] for row in outcome.results]
            done = all(len(r) >= min(k, matching) for r in results)
            if done or fetch >= total:
                return SearchOutcome(results, outcome.failed), matching
            if fetch >= SHARD_MAX_K:
                allowed = self.metadata.ids_matching(collection, clause)
                timeout = _left(deadline, "the allow-list search")
                return self.router.search(collection, queries, k, ef, timeout, require_all, allow_ids=allowed), matching
            fetch = min(SHARD_MAX_K, fetch * 4)

    # ------------------------------------------------------------------ cluster
    def shard_health(self, topology: Topology, timeout: float) -> list[ShardHealth]:
        """Probes every shard of ``topology`` now (collections and their counts, each call
        with ``timeout``); a shard that fails is reported unhealthy with the reason, never
        raised. Shards this server's router does not know yet get a temporary connection."""
        known = self.router.known  # every shard it knows (joining, drained too); replaced on topology changes
        out = []
        for info in topology.shards:
            shard: ShardApi | None = known.get(info.shard_id)
            temporary = None
            if shard is None:
                shard = temporary = RemoteShard(info.address)
            try:
                counts = {s.name: shard.stats(s.name, timeout).count for s in shard.list_collections(timeout)}
                out.append(ShardHealth(info.shard_id, info.address, info.weight, True, counts))
            except DomainError as exc:
                out.append(ShardHealth(info.shard_id, info.address, info.weight, False, {}, status.describe(exc)))
            finally:
                if temporary is not None:
                    temporary.close()
        return out


class TtlCache(Generic[V]):
    """Values by collection name, each loaded again once it is ``ttl_s`` old. Thread-safe as
    dict operations are: two threads may both load a stale entry; the last one stays."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[float, V]] = {}

    def get(self, key: str, load: Callable[[], V], fresh: bool = False) -> V:
        """The cached value, or ``load()``'s (always with ``fresh``), which is then cached."""
        now = time.monotonic()
        cached = self._entries.get(key)
        if cached is not None and not fresh and now - cached[0] < self.ttl_s:
            return cached[1]
        value = load()
        self._entries[key] = (now, value)
        return value

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)


def _explain(outcome: SearchOutcome) -> SearchExplain:
    plans = {stats.plan for stats in outcome.stats.values()}
    plan = plans.pop() if len(plans) == 1 else ""
    return SearchExplain(plan, sum(s.matched for s in outcome.stats.values()), dict(outcome.stats))


def _left(deadline: float, step: str) -> float:
    """The seconds left before ``deadline`` for ``step``; DeadlineExceeded when none are, and
    Cancelled when the caller has gone (``core.calls``)."""
    calls.check(step)
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded(f"the deadline passed before {step}")
    return left
