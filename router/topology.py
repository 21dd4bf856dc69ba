"""Cluster topology (shards, addresses, weights, ring version) in the metadata database.

Routers are stateless: every router reads the topology from here, so any number can run
behind a load balancer. Postgres (``postgresql+psycopg://...``) in production, SQLite as the
embedded default. The schema is versioned in ``vs_schema_version`` (one row per component);
``TopologyStore.migrate`` creates or upgrades it and refuses a database newer than the code.

Contract: every change to the shard set bumps ``ring_version`` in the same transaction, so a
reader that sees a version sees exactly the shard set it names.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.errors import SchemaTooNew
from router.ring import HashRing, ShardNode

COMPONENT = "topology"
SCHEMA_VERSION = 1

metadata = sa.MetaData()

schema_version = sa.Table(
    "vs_schema_version",
    metadata,
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

shards = sa.Table(
    "vs_shards",
    metadata,
    sa.Column("shard_id", sa.String(128), primary_key=True),
    sa.Column("address", sa.String(512), nullable=False),
    sa.Column("weight", sa.Float, nullable=False, default=1.0),
)

cluster = sa.Table(
    "vs_cluster",
    metadata,
    sa.Column("singleton", sa.Integer, primary_key=True),  # always 1
    sa.Column("ring_version", sa.BigInteger, nullable=False),
)


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


def migrate_component(conn: sa.Connection, component: str, version: int) -> None:
    """Creates every table of the shared SQL schema (idempotent) and records ``component`` at
    ``version``; raises SchemaTooNew if the database holds a newer version of it."""
    metadata.create_all(conn)
    current = conn.execute(sa.select(schema_version.c.version).where(schema_version.c.component == component)).scalar()
    if current is None:
        conn.execute(schema_version.insert().values(component=component, version=version))
    elif current > version:
        raise SchemaTooNew(f"the {component} schema is at version {current}, this code knows {version}; upgrade")


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL journaling and a busy timeout for concurrency."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
            cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


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
