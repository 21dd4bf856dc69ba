"""The whole SQL schema of the metadata database: one ``MetaData``, every table, its versioning.

One database holds the cluster topology (``router/topology.py``) and the collections and item
metadata (``server/metadata.py``); both stores query the tables defined here and nothing else
defines a table. Postgres (``postgresql+psycopg://...``) in production and in the tests, SQLite
as the embedded default.

Versioning: ``vs_schema_version`` has one row per component (``COMPONENTS``: name -> the version
this code writes), and Alembic's ``alembic_version`` the revision (``core/migrations``). ``migrate``
runs the migrations and refuses a database that holds a newer version of a component, or a
revision, than the code knows; ``migrate_component`` is the path from before migrations (create
every missing table, record a version), kept for databases it made. The two common cases need no
Alembic (whose import costs a server ~9 MiB and ~0.2 s): a database at ``HEAD_REVISION`` with
every component current is left as it is, and an empty one gets ``create_all`` stamped at
``HEAD_REVISION`` (Alembic's own recipe for new databases; tests/integration/test_migrations.py
checks that the revisions make exactly what ``create_all`` makes).

The table, column and index names below are the on-disk format: existing databases must keep
working, so never rename one; a change of a component's tables bumps its version and adds an
Alembic revision to ``core/migrations/versions`` (tests/integration/test_migrations.py checks that
the revisions create exactly these tables).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core.errors import SchemaTooNew

TOPOLOGY = "topology"
"""Component of the cluster topology tables (``vs_cluster``, ``vs_shards``, ``vs_shard_states``,
``vs_rebalances``)."""
TOPOLOGY_VERSION = 2  # 2: vs_shard_states, vs_rebalances
METADATA = "metadata"
"""Component of the collection and item metadata tables (``vs_collections``, ``vs_item*``,
``vs_attr_types``, ``vs_pending_writes``)."""
METADATA_VERSION = 4  # 2: vs_pending_writes; 3: vs_collection_models; 4: vs_payload_only
AUTH = "auth"
"""Component of the API keys table (``vs_api_keys``; ``server/auth/keys.py``)."""
AUTH_VERSION = 1  # 1: vs_api_keys (revision 0002)
COMPONENTS: dict[str, int] = {TOPOLOGY: TOPOLOGY_VERSION, METADATA: METADATA_VERSION, AUTH: AUTH_VERSION}
"""Every component and the schema version of it this code writes."""

HEAD_REVISION = "0002"
"""The newest revision in ``core/migrations/versions`` (a test checks it is Alembic's head)."""

metadata = sa.MetaData()

alembic_version = sa.Table(
    "alembic_version",
    sa.MetaData(),  # Alembic's table, not ours: never in ``metadata``
    sa.Column("version_num", sa.String(32), nullable=False),
    sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)
"""Alembic's version table, as Alembic creates it."""

# ------------------------------------------------------------------------ versioning
schema_version = sa.Table(
    "vs_schema_version",
    metadata,
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

# ------------------------------------------------------------------------ topology
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
# A shard's place in the ring: no row = "active" (on the ring); "joining" (a rebalance is moving
# its share to it, not on the ring yet), "draining" (on the ring, everything moving off it),
# "drained" (off the ring; only the cleanup of its moved items may still touch it).
shard_states = sa.Table(
    "vs_shard_states",
    metadata,
    sa.Column("shard_id", sa.String(128), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
)
# One row per rebalance (router/moves.py); every change checks the expected state (and lease).
rebalances = sa.Table(
    "vs_rebalances",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("finished", sa.Boolean, nullable=False, default=False),
    sa.Column("shard_id", sa.String(128), nullable=False, default=""),
    sa.Column("from_version", sa.BigInteger, nullable=False),
    sa.Column("to_version", sa.BigInteger, nullable=False, default=0),
    sa.Column("old_ring", sa.Text, nullable=False),  # HashRing.to_dict() as JSON
    sa.Column("new_ring", sa.Text, nullable=False),
    sa.Column("progress", sa.Text, nullable=False),  # JSON: per move and collection (router/rebalance.py)
    sa.Column("error", sa.Text, nullable=False, default=""),
    sa.Column("abort_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("lease_owner", sa.String(128), nullable=False, default=""),
    sa.Column("lease_until", sa.Float, nullable=False, default=0.0),
)

# ------------------------------------------------------------------------ collections and item metadata
collections = sa.Table(
    "vs_collections",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),  # CollectionSpec.to_json()
)
# The embedding model a collection's vectors come from ("<architecture>@sha256:<weights>"): set
# once, by CreateCollection or the first ingestion of images or texts; searches and ingestion by
# text or image with another model are refused.
collection_models = sa.Table(
    "vs_collection_models",
    metadata,
    sa.Column("collection", sa.String(128), primary_key=True),
    sa.Column("model", sa.String(512), nullable=False),
)
# A collection created since item metadata travels in shard payloads: its shards filter its items
# and serve their metadata, so no SQL item index (vs_items, vs_item_tags, vs_item_attrs,
# vs_pending_writes) is kept for it. Collections created before keep theirs (docs/filtered-search.md
# §9); their shards may hold items without payloads, whose metadata only SQL has.
payload_only = sa.Table(
    "vs_payload_only",
    metadata,
    sa.Column("collection", sa.String(128), primary_key=True),
)
items = sa.Table(
    "vs_items",
    metadata,
    sa.Column("collection", sa.String(128), primary_key=True),
    sa.Column("item_id", sa.String(256), primary_key=True),
    sa.Column("uri", sa.Text, nullable=False, default=""),
)
item_tags = sa.Table(
    "vs_item_tags",
    metadata,
    sa.Column("collection", sa.String(128), primary_key=True),
    sa.Column("item_id", sa.String(256), primary_key=True),
    sa.Column("tag", sa.String(256), primary_key=True),
    sa.Index("vs_item_tags_by_tag", "collection", "tag"),
)
# One row per attribute of an item: ``vtype`` is the one-letter type ("s", "i", "d", "b"), which
# is also the name of the one value column that is set.
item_attrs = sa.Table(
    "vs_item_attrs",
    metadata,
    sa.Column("collection", sa.String(128), primary_key=True),
    sa.Column("item_id", sa.String(256), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("vtype", sa.String(1), nullable=False),
    sa.Column("s", sa.Text),
    sa.Column("i", sa.BigInteger),
    sa.Column("d", sa.Float(precision=53)),
    sa.Column("b", sa.Boolean),
    sa.Index("vs_item_attrs_by_int", "collection", "name", "i"),
    sa.Index("vs_item_attrs_by_double", "collection", "name", "d"),
    sa.Index("vs_item_attrs_by_string", "collection", "name", "s"),
)
# The type each attribute name has in a collection, fixed by its first write.
attr_types = sa.Table(
    "vs_attr_types",
    metadata,
    sa.Column("collection", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("vtype", sa.String(1), nullable=False),
)

# A write whose SQL index rows are not committed yet: inserted before the shard write, deleted in
# the transaction that commits the rows. One left behind (a crash or failure in between) tells a
# server which items to re-read from their shards to repair the index (server/engine.py).
pending_writes = sa.Table(
    "vs_pending_writes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("collection", sa.String(128), nullable=False),
    sa.Column("ids", sa.Text, nullable=False),  # JSON list of item ids
    sa.Column("created_at", sa.Float, nullable=False),  # unix time
    sa.Index("vs_pending_writes_by_age", "created_at"),
)

# ------------------------------------------------------------------------ API keys
# One row per API key (``vs_<id>_<secret>``): only the SHA-256 of the whole key is stored. A
# revoked key keeps its row (revoked_at set), so its id is never reused and the audit log's key
# ids stay meaningful.
api_keys = sa.Table(
    "vs_api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),  # hex of sha256(the whole key)
    sa.Column("role", sa.String(16), nullable=False),  # read, write, admin
    sa.Column("collections", sa.Text),  # JSON list of names; NULL: every collection
    sa.Column("requests_per_s", sa.Float),  # NULL: the server's default
    sa.Column("items_per_s", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),  # unix time
    sa.Column("revoked_at", sa.Float),  # NULL while valid
)


def migrate_component(conn: sa.Connection, component: str, version: int) -> None:
    """Creates every missing table of the schema (idempotent) and records ``component`` at
    ``version``; raises SchemaTooNew if the database holds a newer version of it. Every upgrade
    so far only added tables, which ``create_all`` does, so an older version is raised to
    ``version`` after it."""
    metadata.create_all(conn)
    current = conn.execute(sa.select(schema_version.c.version).where(schema_version.c.component == component)).scalar()
    if current is None:
        conn.execute(schema_version.insert().values(component=component, version=version))
    elif current > version:
        raise SchemaTooNew(f"the {component} schema is at version {current}, this code knows {version}; upgrade")
    elif current < version:
        conn.execute(schema_version.update().where(schema_version.c.component == component).values(version=version))


@contextlib.contextmanager
def migration_lock(engine: Engine) -> Iterator[sa.Connection]:
    """A connection in a transaction that holds the migration lock (Postgres: an advisory lock
    per schema; SQLite: the write lock of ``BEGIN IMMEDIATE``); commits on success."""
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the database's write lock, until commit
        elif conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('vs_migrate:' || current_schema()))"))
        yield conn
        conn.commit()


def record_versions(conn: sa.Connection) -> None:
    """``vs_schema_version`` at every component's version of this code (rows added or raised),
    and ``vs_cluster``'s one row (ring version 0) if it has none."""
    for component, version in COMPONENTS.items():
        row = schema_version.c.component == component
        current = conn.execute(sa.select(schema_version.c.version).where(row)).scalar()
        if current is None:
            conn.execute(schema_version.insert().values(component=component, version=version))
        elif current < version:
            conn.execute(schema_version.update().where(row).values(version=version))
    if conn.execute(sa.select(cluster.c.ring_version)).scalar() is None:
        conn.execute(cluster.insert().values(singleton=1, ring_version=0))


def _current_without_alembic(engine: Engine) -> bool:
    """Under the migration lock: True when the database is (now) at this code's schema without
    Alembic: it was empty and got ``create_all`` stamped at ``HEAD_REVISION``, or it already is at
    ``HEAD_REVISION`` with every component current and its cluster row. False for anything else
    (older, newer, made before migrations): Alembic's path decides."""
    with migration_lock(engine) as conn:
        tables = set(sa.inspect(conn).get_table_names())
        if not tables:
            metadata.create_all(conn)
            alembic_version.create(conn)
            conn.execute(alembic_version.insert().values(version_num=HEAD_REVISION))
            record_versions(conn)
            return True
        if alembic_version.name not in tables or schema_version.name not in tables:
            return False
        revisions = conn.execute(sa.select(alembic_version.c.version_num)).scalars().all()
        versions = dict(conn.execute(sa.select(schema_version.c.component, schema_version.c.version)).all())
        ring = conn.execute(sa.select(cluster.c.ring_version)).scalar() if cluster.name in tables else None
        return list(revisions) == [HEAD_REVISION] and versions == COMPONENTS and ring is not None


def migrate(engine: Engine) -> None:
    """Brings the database to the schema of this code, under a lock, so servers starting at once
    never both migrate; raises SchemaTooNew for a database newer than the code. Alembic
    (``core/migrations``) runs only when the database is neither empty nor current (module doc)."""
    if _current_without_alembic(engine):
        return
    from core import migrations  # its env.py imports this module

    migrations.migrate(engine)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL journaling and a busy timeout for concurrency,
    other databases a pool that checks connections before use. The directory of a SQLite file
    is created if it is missing (the embedded default, ``./data/meta.db``, in a fresh directory)."""
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
            cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
            # Switching a new file to WAL needs every lock: while another connection holds one
            # (a server migrating it) SQLite answers "locked" at once instead of waiting.
            deadline = time.monotonic() + 30
            while True:
                try:
                    cursor.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as e:
                    if "locked" not in str(e) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)
