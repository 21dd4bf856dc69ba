"""Every unary call as an ``Op``: which RPC, its request and how to read its response, and
:class:`Attempts`, when to send it again. The sync and asyncio clients differ only in how they
send an Op and how they sleep."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from vectorsearch_client import _admin as adm
from vectorsearch_client import _convert as cv
from vectorsearch_client import _media as media
from vectorsearch_client._proto import admin_service_pb2 as admin_pb
from vectorsearch_client._proto import search_service_pb2 as pb
from vectorsearch_client.errors import ResourceExhausted, VectorSearchError
from vectorsearch_client.filters import Filter

T = TypeVar("T")

RETRY_JITTER = 0.1
"""Each wait on a retry hint is the hint plus up to this share of it (and up to 10 ms more), so
callers refused together do not all come back at once."""


def is_idempotent(service: str, method: str) -> bool:
    """Whether the RPC may be sent again (per the proto comments, ``_convert.IDEMPOTENT``)."""
    return method in cv.IDEMPOTENT.get(service, ())


@dataclass
class Attempts:
    """The attempts of one call: an idempotent call refused with RESOURCE_EXHAUSTED and a retry
    hint (``retry-after-ms``) is sent again after the hint, while the wait ends before the
    call's deadline (``timeout`` from its first attempt) and ``max_attempts`` are not used up.
    Anything else is raised: other errors, a non-idempotent call, a refusal without a hint."""

    idempotent: bool
    max_attempts: int
    timeout: float
    started: float = field(default_factory=time.monotonic)
    attempt: int = 1

    @classmethod
    def of(cls, service: str, method: str, max_attempts: int, timeout: float) -> Attempts:
        return cls(is_idempotent(service, method), max_attempts, timeout)

    def remaining(self) -> float:
        """The deadline of the next attempt: the whole ``timeout`` for the first."""
        if self.attempt == 1:
            return self.timeout
        return self.timeout - (time.monotonic() - self.started)

    def backoff(self, error: VectorSearchError) -> float | None:
        """Seconds to wait before the next attempt, or None: raise ``error``."""
        if not self.idempotent or not isinstance(error, ResourceExhausted) or error.retry_after_s is None:
            return None
        if self.attempt >= self.max_attempts:
            return None
        hint = max(0.0, error.retry_after_s)
        delay = hint + random.uniform(0.0, RETRY_JITTER * hint + 0.01)
        if delay >= self.timeout - (time.monotonic() - self.started):
            return None  # the deadline would pass before the server takes it: say so now
        self.attempt += 1
        return delay


@dataclass(frozen=True)
class Op(Generic[T]):
    service: str
    method: str
    request: Any
    parse: Callable[[Any], T]


def create_collection(
    name: str,
    dimension: int,
    metric: str,
    m: int,
    ef_construction: int,
    ef_search: int,
    embedding_model: str,
    quantization: str = "none",
) -> Op[bool]:
    request = cv.create_collection_request(
        name, dimension, metric, m, ef_construction, ef_search, embedding_model, quantization
    )
    return Op(cv.SEARCH, "CreateCollection", request, lambda r: bool(r.created))


def drop_collection(name: str) -> Op[bool]:
    return Op(cv.SEARCH, "DropCollection", pb.DropCollectionRequest(collection=name), lambda r: bool(r.dropped))


def list_collections() -> Op[list[cv.Collection]]:
    return Op(
        cv.SEARCH,
        "ListCollections",
        pb.ListCollectionsRequest(),
        lambda r: [cv.collection(spec) for spec in r.collections],
    )


def describe_collection(name: str) -> Op[cv.Collection]:
    return Op(
        cv.SEARCH,
        "DescribeCollection",
        pb.DescribeCollectionRequest(collection=name),
        lambda r: cv.collection(r.spec, int(r.count), r.embedding_model),
    )


def upsert(
    collection: str, ids: Sequence[str], vectors: cv.VectorsLike, metadata: Sequence[cv.MetadataLike] | None
) -> Op[int]:
    return Op(cv.SEARCH, "Upsert", cv.upsert_request(collection, ids, vectors, metadata), lambda r: int(r.upserted))


def get(collection: str, ids: Sequence[str], include_vectors: bool) -> Op[cv.GetResult]:
    request = pb.GetRequest(collection=collection, ids=list(ids), include_vectors=include_vectors)
    return Op(cv.SEARCH, "Get", request, cv.get_result)


def delete(collection: str, ids: Sequence[str]) -> Op[int]:
    request = pb.DeleteRequest(collection=collection, ids=[ids] if isinstance(ids, str) else list(ids))
    return Op(cv.SEARCH, "Delete", request, lambda r: int(r.deleted))


def _search_options(k: int, ef: int, filter: Filter | None, include_metadata: bool, **extra: Any) -> dict[str, Any]:
    """The fields every search request shares (the filter as protobuf), plus ``extra``."""
    proto_filter = filter.to_proto() if filter is not None else None
    return dict(k=k, ef=ef, filter=proto_filter, include_metadata=include_metadata, **extra)


def search(
    collection: str,
    vector: cv.VectorsLike | None,
    text: str | None,
    image: cv.ImageLike | None,
    k: int,
    ef: int,
    filter: Filter | None,
    include_metadata: bool,
    require_all_shards: bool,
    explain: bool = False,
) -> Op[cv.Hits]:
    if sum(x is not None for x in (vector, text, image)) != 1:
        raise ValueError("search needs exactly one of vector, text and image")
    options = _search_options(k, ef, filter, include_metadata, require_all_shards=require_all_shards, explain=explain)
    if vector is not None:
        queries = cv.vectors(vector)
        if queries.rows != 1:
            raise ValueError(f"search takes one query vector, got {queries.rows}")
        request: Any = pb.SearchRequest(collection=collection, queries=queries, **options)
        method = "Search"
    elif text is not None:
        request = pb.SearchByTextRequest(collection=collection, texts=[text], **options)
        method = "SearchByText"
    else:
        assert image is not None
        request = pb.SearchByImageRequest(collection=collection, images=[cv.image_bytes(image)], **options)
        method = "SearchByImage"
    return Op(cv.SEARCH, method, request, lambda r: cv.hits(r, include_metadata, explain))


def search_batch(
    collection: str,
    vectors: cv.VectorsLike,
    k: int,
    ef: int,
    filter: Filter | None,
    include_metadata: bool,
    require_all_shards: bool,
) -> Op[list[cv.Hits]]:
    queries = cv.vectors(vectors)
    if queries.rows < 1:
        raise ValueError("search_batch needs at least one query vector")
    options = _search_options(k, ef, filter, include_metadata, require_all_shards=require_all_shards)
    request = pb.SearchRequest(collection=collection, queries=queries, **options)
    return Op(cv.SEARCH, "Search", request, lambda r: cv.hits_per_query(r, include_metadata))


def search_by_id(
    collection: str, id: str, k: int, ef: int, filter: Filter | None, include_metadata: bool, explain: bool = False
) -> Op[cv.Hits]:
    options = _search_options(k, ef, filter, include_metadata, explain=explain)
    request = pb.SearchByIdRequest(collection=collection, id=id, **options)
    return Op(cv.SEARCH, "SearchById", request, lambda r: cv.hits(r, include_metadata, explain))


def describe_embedding_model() -> Op[media.EmbeddingModel]:
    request = pb.DescribeEmbeddingModelRequest()
    return Op(cv.SEARCH, "DescribeEmbeddingModel", request, media.embedding_model)


@dataclass(frozen=True)
class StreamOp(Generic[T]):
    """A client-streaming call: its messages (built before sending) and its response's parser."""

    service: str
    method: str
    requests: list[Any]
    parse: Callable[[Any], T]


