"""The one proto <-> domain conversion module of the public API (``vectorsearch.v1``).

Protobuf stops at the gRPC edge: the servicers convert each request here into domain types
(``core/``) and each domain result back into its response message; nothing past the servicers
imports a protobuf module. A malformed message is ``core.errors.InvalidArgument`` with a message
meant for the client; nothing is partially converted.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from core import limits, status
from core.errors import DomainError, InvalidArgument, ResourceExhausted
from core.items import ItemMeta
from core.vectors import Matrix
from server.media import ItemOutcome, MediaItem
from server.query import (
    PLAN_LEGACY_SQL,
    ImageTarget,
    ItemTarget,
    SearchExplain,
    SearchQuery,
    SearchResult,
    ShardHealth,
    TextTarget,
    VectorTarget,
)
from shard.planner import PLAN_ACORN, PLAN_EMPTY, PLAN_EXACT, PLAN_FILTERED_GRAPH, PLAN_GRAPH
from shard.types import CollectionStats
from vsproto.common import matrix_from_proto
from vsproto.filters import filter_from_proto as filter_from_proto
from vsproto.payload import meta_from_proto as meta_from_proto
from vsproto.payload import meta_to_proto as meta_to_proto
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import search_service_pb2 as pb

# ---------------------------------------------------------------------------------- filters
# filter_from_proto lives with filter_to_proto in vsproto/filters.py: the shards read the same
# Filter message.


# ---------------------------------------------------------------------------------- metadata
# meta_from_proto and meta_to_proto live with the payload codec (vsproto/payload.py), which
# encodes an item's metadata as the public Metadata message.


# ---------------------------------------------------------------------------------- writes and reads


def upsert_from_proto(request: pb.UpsertRequest) -> tuple[list[str], Matrix, list[ItemMeta]]:
    """Ids, vectors (layout checked; dimension and values are the engine's to check) and
    metadata of an upsert batch."""
    if not request.items:
        raise InvalidArgument("upsert: empty batch")
    if len(request.items) > limits.MAX_BATCH_ITEMS:  # before converting them all
        raise InvalidArgument(f"upsert: {len(request.items)} items, at most {limits.MAX_BATCH_ITEMS} per message")
    ids = [item.id for item in request.items]
    metas = [meta_from_proto(item.metadata) if item.HasField("metadata") else ItemMeta() for item in request.items]
    return ids, matrix_from_proto(request.vectors, "vectors"), metas


def get_response_to_proto(
    requested: Sequence[str], vectors: dict[str, Matrix], metas: dict[str, ItemMeta], include_vectors: bool
) -> pb.GetResponse:
    """Found items in request order (with their vectors when asked), then the missing ids."""
    reply = pb.GetResponse()
    for item_id in requested:
        if item_id in vectors:
            item = reply.items.add(id=item_id, metadata=meta_to_proto(metas.get(item_id, ItemMeta())))
            if include_vectors:
                item.vector.extend(vectors[item_id].tolist())
        else:
            reply.missing_ids.append(item_id)
    return reply


# ---------------------------------------------------------------------------------- search


def _search_query(
    request: pb.SearchRequest | pb.SearchByIdRequest | pb.SearchByTextRequest | pb.SearchByImageRequest,
    target: VectorTarget | ItemTarget | TextTarget | ImageTarget,
) -> SearchQuery:
    """The query of any search request: its target and the options they all share."""
    return SearchQuery(
        collection=request.collection,
        target=target,
        k=request.k,
        ef=request.ef,
        filter=filter_from_proto(request.filter) if request.HasField("filter") else None,
        include_metadata=request.include_metadata,
        include_vectors=request.include_vectors,
        require_all_shards=request.require_all_shards,
        explain=request.explain,
    )


def search_query_from_proto(request: pb.SearchRequest) -> SearchQuery:
    return _search_query(request, VectorTarget(matrix_from_proto(request.queries, "queries")))


def search_by_id_query_from_proto(request: pb.SearchByIdRequest) -> SearchQuery:
    return _search_query(request, ItemTarget(request.id))


def text_search_from_proto(request: pb.SearchByTextRequest) -> SearchQuery:
    return _search_query(request, TextTarget(list(request.texts)))


def image_search_from_proto(request: pb.SearchByImageRequest) -> SearchQuery:
    return _search_query(request, ImageTarget(list(request.images)))


# ---------------------------------------------------------------------------------- ingestion
def image_items_from_proto(items: Sequence[pb.ImageItem]) -> list[MediaItem]:
    """One MediaItem per message item; an item whose metadata does not convert carries the
    error (it fails alone)."""
    out = []
    for item in items:
        source = item.WhichOneof("source")
        out.append(_media_item(item.id, item.data if source == "data" else None, item.uri, item.metadata))
    return out


def text_items_from_proto(items: Sequence[pb.TextItem]) -> list[MediaItem]:
    return [_media_item(item.id, item.text.encode("utf-8") if item.text else None, "", item.metadata) for item in items]


def _media_item(item_id: str, data: bytes | None, uri: str, metadata: pb.Metadata) -> MediaItem:
    try:
        meta = meta_from_proto(metadata)
    except DomainError as exc:
        return MediaItem(item_id, None, uri, ItemMeta(), exc)
    return MediaItem(item_id, data, uri, meta)


def ingest_response_to_proto(outcomes: Sequence[ItemOutcome], model: str) -> pb.IngestResponse:
    reply = pb.IngestResponse(embedding_model=model)
    for outcome in outcomes:
        item = reply.items.add(id=outcome.id, unchanged=outcome.unchanged)
        if outcome.error is None:
            if outcome.unchanged:
                reply.unchanged += 1
            else:
                reply.ingested += 1
            continue
        reply.failed += 1
        code = status.to_code(outcome.error)
        item.code = (code or grpc.StatusCode.INTERNAL).value[0]
        item.message = str(outcome.error)
        if isinstance(outcome.error, ResourceExhausted) and outcome.error.retry_after_s is not None:
            item.message += f" (retry after {max(1, round(outcome.error.retry_after_s * 1000))} ms)"
    return reply


def search_result_to_proto(result: SearchResult) -> pb.SearchResponse:
    reply = pb.SearchResponse(partial=bool(result.failed), failed_shards=sorted(result.failed))
    for row in result.hits:
        query = reply.results.add()
        for hit in row:
            out = query.hits.add(id=hit.id, distance=hit.distance)
            meta = result.metadata.get(hit.id)
            if meta is not None:
                out.metadata.CopyFrom(meta_to_proto(meta))
            vector = result.vectors.get(hit.id)
            if vector is not None:
                out.vector.extend(vector.tolist())
    if result.explain is not None:
        reply.explain.CopyFrom(explain_to_proto(result.explain))
    return reply


_PLANS = {
    PLAN_GRAPH: pb.SEARCH_PLAN_GRAPH,
    PLAN_EXACT: pb.SEARCH_PLAN_EXACT,
    PLAN_FILTERED_GRAPH: pb.SEARCH_PLAN_FILTERED_GRAPH,
    PLAN_ACORN: pb.SEARCH_PLAN_ACORN,
    PLAN_EMPTY: pb.SEARCH_PLAN_EMPTY,
    PLAN_LEGACY_SQL: pb.SEARCH_PLAN_LEGACY_SQL,
}


def explain_to_proto(explain: SearchExplain) -> pb.SearchExplain:
    message = pb.SearchExplain(matched=explain.matched, plan=_PLANS.get(explain.plan, pb.SEARCH_PLAN_UNSPECIFIED))
    for shard_id, stats in sorted(explain.shards.items()):
        message.shards.add(
            shard_id=shard_id,
            plan=_PLANS.get(stats.plan, pb.SEARCH_PLAN_UNSPECIFIED),
            matched=stats.matched,
            matched_in_delta=stats.matched_in_delta,
            scored=stats.scored,
            candidates=stats.candidates,
            widenings=stats.widenings,
            micros=stats.micros,
        )
    return message


# ---------------------------------------------------------------------------------- admin


def compact_response_to_proto(stats: dict[str, CollectionStats]) -> admin_pb.CompactResponse:
    reply = admin_pb.CompactResponse()
    for shard_id, s in stats.items():
        reply.shards.add(shard_id=shard_id, count=s.count, graph_elements=s.graph_elements, delta_size=s.delta_size)
    return reply


def cluster_status_to_proto(ring_version: int, shards: Sequence[ShardHealth]) -> admin_pb.ClusterStatusResponse:
    reply = admin_pb.ClusterStatusResponse(ring_version=ring_version)
    for health in shards:
        status = reply.shards.add(
            shard_id=health.shard_id,
            address=health.address,
            weight=health.weight,
            healthy=health.healthy,
            error=health.error,
        )
        status.collection_counts.update(health.collection_counts)
    return reply
