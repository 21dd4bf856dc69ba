"""Alembic environment of the metadata database (``core/migrations``); run by ``core.migrations``.

Online only, on the connection ``core.migrations`` passes in ``config.attributes["connection"]``
(already in its transaction and holding the migration lock). SQLite gets batch mode, which
alters a table by copying it, as SQLite's ALTER TABLE cannot change most things.
"""

from __future__ import annotations

from alembic import context

from core.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("core/migrations runs only on a connection: use python -m core.migrate")
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
