"""Compiles a domain filter tree (``core/filters.py``) into a SQL condition over ``vs_items``.

The tree is well formed by construction; what is checked here needs the collection's stored
attribute types (fixed per collection, see metadata.py): an unknown attribute, a value of
another type than the attribute's, or a range on an attribute that is not int or double is
``InvalidArgument``. Conditions on tags and attributes are correlated EXISTS subqueries, so an
item without the attribute never matches them (and matches their negation), as the tree's
semantics require.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa

from core import filters
from core import schema as sc
from core.errors import InvalidArgument
from server import metadata as md


def compile_filter(node: filters.Filter, collection: str, types: Mapping[str, str]) -> sa.ColumnElement[bool]:
    """The condition on a row of ``vs_items`` of ``collection`` that is true iff the item matches
    ``node``. ``types`` maps each attribute name of the collection to its one-letter stored type
    (``MetadataStore.attribute_types``). Raises InvalidArgument for a condition on an attribute
    not in ``types``, a value whose type is not the attribute's, or a range on an attribute that
    is not int or double."""
    if isinstance(node, filters.Condition):
        return _condition(node, collection, types)
    if isinstance(node, filters.AllOf):
        return sa.and_(sa.true(), *[compile_filter(child, collection, types) for child in node.filters])
    if isinstance(node, filters.AnyOf):
        return sa.or_(sa.false(), *[compile_filter(child, collection, types) for child in node.filters])
    return sa.not_(compile_filter(node.filter, collection, types))


def _condition(cond: filters.Condition, collection: str, types: Mapping[str, str]) -> sa.ColumnElement[bool]:
    where = f"filter on {cond.field!r}"
    op = cond.op
    name = cond.attribute
    if name is None:  # tags or uri: the tree guarantees Eq / In of strings
        assert not isinstance(op, filters.Range)
        strings = _values(op)
        if cond.field == filters.URI:
            return sc.items.c.uri.in_(strings)
        return sa.exists().where(
            sc.item_tags.c.collection == collection,
            sc.item_tags.c.item_id == sc.items.c.item_id,
            sc.item_tags.c.tag.in_(strings),
        )
    stored = types.get(name)
    if stored is None:
        raise InvalidArgument(f"{where}: no item of this collection has attribute {name!r}")
    attrs = sc.item_attrs
    column = attrs.c[stored]
    base = [attrs.c.collection == collection, attrs.c.item_id == sc.items.c.item_id, attrs.c.name == name]
    if isinstance(op, filters.Range):
        if stored not in (md.INT, md.DOUBLE):
            raise InvalidArgument(
                f"{where}: range needs an int or double attribute, {name!r} is {md.type_name(stored)}"
            )
        compare = {"gte": column.__ge__, "gt": column.__gt__, "lte": column.__le__, "lt": column.__lt__}
        bounds = []
        for bound, value in op.items():
            if md.value_type(value) != stored:
                raise InvalidArgument(
                    f"{where}: bound {bound} is {filters.value_type_name(value)}, "
                    f"the attribute is {md.type_name(stored)}"
                )
            bounds.append(compare[bound](value))
        return sa.exists().where(*base, *bounds)
    values = _values(op)
    for value in values:
        if md.value_type(value) != stored:
            raise InvalidArgument(
                f"{where}: value is {filters.value_type_name(value)}, the attribute is {md.type_name(stored)}"
            )
    return sa.exists().where(*base, column.in_(values))


def _values(op: filters.Eq | filters.In) -> list[filters.Value]:
    return [op.value] if isinstance(op, filters.Eq) else list(op.values)


def matches(node: filters.Filter, meta: md.ItemMeta) -> bool:
    """Whether an item with metadata ``meta`` matches ``node``, by the tree's semantics
    (``core/filters.py``): values equal only values of the same type, an item without the
    attribute never matches a condition on it, empty all_of matches and empty any_of does not.
    The in-memory twin of :func:`compile_filter`, used to check shard-read metadata."""
    if isinstance(node, filters.Condition):
        return _condition_matches(node, meta)
    if isinstance(node, filters.AllOf):
        return all(matches(child, meta) for child in node.filters)
    if isinstance(node, filters.AnyOf):
        return any(matches(child, meta) for child in node.filters)
    return not matches(node.filter, meta)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {  # int with int, float with float
    "gte": lambda a, b: a >= b,
    "gt": lambda a, b: a > b,
    "lte": lambda a, b: a <= b,
    "lt": lambda a, b: a < b,
}


def _condition_matches(cond: filters.Condition, meta: md.ItemMeta) -> bool:
    op = cond.op
    if cond.field == filters.TAGS:
        wanted = set(_values(op))  # type: ignore[arg-type]
        return any(tag in wanted for tag in meta.tags)
    if cond.field == filters.URI:
        return meta.uri in _values(op)  # type: ignore[arg-type]
    name = cond.attribute
    assert name is not None
    if name not in meta.attributes:
        return False
    value = meta.attributes[name]
    if isinstance(op, filters.Range):
        kind = md.value_type(value)
        if kind not in (md.INT, md.DOUBLE) or isinstance(value, str):
            return False
        for bound_name, bound in op.items():
            if md.value_type(bound) != kind or isinstance(bound, str):
                return False
            if not _COMPARE[bound_name](value, bound):
                return False
        return True
    key = (md.value_type(value), value)
    return any((md.value_type(v), v) == key for v in _values(op))
