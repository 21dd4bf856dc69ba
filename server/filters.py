"""Compiles a protobuf ``Filter`` into a SQL condition over ``vs_items``, validating it.

Fields: "tags" (eq / in: has that tag / any of them), "uri" (eq / in), "attributes.<name>"
(eq / in / range). Values must have the attribute's stored type (fixed per collection, see
metadata.py); an unknown attribute, an unknown field form, a wrong value type or an empty
condition is ``InvalidArgument``. Conditions on attributes are correlated EXISTS subqueries,
so an item without the attribute never matches them (and matches their negation).
"""

from __future__ import annotations

import sqlalchemy as sa

from core.errors import InvalidArgument
from server import metadata as md
from vsproto.v1 import search_service_pb2 as pb

MAX_DEPTH = 32
MAX_IN_VALUES = 10_000


def _value(value: pb.AttributeValue, where: str) -> tuple[str, md.AttrValue]:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return md.STRING, value.string_value
    if kind == "int_value":
        return md.INT, value.int_value
    if kind == "double_value":
        if value.double_value != value.double_value:
            raise InvalidArgument(f"{where}: NaN is not a filter value")
        return md.DOUBLE, value.double_value
    if kind == "bool_value":
        return md.BOOL, value.bool_value
    raise InvalidArgument(f"{where}: a value has no type set")


def compile_filter(message: pb.Filter, collection: str, types: dict[str, str]) -> sa.ColumnElement[bool]:
    return _compile(message, collection, types, 0)


def _compile(message: pb.Filter, collection: str, types: dict[str, str], depth: int) -> sa.ColumnElement[bool]:
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"filter nested deeper than {MAX_DEPTH}")
    kind = message.WhichOneof("kind")
    if kind == "condition":
        return _condition(message.condition, collection, types)
    if kind == "all_of":
        return sa.and_(sa.true(), *[_compile(f, collection, types, depth + 1) for f in message.all_of.filters])
    if kind == "any_of":
        return sa.or_(sa.false(), *[_compile(f, collection, types, depth + 1) for f in message.any_of.filters])
    if kind == "not":
        return sa.not_(_compile(getattr(message, "not"), collection, types, depth + 1))
    raise InvalidArgument("filter: empty filter (set condition, all_of, any_of or not)")


def _condition(cond: pb.Condition, collection: str, types: dict[str, str]) -> sa.ColumnElement[bool]:
    field = cond.field
    op = cond.WhichOneof("op")
    where = f"filter on {field!r}"
    if op is None:
        raise InvalidArgument(f"{where}: set one of eq, in, range")
    if op == "in" and len(getattr(cond, "in").values) > MAX_IN_VALUES:
        raise InvalidArgument(f"{where}: more than {MAX_IN_VALUES} values in 'in'")
    if field in ("tags", "uri"):
        if op == "range":
            raise InvalidArgument(f"{where}: range applies to int and double attributes only")
        values = [cond.eq] if op == "eq" else list(getattr(cond, "in").values)
        strings = []
        for value in values:
            vtype, plain = _value(value, where)
            if vtype != md.STRING:
                raise InvalidArgument(f"{where}: values must be strings, got {md.type_name(vtype)}")
            strings.append(plain)
        if field == "uri":
            return md.items.c.uri.in_(strings)
        return sa.exists().where(
            md.tags.c.collection == collection,
            md.tags.c.item_id == md.items.c.item_id,
            md.tags.c.tag.in_(strings),
        )
    if not field.startswith("attributes."):
        raise InvalidArgument(f"{where}: unknown field (use 'tags', 'uri' or 'attributes.<name>')")
    name = field[len("attributes.") :]
    stored = types.get(name)
    if stored is None:
        raise InvalidArgument(f"{where}: no item of this collection has attribute {name!r}")
    column = md.attrs.c[stored]
    base = [md.attrs.c.collection == collection, md.attrs.c.item_id == md.items.c.item_id, md.attrs.c.name == name]
    if op == "range":
        if stored not in (md.INT, md.DOUBLE):
            raise InvalidArgument(
                f"{where}: range needs an int or double attribute, {name!r} is {md.type_name(stored)}"
            )
        bounds = []
        rng = cond.range
        for bound, compare in (
            ("gte", column.__ge__),
            ("gt", column.__gt__),
            ("lte", column.__le__),
            ("lt", column.__lt__),
        ):
            if rng.HasField(bound):
                vtype, plain = _value(getattr(rng, bound), where)
                if vtype != stored:
                    raise InvalidArgument(
                        f"{where}: bound {bound} is {md.type_name(vtype)}, the attribute is {md.type_name(stored)}"
                    )
                bounds.append(compare(plain))
        if not bounds:
            raise InvalidArgument(f"{where}: range has no bound")
        return sa.exists().where(*base, *bounds)
    values = [cond.eq] if op == "eq" else list(getattr(cond, "in").values)
    plain_values = []
    for value in values:
        vtype, plain = _value(value, where)
        if vtype != stored:
            raise InvalidArgument(f"{where}: value is {md.type_name(vtype)}, the attribute is {md.type_name(stored)}")
        plain_values.append(plain)
    return sa.exists().where(*base, column.in_(plain_values))
