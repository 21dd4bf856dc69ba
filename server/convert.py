"""The one proto <-> domain conversion module of the public API (``vectorsearch.v1``).

Protobuf stops at the gRPC edge: the servicers convert each request here into domain types
(``core/``) and each domain result back into its response message; nothing past the servicers
imports a protobuf module. A malformed message is ``core.errors.InvalidArgument`` with a message
meant for the client; nothing is partially converted.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from core import filters, limits, status
from core.errors import DomainError, InvalidArgument, ResourceExhausted
from core.items import ItemMeta
from core.text import quote
from core.vectors import Matrix
from server.media import ItemOutcome, MediaItem
from server.query import ImageTarget, ItemTarget, SearchQuery, SearchResult, ShardHealth, TextTarget, VectorTarget
from shard.types import CollectionStats
from vsproto.common import matrix_from_proto
from vsproto.payload import meta_from_proto as meta_from_proto
from vsproto.payload import meta_to_proto as meta_to_proto
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import search_service_pb2 as pb

# ---------------------------------------------------------------------------------- filters


def filter_from_proto(message: pb.Filter) -> filters.Filter:
    """The domain filter tree of ``message``.

    Raises InvalidArgument for a filter (or a sub-filter) with no kind set, a condition with no
    op set, a value with no type set, and every rule the domain tree enforces (``core/filters.py``:
    nesting deeper than ``MAX_DEPTH``, more than ``MAX_NODES`` nodes or ``MAX_VALUES`` values,
    NaN, a string that cannot be stored, a range without bounds, a range or non-string value on
    tags / uri, a field of another form). Depth, nodes and values are also counted top-down
    while converting, so an oversized message is refused before most of it is converted. Rules
    that need the collection's attribute types are checked later, when the tree is compiled.
    """
    return _filter(message, 0, _Budget())


class _Budget:
    """Nodes and values converted so far, against the bounds of ``core/filters.py``."""

    def __init__(self) -> None:
        self.nodes = 0
        self.values = 0

    def take(self, nodes: int, values: int) -> None:
        self.nodes += nodes
        self.values += values
        if self.nodes > filters.MAX_NODES:
            raise InvalidArgument(f"filter has more than {filters.MAX_NODES} nodes")
        if self.values > filters.MAX_VALUES:
            raise InvalidArgument(f"filter lists more than {filters.MAX_VALUES} values in all")


def _filter(message: pb.Filter, level: int, budget: _Budget) -> filters.Filter:
    if level > filters.MAX_DEPTH:
        raise InvalidArgument(f"filter nested deeper than {filters.MAX_DEPTH}")
    budget.take(1, 0)
    kind = message.WhichOneof("kind")
    if kind == "condition":
        return _condition(message.condition, budget)
    if kind in ("all_of", "any_of"):
        children = getattr(message, kind).filters
        converted = tuple(_filter(child, level + 1, budget) for child in children)
        return filters.AllOf(converted) if kind == "all_of" else filters.AnyOf(converted)
    if kind == "not":
        return filters.Not(_filter(getattr(message, "not"), level + 1, budget))
    raise InvalidArgument("filter: empty filter (set condition, all_of, any_of or not)")


def _condition(cond: pb.Condition, budget: _Budget) -> filters.Condition:
    where = f"filter on {quote(cond.field)}"
    op = cond.WhichOneof("op")
    if op == "eq":
        budget.take(0, 1)
        return filters.Condition(cond.field, filters.Eq(_value(cond.eq, where)))
    if op == "in":
        values = getattr(cond, "in").values
        if len(values) > filters.MAX_IN_VALUES:  # before converting them all
            raise InvalidArgument(f"{where}: more than {filters.MAX_IN_VALUES} values in 'in'")
        budget.take(0, len(values))
        return filters.Condition(cond.field, filters.In(tuple(_value(v, where) for v in values)))
    if op == "range":
        rng = cond.range
        bounds = {name: _value(getattr(rng, name), where) for name in ("gte", "gt", "lte", "lt") if rng.HasField(name)}
        budget.take(0, len(bounds))
        return filters.Condition(cond.field, filters.Range(**bounds))
    raise InvalidArgument(f"{where}: set one of eq, in, range")


def _value(value: pb.AttributeValue, where: str) -> filters.Value:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    raise InvalidArgument(f"{where}: a value has no type set")


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
    return reply


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
