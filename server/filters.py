"""Compiles a domain filter tree (``core/filters.py``) into a SQL condition over ``vs_items``.

The tree is well formed by construction; what is checked here needs the collection's stored
attribute types (fixed per collection, see metadata.py): an unknown attribute, a value of
another type than the attribute's, or a range on an attribute that is not int or double is
``InvalidArgument``. Conditions on tags and attributes are correlated EXISTS subqueries, so an
item without the attribute never matches them (and matches their negation), as the tree's
semantics require.
"""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa

from core import filters, items
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


def check_types(node: filters.Filter, types: Mapping[str, str]) -> None:
    """InvalidArgument for a condition of ``node`` on an attribute not in ``types`` (the
    collection's one-letter stored types, ``MetadataStore.attribute_types``), a value whose type
    is not the attribute's, or a range on an attribute that is not int or double."""
    if isinstance(node, filters.Condition):
        _check_condition(node, types)
    elif isinstance(node, filters.AllOf | filters.AnyOf):
        for child in node.filters:
            check_types(child, types)
    else:
        check_types(node.filter, types)


def _check_condition(cond: filters.Condition, types: Mapping[str, str]) -> str | None:
    """The stored type of the condition's attribute (None for tags and uri), once its values
    are checked against it."""
    name = cond.attribute
    if name is None:  # tags or uri: the tree guarantees Eq / In of strings
        return None
    where = f"filter on {cond.field!r}"
    op = cond.op
    stored = types.get(name)
    if stored is None:
        raise InvalidArgument(f"{where}: no item of this collection has attribute {name!r}")
    if isinstance(op, filters.Range):
        if stored not in (items.INT, items.DOUBLE):
            raise InvalidArgument(
                f"{where}: range needs an int or double attribute, {name!r} is {md.type_name(stored)}"
            )
        for bound, value in op.items():
            if items.value_type(value) != stored:
                raise InvalidArgument(
                    f"{where}: bound {bound} is {filters.value_type_name(value)}, "
                    f"the attribute is {md.type_name(stored)}"
                )
        return stored
    for value in filters.values_of(op):
        if items.value_type(value) != stored:
            raise InvalidArgument(
                f"{where}: value is {filters.value_type_name(value)}, the attribute is {md.type_name(stored)}"
            )
    return stored


def _condition(cond: filters.Condition, collection: str, types: Mapping[str, str]) -> sa.ColumnElement[bool]:
    stored = _check_condition(cond, types)
    op = cond.op
    if stored is None:
        assert not isinstance(op, filters.Range)
        strings = filters.values_of(op)
        if cond.field == filters.URI:
            return sc.items.c.uri.in_(strings)
        return sa.exists().where(
            sc.item_tags.c.collection == collection,
            sc.item_tags.c.item_id == sc.items.c.item_id,
            sc.item_tags.c.tag.in_(strings),
        )
    name = cond.attribute
    attrs = sc.item_attrs
    column = attrs.c[stored]
    base = [attrs.c.collection == collection, attrs.c.item_id == sc.items.c.item_id, attrs.c.name == name]
    if isinstance(op, filters.Range):
        compare = {"gte": column.__ge__, "gt": column.__gt__, "lte": column.__le__, "lt": column.__lt__}
        bounds = [compare[bound](value) for bound, value in op.items()]
        return sa.exists().where(*base, *bounds)
    return sa.exists().where(*base, column.in_(filters.values_of(op)))
