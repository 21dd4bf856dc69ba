"""API keys (issue #18): ``vs_api_keys``, the hashed keys with their role, collections and rate
limits (``server/auth/keys.py``); the ``auth`` component at version 1.

The table definition is a frozen copy of ``core/schema.py``'s at this revision. Created only when
missing: a database made by ``schema.migrate_component`` (the path from before migrations, which
creates every table of the current schema) may have it already.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

REVISION = sa.MetaData()

api_keys = sa.Table(
    "vs_api_keys",
    REVISION,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("collections", sa.Text),
    sa.Column("requests_per_s", sa.Float),
    sa.Column("items_per_s", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)


def upgrade() -> None:
    REVISION.create_all(op.get_bind(), checkfirst=True)


def downgrade() -> None:
    REVISION.drop_all(op.get_bind(), checkfirst=True)
