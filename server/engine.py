"""The service's domain logic: collections, writes, reads and planned (filtered) search.

Combines the metadata store (SQL) and the router (shards). Knows nothing about gRPC.

Write order: input is validated completely first (ids, vectors, metadata types), so bad input
changes nothing; then vectors go to their shards (durable there), then metadata is
committed. A failure in between leaves state that a retry of the same idempotent write
repairs. Deletes run in the same order.

Filtered search planning: the number of items matching the filter is counted in SQL. When
few match (at most ``allow_list_small``, or a selectivity of at most
``allow_list_selectivity``, and never more than ``allow_list_max``), their ids become
per-shard allow-lists and the shards search exactly among them. Otherwise the graph is
searched for ``k / selectivity * oversample`` candidates, which are then filtered in one
SQL query; the candidate count grows 4x until k results are found or the collection is
exhausted (falling back to an allow-list when it would exceed the shards' k limit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from core.errors import InvalidArgument, NotFound
from core.spec import MAX_GET_IDS, CollectionSpec
from core.spec import MAX_K as SHARD_MAX_K
from core.vectors import decode_matrix, last_wins, prepare_for_metric, validate_ids
from router.fanout import Router, SearchOutcome
from router.merge import Hit
from server.filters import compile_filter
from server.metadata import ItemMeta, MetadataStore
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import shard_service_pb2 as shard_pb
from vsproto.v1 import types_pb2

Matrix = npt.NDArray[np.float32]
MAX_K = 1000
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


@dataclass
class SearchResult:
    hits: list[list[Hit]]
    failed: dict[str, str]
    metadata: dict[str, ItemMeta]
    vectors: dict[str, Matrix]
    strategy: str


class Engine:
    def __init__(self, metadata: MetadataStore, router: Router, options: EngineOptions | None = None) -> None:
        self.metadata = metadata
        self.router = router
        self.options = options or EngineOptions()
        self._specs: dict[str, tuple[float, CollectionSpec]] = {}

    def spec(self, name: str) -> CollectionSpec:
        """The collection's spec, cached for ``SPEC_TTL_S`` (specs are immutable; the TTL only
        bounds how long a drop by another server goes unnoticed here — the shards answer
        NOT_FOUND meanwhile)."""
        now = time.monotonic()
        cached = self._specs.get(name)
        if cached is not None and now - cached[0] < SPEC_TTL_S:
            return cached[1]
        spec = self.metadata.spec(name)
        self._specs[name] = (now, spec)
        return spec

    @staticmethod
    def decode(spec: CollectionSpec, vectors: types_pb2.Vectors, what: str) -> Matrix:
        return decode_matrix(vectors.dimension, vectors.packed, vectors.values, spec.dimension, what)

    def _timeout(self, remaining: float | None) -> float:
        if remaining is None:
            return self.options.timeout_s
        return max(0.05, min(self.options.timeout_s, remaining - 0.05))

    # ------------------------------------------------------------------ collections
    def create_collection(self, spec: CollectionSpec, remaining: float | None = None) -> tuple[bool, CollectionSpec]:
        created, stored = self.metadata.create_collection(spec)
        message = types_pb2.CollectionSpec(
            name=spec.name,
            dimension=spec.dimension,
            metric=types_pb2.Metric.Name(spec.metric.value),
            hnsw=types_pb2.HnswParams(m=spec.m, ef_construction=spec.ef_construction, ef_search=spec.ef_search),
        )
        self.router.create_collection(message, self._timeout(remaining))  # idempotent: repairs a half-done create
        return created, stored

    def drop_collection(self, name: str, remaining: float | None = None) -> bool:
        self._specs.pop(name, None)
        in_shards = self.router.drop_collection(name, self._timeout(remaining))
        return self.metadata.drop_collection(name) or in_shards

    def compact(
        self, collection: str, wait: bool, remaining: float | None = None
    ) -> dict[str, shard_pb.CollectionStats]:
        """Folds every shard's delta into its graph (see AdminService.Compact)."""
        self.spec(collection)
        timeout = COMPACT_TIMEOUT_S if remaining is None else max(0.05, min(COMPACT_TIMEOUT_S, remaining - 0.05))
        return self.router.compact(collection, wait, timeout)

    # ------------------------------------------------------------------ writes
    def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        wire_vectors: types_pb2.Vectors,
        metas: Sequence[ItemMeta],
        remaining: float | None = None,
    ) -> int:
        spec = self.spec(collection)
        id_list = validate_ids(ids, "items")
        vectors = self.decode(spec, wire_vectors, "vectors")
        if len(id_list) != len(vectors) or len(metas) != len(id_list):
            raise InvalidArgument(f"{len(id_list)} items but {len(vectors)} vectors")
        prepare_for_metric(vectors, spec.metric, "vectors")  # rejects zero vectors for cosine up front
        keep = {item: i for i, item in enumerate(id_list)}  # last duplicate wins, for metadata too
        unique_ids, unique_vectors = last_wins(id_list, vectors)
        batch = [(item, metas[keep[item]]) for item in unique_ids]
        new_types = self.metadata.check_types(collection, batch)
        self.router.upsert(collection, unique_ids, unique_vectors, self._timeout(remaining))
        self.metadata.upsert(collection, batch, new_types)
        return len(unique_ids)

    def delete(self, collection: str, ids: Sequence[str], remaining: float | None = None) -> int:
        self.spec(collection)
        id_list = list(dict.fromkeys(validate_ids(ids)))
        deleted = self.router.delete(collection, id_list, self._timeout(remaining))
        self.metadata.delete(collection, id_list)
        return deleted

    # ------------------------------------------------------------------ reads
    def get(
        self, collection: str, ids: Sequence[str], remaining: float | None = None
    ) -> tuple[dict[str, Matrix], dict[str, ItemMeta]]:
        """Vectors (the shards are the truth for existence) and metadata of the ids."""
        self.spec(collection)
        id_list = validate_ids(ids)
        if len(id_list) > MAX_GET_IDS:
            raise InvalidArgument(f"at most {MAX_GET_IDS} ids per Get, got {len(id_list)}")
        vectors = self.router.get(collection, list(dict.fromkeys(id_list)), self._timeout(remaining))
        return vectors, self.metadata.fetch(collection, list(vectors))

    def search(
        self,
        collection: str,
        queries: Matrix | types_pb2.Vectors,
        k: int,
        ef: int,
        filter_message: pb.Filter | None,
        include_metadata: bool,
        include_vectors: bool,
        require_all: bool,
        remaining: float | None = None,
        exclude: str | None = None,
    ) -> SearchResult:
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k must be in 1..{MAX_K}, got {k}")
        spec = self.spec(collection)
        if isinstance(queries, types_pb2.Vectors):
            queries = self.decode(spec, queries, "queries")
        prepare_for_metric(queries, spec.metric, "queries")
        timeout = self._timeout(remaining)
        want = k + (1 if exclude is not None else 0)
        if filter_message is None:
            outcome = self.router.search(collection, queries, want, ef, timeout, require_all)
            strategy = "graph"
        else:
            outcome, strategy = self._filtered(collection, queries, want, ef, filter_message, timeout, require_all)
        hits = [[h for h in row if h.id != exclude][:k] for row in outcome.results]
        ids = list(dict.fromkeys(h.id for row in hits for h in row))
        metadata = self.metadata.fetch(collection, ids) if include_metadata else {}
        vectors = self.router.get(collection, ids, timeout) if include_vectors and ids else {}
        return SearchResult(hits, outcome.failed, metadata, vectors, strategy)

    def search_by_id(self, collection: str, item_id: str, remaining: float | None = None) -> Matrix:
        vectors, _ = self.get(collection, [item_id], remaining)
        if item_id not in vectors:
            raise NotFound(f"item {item_id!r} does not exist in {collection!r}")
        return vectors[item_id][None, :]

    def _filtered(
        self,
        collection: str,
        queries: Matrix,
        k: int,
        ef: int,
        filter_message: pb.Filter,
        timeout: float,
        require_all: bool,
    ) -> tuple[SearchOutcome, str]:
        clause = compile_filter(filter_message, collection, self.metadata.attribute_types(collection))
        matching = self.metadata.count_matching(collection, clause)
        if matching == 0:
            return SearchOutcome([[] for _ in range(len(queries))]), "empty"
        total = max(matching, self.metadata.count(collection))
        options = self.options
        if matching <= options.allow_list_max and (
            matching <= options.allow_list_small or matching <= options.allow_list_selectivity * total
        ):
            allowed = self.metadata.ids_matching(collection, clause)
            return self.router.search(collection, queries, k, ef, timeout, require_all, allow_ids=allowed), "allow-list"
        fetch = min(SHARD_MAX_K, max(k, math.ceil(k * total / matching * self.options.oversample)))
        while True:
            outcome = self.router.search(collection, queries, fetch, max(ef, fetch), timeout, require_all)
            candidates = {h.id for row in outcome.results for h in row}
            passing = self.metadata.which_match(collection, list(candidates), clause)
            results = [[h for h in row if h.id in passing][:k] for row in outcome.results]
            done = all(len(r) >= min(k, matching) for r in results)
            if done or fetch >= total:
                return SearchOutcome(results, outcome.failed), "post-filter"
            if fetch >= SHARD_MAX_K:
                allowed = self.metadata.ids_matching(collection, clause)
                return self.router.search(
                    collection, queries, k, ef, timeout, require_all, allow_ids=allowed
                ), "allow-list-fallback"
            fetch = min(SHARD_MAX_K, fetch * 4)
