"""Collection specs and item metadata (uri, tags, typed attributes) in SQL via SQLAlchemy Core.

Postgres (``postgresql+psycopg://...``) in production and in the tests; SQLite is the
embedded default. The tables and their versioning (component "metadata") live in
``core/schema.py``.

Attribute types are fixed per collection on first use (``vs_attr_types``): a later upsert or
filter that uses another type for the same name is INVALID_ARGUMENT, like a typed payload
schema. Reads of metadata for a page of hits are one round trip (a UNION ALL of the three
tables), never one query per hit.

Thread-safety: every method uses its own connection/transaction from the engine's pool.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core import limits, schema
from core.errors import AlreadyExists, InvalidArgument, NotFound
from core.items import BOOL, DOUBLE, INT, STRING, AttrValue, ItemMeta, validate_meta, value_type
from core.schema import attr_types as attr_types
from core.schema import collection_models as collection_models
from core.schema import collections as collections
from core.schema import items as items
from core.schema import payload_only as payload_only
from core.schema import pending_writes as pending_writes
from core.spec import CollectionSpec
from core.text import quote

COMPONENT = schema.METADATA
SCHEMA_VERSION = schema.METADATA_VERSION
SQL_CHUNK = 1_000
"""Ids per SQL statement: an IN list (or a fetch's three) of this many stays far below SQLite's
32,766 and Postgres' 65,535 bound parameters, so a batch of any size the API accepts works."""


# The tables live in core/schema.py; these names are kept for the queries below and for callers.
tags = schema.item_tags
attrs = schema.item_attrs


def _chunks(ids: Sequence[str], size: int = SQL_CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def _insert(engine: Engine, table: sa.Table) -> Any:
    """The engine's dialect's INSERT (with ON CONFLICT). Imported here: the PostgreSQL dialect
    module costs ~2 MiB of RSS in a process on SQLite (bench/results/memory.md)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    from sqlalchemy.dialects import sqlite

    return sqlite.insert(table)


class MetadataStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def migrate(self) -> None:
        """Migrates the database (``core.schema.migrate``; idempotent); raises SchemaTooNew for
        one newer than the code."""
        schema.migrate(self.engine)

    # ------------------------------------------------------------------ collections
    def create_collection(self, spec: CollectionSpec) -> tuple[bool, CollectionSpec]:
        """Creates the collection (idempotent); a new one is payload-only (:meth:`keeps_index`)."""
        with self.engine.begin() as conn:
            inserted = conn.execute(
                _insert(self.engine, collections)
                .values(name=spec.name, spec=spec.to_json())
                .on_conflict_do_nothing()
                .returning(collections.c.name)
            ).first()
            if inserted is not None:
                conn.execute(_insert(self.engine, payload_only).values(collection=spec.name).on_conflict_do_nothing())
            stored = CollectionSpec.from_json(
                conn.execute(sa.select(collections.c.spec).where(collections.c.name == spec.name)).scalar_one()
            )
        if stored != spec:
            raise AlreadyExists(f"collection {spec.name!r} exists with a different spec ({stored.to_json()})")
        return inserted is not None, stored

    def spec(self, name: str) -> CollectionSpec:
        with self.engine.connect() as conn:
            text = conn.execute(sa.select(collections.c.spec).where(collections.c.name == name)).scalar()
        if text is None:
            raise NotFound(f"collection {name!r} does not exist")
        return CollectionSpec.from_json(text)

    def list_collections(self) -> list[CollectionSpec]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(collections.c.spec).order_by(collections.c.name)).scalars().all()
        return [CollectionSpec.from_json(r) for r in rows]

    def drop_collection(self, name: str) -> bool:
        with self.engine.begin() as conn:
            for table in (tags, attrs, items, attr_types, pending_writes, collection_models, payload_only):
                conn.execute(table.delete().where(table.c.collection == name))
            return bool(conn.execute(collections.delete().where(collections.c.name == name)).rowcount)

    # ------------------------------------------------------------------ embedding model
    def embedding_model(self, collection: str) -> str:
        """The embedding model recorded for ``collection`` ("" when none is)."""
        with self.engine.connect() as conn:
            model = conn.execute(
                sa.select(collection_models.c.model).where(collection_models.c.collection == collection)
            ).scalar()
        return str(model or "")

    def record_embedding_model(self, collection: str, model: str) -> str:
        """Records ``model`` for ``collection`` unless one is recorded already; returns the one
        recorded (the first writer wins, atomically: concurrent callers all get the same)."""
        with self.engine.begin() as conn:
            insert = _insert(self.engine, collection_models).values(collection=collection, model=model)
            conn.execute(insert.on_conflict_do_nothing())
            return str(
                conn.execute(
                    sa.select(collection_models.c.model).where(collection_models.c.collection == collection)
                ).scalar_one()
            )

    def count(self, collection: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(items).where(items.c.collection == collection)
                ).scalar_one()
            )

    # ------------------------------------------------------------------ attribute types
    def attribute_types(self, collection: str) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(attr_types.c.name, attr_types.c.vtype).where(attr_types.c.collection == collection)
            ).all()
        return {r.name: r.vtype for r in rows}

    def check_types(self, collection: str, metas: Iterable[tuple[str, ItemMeta]]) -> dict[str, str]:
        """Validates every item's metadata and that attribute types agree with each other and
        with the types already fixed for the collection. Returns the new name -> type pairs."""
        known = self.attribute_types(collection)
        new: dict[str, str] = {}
        limit = limits.MAX_COLLECTION_ATTRIBUTES
        for item_id, meta in metas:
            validate_meta(item_id, meta)
            for name, value in meta.attributes.items():
                vtype = value_type(value)
                fixed = known.get(name) or new.get(name)
                if fixed is None:
                    if len(known) + len(new) >= limit:
                        raise InvalidArgument(
                            f"item {quote(item_id)}: attribute {name!r} would be the collection's "
                            f"{limit + 1}th attribute name (at most {limit})"
                        )
                    new[name] = vtype
                elif fixed != vtype:
                    raise InvalidArgument(
                        f"item {item_id!r}: attribute {name!r} has type {_TYPE_NAMES[vtype]}, "
                        f"but the collection stores it as {_TYPE_NAMES[fixed]}"
                    )
        return new

    # ------------------------------------------------------------------ items
    # ------------------------------------------------------------------ pending writes
    def begin_write(self, collection: str, ids: Sequence[str], new_types: dict[str, str] | None = None) -> int:
        """Records that a write of ``ids`` is going to the shards; returns the marker that the
        commit of its index rows (``upsert`` / ``delete``) removes. A marker left behind is
        repaired by :meth:`repair`. In the same transaction, fixes the types of the write's new
        attributes (``new_types``, from :meth:`check_types`), so that no item reaches a shard
        with an attribute whose type is not recorded: InvalidArgument, and nothing recorded,
        when a concurrent write just gave one of them another type."""
        with self.engine.begin() as conn:
            if new_types:
                self._fix_types(conn, collection, new_types)
            row = conn.execute(
                pending_writes.insert()
                .values(collection=collection, ids=json.dumps(list(ids)), created_at=time.time())
                .returning(pending_writes.c.id)
            ).scalar_one()
        return int(row)

    def pending(self, older_than_s: float, limit: int = 100) -> list[tuple[int, str, list[str]]]:
        """Markers older than ``older_than_s`` seconds, oldest first: (marker, collection, ids)."""
        cutoff = time.time() - older_than_s
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(pending_writes.c.id, pending_writes.c.collection, pending_writes.c.ids)
                .where(pending_writes.c.created_at <= cutoff)
                .order_by(pending_writes.c.created_at)
                .limit(limit)
            ).all()
        return [(int(r.id), r.collection, list(json.loads(r.ids))) for r in rows]

    def forget(self, marker: int) -> None:
        """Removes a marker without repairing (its collection is gone)."""
        with self.engine.begin() as conn:
            conn.execute(pending_writes.delete().where(pending_writes.c.id == marker))

    def repair(self, marker: int, collection: str, read: Callable[[], tuple[dict[str, ItemMeta], list[str]]]) -> None:
        """Rewrites the index rows of a marker's items to what their shards hold and removes the
        marker, in one transaction. ``read`` fetches (metadata of the items present, ids absent)
        from the shards; it runs after the collection's index is locked against concurrent
        commits (Postgres: an exclusive advisory lock that writers take shared; SQLite: the
        database write lock), so a write that commits after the repair also reached its shard
        after ``read`` saw it, and no repair can overwrite newer rows with older ones."""
        with self.engine.begin() as conn:
            self._lock_index(conn, collection, exclusive=True)
            conn.execute(pending_writes.delete().where(pending_writes.c.id == marker))
            present, absent = read()
            # An attribute whose type another write fixed meanwhile is left out of the index (the
            # item's own metadata, on its shard, still has it; filters re-check against that).
            known = self._types_in_all(conn, collection)
            new_types: dict[str, str] = {}
            items_ok = []
            for item_id, meta in present.items():
                kept: dict[str, AttrValue] = {}
                for name, value in meta.attributes.items():
                    vtype = value_type(value)
                    if (known.get(name) or new_types.setdefault(name, vtype)) == vtype:
                        kept[name] = value
                items_ok.append((item_id, ItemMeta(meta.uri, meta.tags, kept)))
            if new_types:
                conn.execute(
                    _insert(self.engine, attr_types).on_conflict_do_nothing(),
                    [{"collection": collection, "name": n, "vtype": t} for n, t in new_types.items()],
                )
            self._delete_rows(conn, collection, absent)
            if items_ok:
                self._write_rows(conn, collection, items_ok)

    def _lock_index(self, conn: sa.Connection, collection: str, exclusive: bool) -> None:
        if self.engine.dialect.name == "postgresql":
            function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
            conn.execute(sa.text(f"SELECT {function}(hashtext(:name))"), {"name": f"vs-index:{collection}"})

    def _types_in_all(self, conn: sa.Connection, collection: str) -> dict[str, str]:
        rows = conn.execute(
            sa.select(attr_types.c.name, attr_types.c.vtype).where(attr_types.c.collection == collection)
        ).all()
        return {r.name: r.vtype for r in rows}

    # ------------------------------------------------------------------ items
    def upsert(
        self,
        collection: str,
        batch: Sequence[tuple[str, ItemMeta]],
        new_types: dict[str, str],
        marker: int | None = None,
    ) -> None:
        """Replaces the metadata of the given items in one transaction, removing ``marker``."""
        with self.engine.begin() as conn:
            self._lock_index(conn, collection, exclusive=False)
            if marker is not None:
                conn.execute(pending_writes.delete().where(pending_writes.c.id == marker))
            if new_types:
                self._fix_types(conn, collection, new_types)
            self._write_rows(conn, collection, batch)

    def keeps_index(self, collection: str) -> bool:
        """Whether the collection keeps the SQL item index: it was created before item metadata
        travelled in shard payloads (``vs_payload_only`` has no row for it), so its shards may
        hold items whose metadata only SQL has."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(payload_only.c.collection).where(payload_only.c.collection == collection))
            return row.first() is None

    def record_types(self, collection: str, new_types: dict[str, str]) -> None:
        """Fixes the types of new attributes (from :meth:`check_types`) of a collection without
        an item index; InvalidArgument, and nothing recorded, when a concurrent write just gave
        one of them another type."""
        with self.engine.begin() as conn:
            self._fix_types(conn, collection, new_types)

    def _fix_types(self, conn: sa.Connection, collection: str, new_types: dict[str, str]) -> None:
        conn.execute(
            _insert(self.engine, attr_types).on_conflict_do_nothing(),
            [{"collection": collection, "name": n, "vtype": t} for n, t in new_types.items()],
        )
        stored = self._types_in(conn, collection, list(new_types))
        clash = {n for n, t in new_types.items() if stored.get(n) != t}
        if clash:
            raise InvalidArgument(f"attributes {sorted(clash)} were just given another type by a concurrent write")

    def _write_rows(self, conn: sa.Connection, collection: str, batch: Sequence[tuple[str, ItemMeta]]) -> None:
        ids = [item_id for item_id, _ in batch]
        # The items upsert comes first: it takes the write lock (SQLite) or the rows' locks
        # (Postgres), so the checks below see every earlier committed write of these items.
        upsert = _insert(self.engine, items)
        upsert = upsert.on_conflict_do_update(
            index_elements=[items.c.collection, items.c.item_id], set_={"uri": upsert.excluded.uri}
        )
        conn.execute(upsert, [{"collection": collection, "item_id": i, "uri": m.uri} for i, m in batch])
        for table in (tags, attrs):
            # A collection that has never had tags (attributes) has none to replace: skip the
            # delete and its thousand-parameter IN list.
            if conn.execute(sa.select(table.c.item_id).where(table.c.collection == collection).limit(1)).first():
                for chunk in _chunks(ids):
                    conn.execute(table.delete().where(table.c.collection == collection, table.c.item_id.in_(chunk)))
        tag_rows = [{"collection": collection, "item_id": i, "tag": t} for i, m in batch for t in dict.fromkeys(m.tags)]
        if tag_rows:
            conn.execute(tags.insert(), tag_rows)
        attr_rows = [_attr_row(collection, i, n, v) for i, m in batch for n, v in m.attributes.items()]
        if attr_rows:
            conn.execute(attrs.insert(), attr_rows)

    @staticmethod
    def _types_in(conn: sa.Connection, collection: str, names: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for chunk in _chunks(names):
            rows = conn.execute(
                sa.select(attr_types.c.name, attr_types.c.vtype).where(
                    attr_types.c.collection == collection, attr_types.c.name.in_(chunk)
                )
            ).all()
            out.update((r.name, r.vtype) for r in rows)
        return out

    def delete(self, collection: str, ids: Sequence[str], marker: int | None = None) -> None:
        """Deletes the metadata of ``ids`` in one transaction (any number of ids), removing ``marker``."""
        with self.engine.begin() as conn:
            self._lock_index(conn, collection, exclusive=False)
            if marker is not None:
                conn.execute(pending_writes.delete().where(pending_writes.c.id == marker))
            self._delete_rows(conn, collection, ids)

    def _delete_rows(self, conn: sa.Connection, collection: str, ids: Sequence[str]) -> None:
        for chunk in _chunks(ids):
            for table in (tags, attrs, items):
                conn.execute(table.delete().where(table.c.collection == collection, table.c.item_id.in_(chunk)))

    def fetch(self, collection: str, ids: Sequence[str]) -> dict[str, ItemMeta]:
        """Metadata of the ids that have any: one round trip per ``SQL_CHUNK`` ids (a UNION ALL of
        the three tables), all in one read transaction."""
        out: dict[str, ItemMeta] = {}
        with self.engine.connect() as conn:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                for row in conn.execute(_fetch_query(collection, chunk)):
                    meta = out.setdefault(row.item_id, ItemMeta())
                    if row.kind == "u":
                        meta.uri = row.k
                    elif row.kind == "t":
                        meta.tags.append(row.k)
                    else:
                        meta.attributes[row.k] = _attr_value(row.vtype, row.s, row.i, row.d, row.b)
        for meta in out.values():
            meta.tags.sort()
        return out

    # ------------------------------------------------------------------ filtering
    def count_matching(self, collection: str, clause: sa.ColumnElement[bool]) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(items).where(items.c.collection == collection, clause)
                ).scalar_one()
            )

    def ids_matching(self, collection: str, clause: sa.ColumnElement[bool]) -> list[str]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(sa.select(items.c.item_id).where(items.c.collection == collection, clause)).scalars()
            )

    def which_match(self, collection: str, ids: Sequence[str], clause: sa.ColumnElement[bool]) -> set[str]:
        """The subset of ``ids`` whose metadata matches (one query)."""
        out: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                out.update(
                    conn.execute(
                        sa.select(items.c.item_id).where(
                            items.c.collection == collection, items.c.item_id.in_(chunk), clause
                        )
                    ).scalars()
                )
        return out


