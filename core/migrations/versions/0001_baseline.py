"""Baseline: the schema as it was when migrations began (topology version 2, metadata version 4).

Creates every table of ``core/schema.py`` at that time. The definitions are a frozen copy: later
changes of ``core/schema.py`` go into new revisions, never here. ``core.migrations`` also creates
the missing ones of these tables (``BASELINE.create_all``) in a database made before migrations,
then stamps it at this revision.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

BASELINE = sa.MetaData()

# ------------------------------------------------------------------------ versioning
schema_version = sa.Table(
    "vs_schema_version",
    BASELINE,
    sa.Column("component", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

# ------------------------------------------------------------------------ topology
shards = sa.Table(
    "vs_shards",
    BASELINE,
    sa.Column("shard_id", sa.String(128), primary_key=True),
    sa.Column("address", sa.String(512), nullable=False),
    sa.Column("weight", sa.Float, nullable=False, default=1.0),
)
cluster = sa.Table(
    "vs_cluster",
    BASELINE,
    sa.Column("singleton", sa.Integer, primary_key=True),  # always 1
    sa.Column("ring_version", sa.BigInteger, nullable=False),
)
# A shard's place in the ring: no row = "active" (on the ring); "joining" (a rebalance is moving
# its share to it, not on the ring yet), "draining" (on the ring, everything moving off it),
# "drained" (off the ring; only the cleanup of its moved items may still touch it).
shard_states = sa.Table(
    "vs_shard_states",
    BASELINE,
    sa.Column("shard_id", sa.String(128), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
)
# One row per rebalance (router/moves.py); every change checks the expected state (and lease).
rebalances = sa.Table(
    "vs_rebalances",
    BASELINE,
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
    BASELINE,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),  # CollectionSpec.to_json()
)
# The embedding model a collection's vectors come from ("<architecture>@sha256:<weights>"): set
# once, by CreateCollection or the first ingestion of images or texts; searches and ingestion by
# text or image with another model are refused.
collection_models = sa.Table(
    "vs_collection_models",
    BASELINE,
    sa.Column("collection", sa.String(128), primary_key=True),
    sa.Column("model", sa.String(512), nullable=False),
)
# A collection created since item metadata travels in shard payloads: its shards filter its items
# and serve their metadata, so no SQL item index (vs_items, vs_item_tags, vs_item_attrs,
# vs_pending_writes) is kept for it. Collections created before keep theirs (docs/filtered-search.md
# §9); their shards may hold items without payloads, whose metadata only SQL has.
payload_only = sa.Table(
    "vs_payload_only",
    BASELINE,
    sa.Column("collection", sa.String(128), primary_key=True),
)
items = sa.Table(
    "vs_items",
    BASELINE,
    sa.Column("collection", sa.String(128), primary_key=True),
    sa.Column("item_id", sa.String(256), primary_key=True),
    sa.Column("uri", sa.Text, nullable=False, default=""),
)
item_tags = sa.Table(
    "vs_item_tags",
    BASELINE,
    sa.Column("collection", sa.String(128), primary_key=True),
    sa.Column("item_id", sa.String(256), primary_key=True),
    sa.Column("tag", sa.String(256), primary_key=True),
    sa.Index("vs_item_tags_by_tag", "collection", "tag"),
)
# One row per attribute of an item: ``vtype`` is the one-letter type ("s", "i", "d", "b"), which
# is also the name of the one value column that is set.
item_attrs = sa.Table(
    "vs_item_attrs",
    BASELINE,
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
    BASELINE,
    sa.Column("collection", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("vtype", sa.String(1), nullable=False),
)

# A write whose SQL index rows are not committed yet: inserted before the shard write, deleted in
# the transaction that commits the rows. One left behind (a crash or failure in between) tells a
# server which items to re-read from their shards to repair the index (server/engine.py).
pending_writes = sa.Table(
    "vs_pending_writes",
    BASELINE,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("collection", sa.String(128), nullable=False),
    sa.Column("ids", sa.Text, nullable=False),  # JSON list of item ids
    sa.Column("created_at", sa.Float, nullable=False),  # unix time
    sa.Index("vs_pending_writes_by_age", "created_at"),
)


def upgrade() -> None:
    BASELINE.create_all(op.get_bind(), checkfirst=False)


def downgrade() -> None:
    BASELINE.drop_all(op.get_bind(), checkfirst=False)