def ingest_images(collection: str, items: Iterable[media.ImageInput], batch_size: int) -> StreamOp[media.IngestResult]:
    requests = media.image_requests(collection, items, batch_size)
    return StreamOp(cv.SEARCH, "IngestImages", requests, media.ingest_result)


def ingest_texts(collection: str, items: Iterable[media.TextInput], batch_size: int) -> StreamOp[media.IngestResult]:
    requests = media.text_requests(collection, items, batch_size)
    return StreamOp(cv.SEARCH, "IngestTexts", requests, media.ingest_result)


def cluster_status() -> Op[adm.ClusterStatus]:
    return Op(cv.ADMIN, "ClusterStatus", admin_pb.ClusterStatusRequest(), adm.cluster_status)


def compact(collection: str, wait: bool) -> Op[list[adm.ShardIndexStatus]]:
    request = admin_pb.CompactRequest(collection=collection, wait=wait)
    return Op(cv.ADMIN, "Compact", request, adm.shard_index_statuses)


def add_shard(shard_id: str, address: str, weight: float, no_rebalance: bool) -> Op[adm.RebalanceStatus | None]:
    request = admin_pb.AddShardRequest(shard_id=shard_id, address=address, weight=weight, no_rebalance=no_rebalance)
    return Op(cv.ADMIN, "AddShard", request, adm.optional_rebalance)


def drain_shard(shard_id: str) -> Op[adm.RebalanceStatus | None]:
    return Op(cv.ADMIN, "DrainShard", admin_pb.DrainShardRequest(shard_id=shard_id), adm.optional_rebalance)


def remove_shard(shard_id: str) -> Op[None]:
    return Op(cv.ADMIN, "RemoveShard", admin_pb.RemoveShardRequest(shard_id=shard_id), lambda r: None)


def rebalance(dry_run: bool) -> Op[adm.RebalanceResult]:
    return Op(cv.ADMIN, "Rebalance", admin_pb.RebalanceRequest(dry_run=dry_run), adm.rebalance_result)


def rebalance_status(rebalance_id: int) -> Op[adm.RebalanceStatus | None]:
    request = admin_pb.GetRebalanceStatusRequest(rebalance_id=rebalance_id)
    return Op(cv.ADMIN, "GetRebalanceStatus", request, adm.optional_rebalance)


def abort_rebalance() -> Op[adm.RebalanceStatus | None]:
    return Op(cv.ADMIN, "AbortRebalance", admin_pb.AbortRebalanceRequest(), adm.optional_rebalance)


def create_api_key(
    name: str, role: str, collections: Sequence[str] | None, requests_per_s: float | None, items_per_s: float | None
) -> Op[adm.CreatedApiKey]:
    request = admin_pb.CreateApiKeyRequest(
        name=name,
        role=adm.role_number(role),
        collections=[collections] if isinstance(collections, str) else list(collections or ()),
        requests_per_s=requests_per_s or 0.0,
        items_per_s=items_per_s or 0.0,
    )
    return Op(cv.ADMIN, "CreateApiKey", request, adm.created_api_key)


def list_api_keys(include_revoked: bool) -> Op[list[adm.ApiKey]]:
    return Op(cv.ADMIN, "ListApiKeys", admin_pb.ListApiKeysRequest(include_revoked=include_revoked), adm.api_keys)


def revoke_api_key(key_id: str) -> Op[bool]:
    return Op(cv.ADMIN, "RevokeApiKey", admin_pb.RevokeApiKeyRequest(key_id=key_id), lambda r: bool(r.revoked))