def _fetch_query(collection: str, ids: list[str]) -> sa.CompoundSelect[Any]:
    """The uri, tags and attributes of ``ids`` as one UNION ALL (kind u / t / a per row)."""
    null_text = sa.cast(sa.null(), sa.Text)
    null_int = sa.cast(sa.null(), sa.BigInteger)
    null_double = sa.cast(sa.null(), sa.Float(precision=53))
    null_bool = sa.cast(sa.null(), sa.Boolean)
    q_items = sa.select(
        sa.literal("u").label("kind"),
        items.c.item_id,
        items.c.uri.label("k"),
        null_text.label("vtype"),
        null_text.label("s"),
        null_int.label("i"),
        null_double.label("d"),
        null_bool.label("b"),
    ).where(items.c.collection == collection, items.c.item_id.in_(ids))
    q_tags = sa.select(
        sa.literal("t"), tags.c.item_id, tags.c.tag, null_text, null_text, null_int, null_double, null_bool
    ).where(tags.c.collection == collection, tags.c.item_id.in_(ids))
    q_attrs = sa.select(
        sa.literal("a"), attrs.c.item_id, attrs.c.name, attrs.c.vtype, attrs.c.s, attrs.c.i, attrs.c.d, attrs.c.b
    ).where(attrs.c.collection == collection, attrs.c.item_id.in_(ids))
    return sa.union_all(q_items, q_tags, q_attrs)


_TYPE_NAMES = {STRING: "string", INT: "int", DOUBLE: "double", BOOL: "bool"}


def type_name(vtype: str) -> str:
    return _TYPE_NAMES[vtype]


def _attr_row(collection: str, item_id: str, name: str, value: AttrValue) -> dict[str, object]:
    vtype = value_type(value)
    row: dict[str, object] = {
        "collection": collection,
        "item_id": item_id,
        "name": name,
        "vtype": vtype,
        "s": None,
        "i": None,
        "d": None,
        "b": None,
    }
    row[vtype] = value
    return row


def _attr_value(vtype: str, s: str | None, i: int | None, d: float | None, b: bool | None) -> AttrValue:
    value = {STRING: s, INT: i, DOUBLE: d, BOOL: b}[vtype]
    assert value is not None
    return value
