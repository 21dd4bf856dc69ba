"""Cluster topology (shards, addresses, weights, ring version) in the metadata database.

Routers are stateless: every router reads the topology from here, so any number can run
behind a load balancer. The tables (``vs_cluster``, ``vs_shards``), their versioning and
``make_engine`` live in ``core/schema.py`` (re-exported here); ``TopologyStore.migrate``
creates them and refuses a database whose topology schema is newer than the code.

Contract: every change to the shard set bumps ``ring_version`` in the same transaction, so a
reader that sees a version sees exactly the shard set it names.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core import schema
from core.schema import cluster as cluster
from core.schema import make_engine as make_engine
from core.schema import metadata as metadata
from core.schema import migrate_component as migrate_component
from core.schema import schema_version as schema_version
from core.schema import shards as shards
from router.ring import HashRing, ShardNode

COMPONENT = schema.TOPOLOGY
SCHEMA_VERSION = schema.TOPOLOGY_VERSION


@dataclass(frozen=True)
class ShardInfo:
    shard_id: str
    address: str
    weight: float


@dataclass(frozen=True)
class Topology:
    ring_version: int
    shards: tuple[ShardInfo, ...]

    def ring(self, vnodes_per_weight: int | None = None) -> HashRing:
        nodes = [ShardNode(s.shard_id, s.weight) for s in self.shards]
        if vnodes_per_weight is None:
            return HashRing(nodes, version=self.ring_version)
        return HashRing(nodes, vnodes_per_weight=vnodes_per_weight, version=self.ring_version)

    def address_of(self, shard_id: str) -> str:
        for shard in self.shards:
            if shard.shard_id == shard_id:
                return shard.address
        raise KeyError(shard_id)


class TopologyStore:
    """Reads and changes the topology. Thread-safe (each call uses its own transaction)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def migrate(self) -> None:
        """Creates the tables (idempotent) and records the schema version."""
        with self.engine.begin() as conn:
            migrate_component(conn, COMPONENT, SCHEMA_VERSION)
            if conn.execute(sa.select(cluster.c.ring_version)).scalar() is None:
                conn.execute(cluster.insert().values(singleton=1, ring_version=0))

    def load(self) -> Topology:
        with self.engine.connect() as conn:
            version = conn.execute(sa.select(cluster.c.ring_version)).scalar() or 0
            rows = conn.execute(sa.select(shards).order_by(shards.c.shard_id)).all()
        return Topology(int(version), tuple(ShardInfo(r.shard_id, r.address, float(r.weight)) for r in rows))

    def put_shard(self, shard_id: str, address: str, weight: float = 1.0) -> Topology:
        """Adds a shard, or updates its address/weight; bumps the ring version if anything changed."""
        if not shard_id or weight <= 0:
            raise ValueError("a shard needs a non-empty id and a positive weight")
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(shards).where(shards.c.shard_id == shard_id)).first()
            if row is not None and row.address == address and float(row.weight) == weight:
                pass
            else:
                if row is None:
                    conn.execute(shards.insert().values(shard_id=shard_id, address=address, weight=weight))
                else:
                    conn.execute(
                        shards.update().where(shards.c.shard_id == shard_id).values(address=address, weight=weight)
                    )
                conn.execute(cluster.update().values(ring_version=cluster.c.ring_version + 1))
        return self.load()

    def remove_shard(self, shard_id: str) -> Topology:
        with self.engine.begin() as conn:
            deleted = conn.execute(shards.delete().where(shards.c.shard_id == shard_id)).rowcount
            if deleted:
                conn.execute(cluster.update().values(ring_version=cluster.c.ring_version + 1))
        return self.load()
