"""A small builder for the service's metadata filters.

    from vectorsearch_client import F
    f = F.tag("beach") & F.attr("year").range(2019, 2023) | ~F.attr("kind").eq("photo")

``&`` is AND (all_of), ``|`` is OR (any_of), ``~`` is NOT. ``F.tag("a", "b")`` matches items with
any of those tags; ``F.uri(...)`` works like it on the uri. ``F.attr(name)`` offers ``eq``,
``isin``, ``range(lo, hi)`` (inclusive), ``gt``, ``ge``, ``lt``, ``le``; the value's Python type
(str, int, float, bool) must match the stored attribute's type.
"""

from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral, Real
from typing import TypeAlias

from vectorsearch_client._proto import search_service_pb2 as pb

Value: TypeAlias = str | int | float | bool


def attribute_value(value: Value) -> pb.AttributeValue:
    """The typed proto value of a Python (or numpy) scalar."""
    if isinstance(value, bool):
        return pb.AttributeValue(bool_value=value)
    if isinstance(value, str):
        return pb.AttributeValue(string_value=value)
    if isinstance(value, Integral):
        return pb.AttributeValue(int_value=int(value))
    if isinstance(value, Real):
        return pb.AttributeValue(double_value=float(value))
    raise TypeError(f"attribute values are str, int, float or bool, not {type(value).__name__}")


def python_value(value: pb.AttributeValue) -> Value | None:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


class Filter:
    """A filter expression; ``to_proto()`` gives the ``vectorsearch.v1.Filter`` message."""

    def __init__(self, message: pb.Filter) -> None:
        self._message = message

    def to_proto(self) -> pb.Filter:
        return self._message

    def __and__(self, other: Filter) -> Filter:
        return Filter(pb.Filter(all_of=pb.FilterList(filters=[*self._parts("all_of"), *other._parts("all_of")])))

    def __or__(self, other: Filter) -> Filter:
        return Filter(pb.Filter(any_of=pb.FilterList(filters=[*self._parts("any_of"), *other._parts("any_of")])))

    def __invert__(self) -> Filter:
        if self._message.WhichOneof("kind") == "not":
            return Filter(getattr(self._message, "not"))
        negation = pb.Filter()
        getattr(negation, "not").CopyFrom(self._message)
        return Filter(negation)

    def _parts(self, kind: str) -> list[pb.Filter]:
        """The operands to splice into an ``kind`` list: flattens a & b & c into one list."""
        if self._message.WhichOneof("kind") == kind:
            return list(getattr(self._message, kind).filters)
        return [self._message]

    def __repr__(self) -> str:
        return f"Filter({self._message})"


def _condition(field: str, **op: object) -> Filter:
    return Filter(pb.Filter(condition=pb.Condition(field=field, **op)))  # type: ignore[arg-type]


class Field:
    """Conditions on one field (``tags``, ``uri`` or ``attributes.<name>``)."""

    def __init__(self, field: str) -> None:
        self.field = field

    def eq(self, value: Value) -> Filter:
        return _condition(self.field, eq=attribute_value(value))

    def isin(self, values: Iterable[Value]) -> Filter:
        return _condition(self.field, **{"in": pb.ValueList(values=[attribute_value(v) for v in values])})

    def range(self, low: Value | None = None, high: Value | None = None) -> Filter:
        """low <= value <= high; a bound left as None is open."""
        return self._range(gte=low, lte=high)

    def gt(self, value: Value) -> Filter:
        return self._range(gt=value)

    def ge(self, value: Value) -> Filter:
        return self._range(gte=value)

    def lt(self, value: Value) -> Filter:
        return self._range(lt=value)

    def le(self, value: Value) -> Filter:
        return self._range(lte=value)

    def _range(self, **bounds: Value | None) -> Filter:
        given = {name: attribute_value(v) for name, v in bounds.items() if v is not None}
        if not given:
            raise ValueError("a range needs at least one bound")
        return _condition(self.field, range=pb.Range(**given))


class F:
    """Entry points of the builder."""

    @staticmethod
    def attr(name: str) -> Field:
        return Field(f"attributes.{name}")

    @staticmethod
    def tag(*tags: str) -> Filter:
        """Items with this tag (with several: any of them)."""
        if not tags:
            raise ValueError("F.tag needs at least one tag")
        return Field("tags").eq(tags[0]) if len(tags) == 1 else Field("tags").isin(tags)

    @staticmethod
    def uri(*uris: str) -> Filter:
        if not uris:
            raise ValueError("F.uri needs at least one uri")
        return Field("uri").eq(uris[0]) if len(uris) == 1 else Field("uri").isin(uris)

    @staticmethod
    def all(*filters: Filter) -> Filter:
        """AND of the filters (matches everything when empty)."""
        return Filter(pb.Filter(all_of=pb.FilterList(filters=[f.to_proto() for f in filters])))

    @staticmethod
    def any(*filters: Filter) -> Filter:
        """OR of the filters (matches nothing when empty)."""
        return Filter(pb.Filter(any_of=pb.FilterList(filters=[f.to_proto() for f in filters])))
