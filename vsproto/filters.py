"""The ``vectorsearch.v1.Filter`` message <-> the domain filter tree of ``core/filters.py``, for
the public API (server) and the shard's internal API alike."""

from __future__ import annotations

from core import filters
from core.errors import InvalidArgument
from core.text import quote
from vsproto.v1 import search_service_pb2 as pb


def filter_from_proto(message: pb.Filter) -> filters.Filter:
    """The domain filter tree of ``message``.

    Raises InvalidArgument for a filter (or a sub-filter) with no kind set, a condition with no
    op set, a value with no type set, and every rule the domain tree enforces (``core/filters.py``:
    nesting deeper than ``MAX_DEPTH``, more than ``MAX_NODES`` nodes or ``MAX_VALUES`` values,
    NaN, a string that cannot be stored, a range without bounds, a range or non-string value on
    tags / uri, a field of another form). Depth, nodes and values are also counted top-down
    while converting, so an oversized message is refused before most of it is converted. Rules
    that need the collection's attribute types are checked later, when the tree is compiled.
    """
    return _filter(message, 0, _Budget())


class _Budget:
    """Nodes and values converted so far, against the bounds of ``core/filters.py``."""

    def __init__(self) -> None:
        self.nodes = 0
        self.values = 0

    def take(self, nodes: int, values: int) -> None:
        self.nodes += nodes
        self.values += values
        if self.nodes > filters.MAX_NODES:
            raise InvalidArgument(f"filter has more than {filters.MAX_NODES} nodes")
        if self.values > filters.MAX_VALUES:
            raise InvalidArgument(f"filter lists more than {filters.MAX_VALUES} values in all")


def _filter(message: pb.Filter, level: int, budget: _Budget) -> filters.Filter:
    if level > filters.MAX_DEPTH:
        raise InvalidArgument(f"filter nested deeper than {filters.MAX_DEPTH}")
    budget.take(1, 0)
    kind = message.WhichOneof("kind")
    if kind == "condition":
        return _condition(message.condition, budget)
    if kind in ("all_of", "any_of"):
        children = getattr(message, kind).filters
        converted = tuple(_filter(child, level + 1, budget) for child in children)
        return filters.AllOf(converted) if kind == "all_of" else filters.AnyOf(converted)
    if kind == "not":
        return filters.Not(_filter(getattr(message, "not"), level + 1, budget))
    raise InvalidArgument("filter: empty filter (set condition, all_of, any_of or not)")


def _condition(cond: pb.Condition, budget: _Budget) -> filters.Condition:
    where = f"filter on {quote(cond.field)}"
    op = cond.WhichOneof("op")
    if op == "eq":
        budget.take(0, 1)
        return filters.Condition(cond.field, filters.Eq(_value(cond.eq, where)))
    if op == "in":
        values = getattr(cond, "in").values
        if len(values) > filters.MAX_IN_VALUES:  # before converting them all
            raise InvalidArgument(f"{where}: more than {filters.MAX_IN_VALUES} values in 'in'")
        budget.take(0, len(values))
        return filters.Condition(cond.field, filters.In(tuple(_value(v, where) for v in values)))
    if op == "range":
        rng = cond.range
        bounds = {name: _value(getattr(rng, name), where) for name in ("gte", "gt", "lte", "lt") if rng.HasField(name)}
        budget.take(0, len(bounds))
        return filters.Condition(cond.field, filters.Range(**bounds))
    raise InvalidArgument(f"{where}: set one of eq, in, range")


def _value(value: pb.AttributeValue, where: str) -> filters.Value:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    raise InvalidArgument(f"{where}: a value has no type set")


def filter_to_proto(node: filters.Filter) -> pb.Filter:
    """The message of a domain filter tree; ``filter_from_proto`` gives the tree back (equal)."""
    if isinstance(node, filters.Condition):
        return pb.Filter(condition=_condition_to_proto(node))
    message = pb.Filter()
    if isinstance(node, filters.AllOf | filters.AnyOf):
        group = message.all_of if isinstance(node, filters.AllOf) else message.any_of
        group.SetInParent()  # an empty list is a filter too
        group.filters.extend(filter_to_proto(child) for child in node.filters)
        return message
    getattr(message, "not").CopyFrom(filter_to_proto(node.filter))
    return message


def _condition_to_proto(cond: filters.Condition) -> pb.Condition:
    message = pb.Condition(field=cond.field)
    op = cond.op
    if isinstance(op, filters.Eq):
        message.eq.CopyFrom(_value_to_proto(op.value))
    elif isinstance(op, filters.In):
        values = getattr(message, "in")
        values.SetInParent()  # in () matches nothing, and is still an op
        values.values.extend(_value_to_proto(v) for v in op.values)
    else:
        for name, bound in op.items():
            getattr(message.range, name).CopyFrom(_value_to_proto(bound))
    return message


def _value_to_proto(value: filters.Value) -> pb.AttributeValue:
    if isinstance(value, bool):
        return pb.AttributeValue(bool_value=value)
    if isinstance(value, int):
        return pb.AttributeValue(int_value=value)
    if isinstance(value, float):
        return pb.AttributeValue(double_value=value)
    return pb.AttributeValue(string_value=value)
