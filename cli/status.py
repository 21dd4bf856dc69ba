"""``vsearch status``: the collections (count, dimension, metric, embedding model) and the
shards (health, items) of the server, from ListCollections, DescribeCollection and
AdminService.ClusterStatus."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from vectorsearch_client import UnreadableReply, VectorSearchError

from cli import table
from cli.common import CliError, Connection, call_error

METRICS = {"inner_product": "ip"}  # the SDK's metric names as the table shows them


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
    client = conn.client
    try:
        collections = []
        for listed in client.list_collections(timeout=30):
            d = client.describe_collection(listed.name, timeout=30)
            metric = METRICS.get(d.metric, d.metric)
            collections.append(CollectionRow(listed.name, d.count or 0, d.dimension, metric, d.embedding_model))
        cluster = client.cluster_status(timeout=30)
    except VectorSearchError as exc:
        raise call_error(exc, "status") from None
    except UnreadableReply as exc:
        raise CliError(f"status: cannot read the reply: {exc}") from None
    shards = [ShardRow(s.shard_id, s.address, s.healthy, s.items, s.error, s.state) for s in cluster.shards]
    running = ""
    if cluster.rebalance is not None:
        r = cluster.rebalance
        copied = sum(m.items_copied for m in r.moves)
        running = f"rebalance {r.rebalance_id} ({r.kind} {r.shard_id or '-'}): {r.state}, {copied} items copied"
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
