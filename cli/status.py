"""``vsearch status``: the collections (count, dimension, metric, embedding model) and the
shards (health, items) of the server, from ListCollections, DescribeCollection and
AdminService.ClusterStatus."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import grpc

from cli import table
from cli.common import Connection, rpc_error
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import types_pb2

METRICS = {types_pb2.METRIC_COSINE: "cosine", types_pb2.METRIC_INNER_PRODUCT: "ip", types_pb2.METRIC_L2: "l2"}


@dataclass(frozen=True)
class CollectionRow:
    name: str
    count: int
    dimension: int
    metric: str
    embedding_model: str


@dataclass(frozen=True)
class ShardRow:
    shard_id: str
    address: str
    healthy: bool
    items: int
    error: str
    state: str = "active"  # active, joining, draining, drained


@dataclass(frozen=True)
class Status:
    address: str
    ring_version: int
    collections: list[CollectionRow]
    shards: list[ShardRow]
    # the running rebalance, one line ("" when none)
    rebalance: str = ""


def status(conn: Connection) -> Status:
    try:
        listed = conn.search.ListCollections(pb.ListCollectionsRequest(), timeout=30)
        collections = []
        for spec in listed.collections:
            d = conn.search.DescribeCollection(pb.DescribeCollectionRequest(collection=spec.name), timeout=30)
            metric = METRICS.get(d.spec.metric, str(d.spec.metric))
            collections.append(CollectionRow(spec.name, d.count, d.spec.dimension, metric, d.embedding_model))
        cluster = conn.admin.ClusterStatus(admin_pb.ClusterStatusRequest(), timeout=30)
    except grpc.RpcError as exc:
        raise rpc_error(exc, "status") from None
    shards = [
        ShardRow(s.shard_id, s.address, s.healthy, sum(s.collection_counts.values()), s.error, s.state or "active")
        for s in cluster.shards
    ]
    running = ""
    if cluster.HasField("rebalance"):
        r = cluster.rebalance
        state = admin_pb.RebalanceState.Name(r.state).removeprefix("REBALANCE_STATE_").lower()
        kind = admin_pb.RebalanceKind.Name(r.kind).removeprefix("REBALANCE_KIND_").lower()
        copied = sum(m.items_copied for m in r.moves)
        running = f"rebalance {r.rebalance_id} ({kind} {r.shard_id or '-'}): {state}, {copied} items copied"
    return Status(conn.address, cluster.ring_version, collections, shards, running)


def format_text(s: Status) -> str:
    healthy = sum(r.healthy for r in s.shards)
    lines = [f"server {s.address}: {len(s.collections)} collections, {healthy}/{len(s.shards)} shards healthy", ""]
    if s.collections:
        lines.append(
            table.render(
                ["collection", "items", "dim", "metric", "embedding model"],
                [[c.name, c.count, c.dimension, c.metric, c.embedding_model or "-"] for c in s.collections],
            )
        )
        lines.append("")
    lines.append(
        table.render(
            ["shard", "address", "state", "health", "items", "error"],
            [[r.shard_id, r.address, r.state, "ok" if r.healthy else "DOWN", r.items, r.error] for r in s.shards],
        )
    )
    if s.rebalance:
        lines += ["", s.rebalance + " (vsearch admin rebalance-status)"]
    return "\n".join(lines)


def format_json(s: Status) -> str:
    return json.dumps(asdict(s), indent=2)
