"""Schema migrations of the metadata database (Alembic; ``env.py`` and ``versions/`` here).

``migrate(engine)`` brings a database to the schema this code writes; servers call it on start
(``TopologyStore.migrate``, ``MetadataStore.migrate``) and ``python -m core.migrate`` by hand.
Under one lock (Postgres: a transaction-scoped advisory lock per schema; SQLite: the write lock
of ``BEGIN IMMEDIATE``), in one transaction:

1. a database newer than the code is refused (``SchemaTooNew``): a ``vs_schema_version`` row above
   the version this code knows, or an ``alembic_version`` revision this code does not have;
2. a database without ``alembic_version`` but with ``vs_schema_version`` was made before
   migrations: its missing baseline tables are created (as the old ``create_all`` did) and it is
   stamped at the baseline revision; a database with neither starts empty;
3. ``alembic upgrade head``;
4. ``vs_schema_version`` records every component at the version this code writes, and
   ``vs_cluster`` gets its one row (ring version 0) if it has none.

The revisions live inside the package, so an installed package migrates without the source tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Engine

from core import schema
from core.errors import SchemaTooNew

BASELINE_REVISION = "0001"
"""The revision of the schema as it was before migrations (topology 2, metadata 4)."""
ALEMBIC_VERSION_TABLE = "alembic_version"


def config(connection: sa.Connection | None = None) -> Config:
    """The Alembic configuration of ``core/migrations``, on ``connection`` when given."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    result = script().get_current_head()
    assert result is not None
    return result


locked = schema.migration_lock
"""A connection in a transaction that holds the migration lock; commits on success."""


def current_revisions(conn: sa.Connection) -> tuple[str, ...]:
    """The database's Alembic revisions; () when it has none (before migrations, or empty)."""
    return tuple(MigrationContext.configure(conn).get_current_heads())


def check_not_newer(conn: sa.Connection) -> None:
    """Raises SchemaTooNew if the database holds a component version or a revision this code does
    not know."""
    inspector = sa.inspect(conn)
    if inspector.has_table(schema.schema_version.name):
        for component, version in conn.execute(sa.select(schema.schema_version)).all():
            known = schema.COMPONENTS.get(component)
            if known is not None and version > known:
                raise SchemaTooNew(f"the {component} schema is at version {version}, this code knows {known}; upgrade")
    if inspector.has_table(ALEMBIC_VERSION_TABLE):
        scripts = script()
        for revision in current_revisions(conn):
            try:
                found = scripts.get_revision(revision)
            except CommandError:
                found = None
            if found is None:
                raise SchemaTooNew(f"the database is at schema revision {revision}, unknown to this code; upgrade")


def _baseline_metadata() -> sa.MetaData:
    module: Any = script().get_revision(BASELINE_REVISION).module
    result: sa.MetaData = module.BASELINE
    return result


def migrate_connection(conn: sa.Connection) -> None:
    """Steps 1-4 above on ``conn`` (in its transaction, holding the lock)."""
    check_not_newer(conn)
    inspector = sa.inspect(conn)
    cfg = config(conn)
    if not inspector.has_table(ALEMBIC_VERSION_TABLE) and inspector.has_table(schema.schema_version.name):
        _baseline_metadata().create_all(conn, checkfirst=True)
        command.stamp(cfg, BASELINE_REVISION)
    command.upgrade(cfg, "head")
    schema.record_versions(conn)


def migrate(engine: Engine) -> None:
    """Brings the database of ``engine`` to the schema of this code (see the module doc)."""
    with locked(engine) as conn:
        migrate_connection(conn)


def stamp(engine: Engine, revision: str) -> None:
    """Records ``revision`` without running migrations (a database brought there by hand)."""
    with locked(engine) as conn:
        command.stamp(config(conn), revision)
