"""The one proto <-> domain conversion module of the public API (``vectorsearch.v1``).

Protobuf stops at the gRPC edge: the servicers convert each request here into domain types
(``core/``) and each domain result back into its response message; nothing past the servicers
imports a protobuf module. A malformed message is ``core.errors.InvalidArgument`` with a message
meant for the client; nothing is partially converted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import grpc

from core import limits, status
from core.errors import DomainError, Internal, InvalidArgument, ResourceExhausted
from core.items import ItemMeta
from core.principal import Principal, Role
from core.text import check_text, quote
from core.vectors import Matrix
from router.moves import Kind, MovePlan, MoveStatus, RebalanceStatus, State
from server.auth.keys import ApiKeyRecord
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


def cluster_status_to_proto(
    ring_version: int,
    shards: Sequence[ShardHealth],
    *,
    shard_states: Mapping[str, str] | None = None,
    rebalance: RebalanceStatus | None = None,
) -> admin_pb.ClusterStatusResponse:
    """The cluster as probed; ``shard_states`` (shard id -> "active", "joining", "draining",
    "drained"; a shard not named is sent without a state) and the running ``rebalance`` when
    the server has a rebalancer."""
    reply = admin_pb.ClusterStatusResponse(ring_version=ring_version)
    states = shard_states or {}
    for health in shards:
        status = reply.shards.add(
            shard_id=health.shard_id,
            address=health.address,
            weight=health.weight,
            healthy=health.healthy,
            error=health.error,
            state=states.get(health.shard_id, ""),
        )
        status.collection_counts.update(health.collection_counts)
    if rebalance is not None:
        reply.rebalance.CopyFrom(rebalance_status_to_proto(rebalance))
    return reply


def shard_health_for(principal: Principal, shards: Sequence[ShardHealth]) -> list[ShardHealth]:
    """What ``principal`` may see of the probed shards: addresses (also inside error messages)
    only for admins, item counts only of its collections."""
    out = []
    for health in shards:
        if not principal.may(Role.ADMIN):
            error = health.error.replace(health.address, "<address>") if health.address else health.error
            health = replace(health, address="", error=error)
        if principal.collections is not None:
            counts = {c: n for c, n in health.collection_counts.items() if c in principal.collections}
            health = replace(health, collection_counts=counts)
        out.append(health)
    return out


# ---------------------------------------------------------------------------------- API keys
_ROLES = {
    Role.READ: admin_pb.API_KEY_ROLE_READ,
    Role.WRITE: admin_pb.API_KEY_ROLE_WRITE,
    Role.ADMIN: admin_pb.API_KEY_ROLE_ADMIN,
}
_ROLES_BACK: dict[int, Role] = {int(number): role for role, number in _ROLES.items()}


def role_from_proto(value: int) -> Role:
    role = _ROLES_BACK.get(value)
    if role is None:
        raise InvalidArgument("role must be API_KEY_ROLE_READ, API_KEY_ROLE_WRITE or API_KEY_ROLE_ADMIN")
    return role


def api_key_to_proto(record: ApiKeyRecord) -> admin_pb.ApiKey:
    """A stored key for the client: never its hash."""
    return admin_pb.ApiKey(
        key_id=record.key_id,
        name=record.name,
        role=_ROLES[record.role],
        collections=sorted(record.collections or ()),
        requests_per_s=record.requests_per_s or 0.0,
        items_per_s=record.items_per_s or 0.0,
        created_at=record.created_at,
        revoked_at=record.revoked_at or 0.0,
    )


# ---------------------------------------------------------------------------------- rebalancing
# router/moves.py's domain types <-> the RebalanceState/RebalanceKind enums and the MovePlan,
# MoveStatus and RebalanceStatus messages. Each enum member maps to the proto value of the same
# name (State.CATCHING_UP <-> REBALANCE_STATE_CATCHING_UP); tests/unit/test_admin_convert.py
# fails when a member has none.

# The bounds of the topology tables' columns (core/schema.py, vs_shards).
MAX_SHARD_ID_BYTES = 128
MAX_ADDRESS_BYTES = 512

_STATE_PREFIX = "REBALANCE_STATE_"
_KIND_PREFIX = "REBALANCE_KIND_"
_STATE_TO_PROTO: dict[State, admin_pb.RebalanceState] = {
    s: getattr(admin_pb, _STATE_PREFIX + s.name)
    for s in State
    if _STATE_PREFIX + s.name in admin_pb.RebalanceState.DESCRIPTOR.values_by_name
}
_STATE_FROM_PROTO: dict[int, State] = {v: s for s, v in _STATE_TO_PROTO.items()}
_KIND_TO_PROTO: dict[Kind, admin_pb.RebalanceKind] = {
    k: getattr(admin_pb, _KIND_PREFIX + k.name)
    for k in Kind
    if _KIND_PREFIX + k.name in admin_pb.RebalanceKind.DESCRIPTOR.values_by_name
}
_KIND_FROM_PROTO: dict[int, Kind] = {v: k for k, v in _KIND_TO_PROTO.items()}


def state_to_proto(state: State) -> admin_pb.RebalanceState:
    """The RebalanceState value of ``state``; Internal when the proto has none (a bug: add it)."""
    try:
        return _STATE_TO_PROTO[state]
    except KeyError:
        raise Internal(f"rebalance state {state.name} has no RebalanceState value") from None


def state_from_proto(value: int) -> State:
    """The State of a RebalanceState value; InvalidArgument for UNSPECIFIED or an unknown one."""
    try:
        return _STATE_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgument(f"unknown rebalance state {value}") from None


def kind_to_proto(kind: Kind) -> admin_pb.RebalanceKind:
    """The RebalanceKind value of ``kind``; Internal when the proto has none (a bug: add it)."""
    try:
        return _KIND_TO_PROTO[kind]
    except KeyError:
        raise Internal(f"rebalance kind {kind.name} has no RebalanceKind value") from None


def kind_from_proto(value: int) -> Kind:
    """The Kind of a RebalanceKind value; InvalidArgument for UNSPECIFIED or an unknown one."""
    try:
        return _KIND_FROM_PROTO[value]
    except KeyError:
        raise InvalidArgument(f"unknown rebalance kind {value}") from None


def move_plan_to_proto(plan: MovePlan) -> admin_pb.MovePlan:
    message = admin_pb.MovePlan(
        source=plan.source, target=plan.target, ranges=plan.ranges, total_items=plan.total_items
    )
    message.items.update(plan.items)
    return message


def move_plan_from_proto(message: admin_pb.MovePlan) -> MovePlan:
    """The domain plan (``total_items`` is recomputed from ``items``)."""
    return MovePlan(message.source, message.target, message.ranges, dict(message.items))


def move_status_to_proto(move: MoveStatus) -> admin_pb.MoveStatus:
    return admin_pb.MoveStatus(
        source=move.source,
        target=move.target,
        state=state_to_proto(move.state),
        items_planned=move.items_planned,
        items_copied=move.items_copied,
        wal_lag=move.wal_lag,
        elapsed_s=move.elapsed_s,
        error=move.error,
    )


def move_status_from_proto(message: admin_pb.MoveStatus) -> MoveStatus:
    return MoveStatus(
        source=message.source,
        target=message.target,
        state=state_from_proto(message.state),
        items_planned=message.items_planned,
        items_copied=message.items_copied,
        wal_lag=message.wal_lag,
        elapsed_s=message.elapsed_s,
        error=message.error,
    )


def rebalance_status_to_proto(status: RebalanceStatus) -> admin_pb.RebalanceStatus:
    return admin_pb.RebalanceStatus(
        rebalance_id=status.rebalance_id,
        kind=kind_to_proto(status.kind),
        state=state_to_proto(status.state),
        from_ring_version=status.from_version,
        to_ring_version=status.to_version,
        moves=[move_status_to_proto(m) for m in status.moves],
        shard_id=status.shard,
        error=status.error,
        started_at=status.started_at,
        updated_at=status.updated_at,
        elapsed_s=status.elapsed_s,
    )


def rebalance_status_from_proto(message: admin_pb.RebalanceStatus) -> RebalanceStatus:
    return RebalanceStatus(
        rebalance_id=message.rebalance_id,
        kind=kind_from_proto(message.kind),
        state=state_from_proto(message.state),
        from_version=message.from_ring_version,
        to_version=message.to_ring_version,
        moves=[move_status_from_proto(m) for m in message.moves],
        shard=message.shard_id,
        error=message.error,
        started_at=message.started_at,
        updated_at=message.updated_at,
        elapsed_s=message.elapsed_s,
    )


def optional_rebalance_from_proto(message: Any) -> RebalanceStatus | None:
    """The ``rebalance`` field of a response (any message with one), None when unset."""
    return rebalance_status_from_proto(message.rebalance) if message.HasField("rebalance") else None


def _with_rebalance(reply: Any, status: RebalanceStatus | None) -> Any:
    if status is not None:
        reply.rebalance.CopyFrom(rebalance_status_to_proto(status))
    return reply


def shard_id_from_proto(shard_id: str) -> str:
    """A shard id as the topology stores it: not empty, storable text of at most
    MAX_SHARD_ID_BYTES bytes."""
    return check_text(shard_id, "shard_id", MAX_SHARD_ID_BYTES, allow_empty=False)


def shard_address_from_proto(address: str) -> str:
    """``host:port`` (an IPv6 host in brackets), port 1..65535; InvalidArgument otherwise."""
    check_text(address, "address", MAX_ADDRESS_BYTES, allow_empty=False)
    host, sep, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    bad_host = not host or any(c.isspace() or c in "/[]" for c in host)
    if not sep or bad_host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f"address {quote(address)} is not host:port (port 1..65535)")
    return address


def shard_weight_from_proto(weight: float) -> float:
    """The weight of a new shard: 0 means 1.0; otherwise finite and positive."""
    if weight == 0:
        return 1.0
    if not math.isfinite(weight) or weight < 0:
        raise InvalidArgument(f"weight {weight} must be a finite number > 0 (0 means 1.0)")
    return weight


def add_shard_from_proto(request: admin_pb.AddShardRequest) -> tuple[str, str, float, bool]:
    """(shard_id, address, weight, start) of an AddShard request, all checked."""
    return (
        shard_id_from_proto(request.shard_id),
        shard_address_from_proto(request.address),
        shard_weight_from_proto(request.weight),
        not request.no_rebalance,
    )


def add_shard_response_to_proto(status: RebalanceStatus | None) -> admin_pb.AddShardResponse:
    return _with_rebalance(admin_pb.AddShardResponse(), status)


def drain_shard_response_to_proto(status: RebalanceStatus) -> admin_pb.DrainShardResponse:
    return _with_rebalance(admin_pb.DrainShardResponse(), status)


def rebalance_response_to_proto(plan: Sequence[MovePlan], status: RebalanceStatus | None) -> admin_pb.RebalanceResponse:
    reply = admin_pb.RebalanceResponse(moves=[move_plan_to_proto(m) for m in plan])
    return _with_rebalance(reply, status)


def rebalance_status_response_to_proto(status: RebalanceStatus | None) -> admin_pb.GetRebalanceStatusResponse:
    return _with_rebalance(admin_pb.GetRebalanceStatusResponse(), status)


def abort_rebalance_response_to_proto(status: RebalanceStatus) -> admin_pb.AbortRebalanceResponse:
    return _with_rebalance(admin_pb.AbortRebalanceResponse(), status)
