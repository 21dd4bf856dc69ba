"""The domain filter tree: which items a search may return, judged on their metadata.

A ``Filter`` is a ``Condition`` on one field or an ``AllOf`` / ``AnyOf`` / ``Not`` of filters.
It holds no protobuf and no SQL: the server compiles it to SQL (``server/filters.py``) and the
shards may evaluate it in memory; both follow these semantics.

Fields of a ``Condition``:
- ``"tags"``: ``Eq(t)`` matches an item that has tag ``t``; ``In(ts)`` one that has any of ``ts``.
- ``"uri"``: ``Eq`` / ``In`` on the item's uri (every item has one, ``""`` by default).
- ``"attributes.<name>"``: ``Eq`` / ``In`` match an item whose attribute ``<name>`` equals (one
  of) the values; ``Range`` matches one whose attribute lies within every bound given.

Values are ``str``, ``int``, ``float`` (a double) or ``bool``, and a value only ever equals a
value of the same type: ``1``, ``1.0`` and ``True`` are three different values, both for
matching and for ``==`` / ``hash`` of the nodes, because attribute types are fixed per
collection. Constructors convert subclasses (numpy's float64, say) to these four types and
raise TypeError (a bug, not a client error) for anything else.

An item without the attribute never matches a condition on it, so it matches the condition's
negation. ``In(())`` matches nothing, an empty ``AllOf`` everything, an empty ``AnyOf`` nothing.

Rules that do not depend on a collection are enforced by the constructors, so every node that
exists is well formed; a violation is ``InvalidArgument`` (a client error) with the message the
public API reports: a field of another form, more than ``MAX_IN_VALUES`` values in ``In``, a
``Range`` without bounds, ``Range`` on tags or uri, a non-string value for tags or uri, NaN, a
string that cannot be stored (``core.text.check_text``), or a tree deeper than ``MAX_DEPTH``,
with more than ``MAX_NODES`` nodes or more than ``MAX_VALUES`` values in all. Rules that need
the collection's stored attribute types (the attribute exists, values have its type, ``Range``
only on int and double) are checked where the tree is evaluated against a collection.

Nodes are frozen dataclasses whose children are tuples, so a tree is immutable, hashable and
safe to share between threads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from core import limits
from core.errors import InvalidArgument
from core.items import DOUBLE, INT, ItemMeta, value_type
from core.text import check_text, quote

MAX_DEPTH = limits.MAX_FILTER_DEPTH
"""The deepest nesting allowed: ``depth()`` of a tree is at most this."""
MAX_IN_VALUES = limits.MAX_FILTER_VALUES
"""The most values one ``In`` may list."""
MAX_NODES = limits.MAX_FILTER_NODES
"""The most nodes of one tree: ``size()`` is at most this."""
MAX_VALUES = limits.MAX_FILTER_VALUES
"""The most values of all the conditions of one tree together: ``value_count()`` is at most this."""

TAGS = "tags"
URI = "uri"
ATTRIBUTE_PREFIX = "attributes."

Value: TypeAlias = str | int | float | bool


def value_type_name(value: Value) -> str:
    """``"string"``, ``"int"``, ``"double"`` or ``"bool"``: the public name of ``value``'s type."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    return "string"


def attribute_field(name: str) -> str:
    """The field of a condition on attribute ``name``: ``"attributes.<name>"``."""
    return ATTRIBUTE_PREFIX + name


def _plain(value: Value) -> Value:
    """``value`` as exactly one of str, int, float, bool (subclasses such as numpy's float64 are
    converted); TypeError for anything else."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"a filter value must be str, int, float or bool, not {type(value).__name__}")


def _key(value: Value | None) -> tuple[type, Value] | None:
    """What equality and hashing compare: the value with its type (so 1, 1.0 and True differ)."""
    return None if value is None else (type(value), value)


@dataclass(frozen=True, eq=False)
class Eq:
    """The field equals ``value``."""

    value: Value

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", _plain(self.value))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Eq) and _key(self.value) == _key(other.value)

    def __hash__(self) -> int:
        return hash((Eq, _key(self.value)))


@dataclass(frozen=True, eq=False)
class In:
    """The field equals any of ``values`` (none: matches nothing). Order and duplicates do not
    change what matches, but do take part in ``==``."""

    values: tuple[Value, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(_plain(v) for v in self.values))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, In) and [_key(v) for v in self.values] == [_key(v) for v in other.values]

    def __hash__(self) -> int:
        return hash((In, tuple(_key(v) for v in self.values)))


@dataclass(frozen=True, eq=False)
class Range:
    """The field lies within every bound given (``gte <= x``, ``gt < x``, ``x <= lte``, ``x < lt``);
    ``None`` is an open bound. A ``Condition`` needs at least one bound."""

    gte: Value | None = None
    gt: Value | None = None
    lte: Value | None = None
    lt: Value | None = None

    def __post_init__(self) -> None:
        for name, bound in self.items():
            object.__setattr__(self, name, _plain(bound))

    def items(self) -> tuple[tuple[str, Value], ...]:
        """The bounds that are set, as (name, value) in the order gte, gt, lte, lt."""
        pairs = (("gte", self.gte), ("gt", self.gt), ("lte", self.lte), ("lt", self.lt))
        return tuple((name, bound) for name, bound in pairs if bound is not None)

    def _keys(self) -> tuple[tuple[type, Value] | None, ...]:
        return (_key(self.gte), _key(self.gt), _key(self.lte), _key(self.lt))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Range) and self._keys() == other._keys()

    def __hash__(self) -> int:
        return hash((Range, self._keys()))


Op: TypeAlias = Eq | In | Range


@dataclass(frozen=True)
class Condition:
    """``op`` applied to ``field``: ``"tags"``, ``"uri"`` or ``"attributes.<name>"``.

    Raises InvalidArgument on construction if the field has another form, ``op`` is an ``In``
    with more than ``MAX_IN_VALUES`` values, a ``Range`` without bounds or on tags / uri, a value
    for tags / uri is not a string, or a value is NaN.
    """

    field: str
    op: Op

    def __post_init__(self) -> None:
        where = f"filter on {quote(self.field)}"
        op = self.op
        if isinstance(op, In) and len(op.values) > MAX_IN_VALUES:
            raise InvalidArgument(f"{where}: more than {MAX_IN_VALUES} values in 'in'")
        text_field = self.field in (TAGS, URI)
        if not text_field and not self.field.startswith(ATTRIBUTE_PREFIX):
            raise InvalidArgument(f"{where}: unknown field (use 'tags', 'uri' or 'attributes.<name>')")
        if text_field and isinstance(op, Range):
            raise InvalidArgument(f"{where}: range applies to int and double attributes only")
        if isinstance(op, Eq):
            values: tuple[Value, ...] = (op.value,)
        elif isinstance(op, In):
            values = op.values
        else:
            values = tuple(bound for _, bound in op.items())
            if not values:
                raise InvalidArgument(f"{where}: range has no bound")
        for value in values:
            if isinstance(value, float) and math.isnan(value):
                raise InvalidArgument(f"{where}: NaN is not a filter value")
            if text_field and not isinstance(value, str):
                raise InvalidArgument(f"{where}: values must be strings, got {value_type_name(value)}")
            if isinstance(value, str):
                check_text(value, f"{where}: value", limits.MAX_FILTER_STRING_BYTES)

    @property
    def attribute(self) -> str | None:
        """The attribute's name for ``"attributes.<name>"``; None for ``"tags"`` and ``"uri"``."""
        return self.field[len(ATTRIBUTE_PREFIX) :] if self.field.startswith(ATTRIBUTE_PREFIX) else None

    def depth(self) -> int:
        """0: a condition is a leaf."""
        return 0

    def size(self) -> int:
        """1: the number of nodes of this tree."""
        return 1

    def value_count(self) -> int:
        """The number of values this condition lists (eq: 1, in: its list, range: its bounds)."""
        if isinstance(self.op, Eq):
            return 1
        if isinstance(self.op, In):
            return len(self.op.values)
        return len(self.op.items())


def _check_shape(children: tuple[Filter, ...]) -> tuple[int, int, int]:
    """(depth, size, value count) of a node over ``children``; InvalidArgument past the bounds."""
    depth = 1 + max((child.depth() for child in children), default=0)
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"filter nested deeper than {MAX_DEPTH}")
    size = 1 + sum(child.size() for child in children)
    if size > MAX_NODES:
        raise InvalidArgument(f"filter has more than {MAX_NODES} nodes")
    values = sum(child.value_count() for child in children)
    if values > MAX_VALUES:
        raise InvalidArgument(f"filter lists more than {MAX_VALUES} values in all")
    return depth, size, values


@dataclass(frozen=True)
class _Group:
    """Shared shape of ``AllOf`` and ``AnyOf``: a tuple of child filters.

    Raises InvalidArgument on construction if the tree would break ``MAX_DEPTH``, ``MAX_NODES``
    or ``MAX_VALUES``."""

    filters: tuple[Filter, ...]
    _shape: tuple[int, int, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "filters", tuple(self.filters))
        object.__setattr__(self, "_shape", _check_shape(self.filters))

    def depth(self) -> int:
        """The number of edges on the longest path from this node to a leaf."""
        return self._shape[0]

    def size(self) -> int:
        """The number of nodes of this tree."""
        return self._shape[1]

    def value_count(self) -> int:
        """The number of values of all the conditions of this tree."""
        return self._shape[2]


@dataclass(frozen=True)
class AllOf(_Group):
    """Every filter of ``filters`` matches (an empty ``AllOf`` matches every item)."""


@dataclass(frozen=True)
class AnyOf(_Group):
    """At least one filter of ``filters`` matches (an empty ``AnyOf`` matches no item)."""


@dataclass(frozen=True)
class Not:
    """``filter`` does not match (so an item without an attribute matches ``Not`` of a condition
    on it). Raises InvalidArgument on construction if the tree would break ``MAX_DEPTH``,
    ``MAX_NODES`` or ``MAX_VALUES``."""

    filter: Filter
    _shape: tuple[int, int, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_shape", _check_shape((self.filter,)))

    def depth(self) -> int:
        """The number of edges on the longest path from this node to a leaf."""
        return self._shape[0]

    def size(self) -> int:
        """The number of nodes of this tree."""
        return self._shape[1]

    def value_count(self) -> int:
        """The number of values of all the conditions of this tree."""
        return self._shape[2]


Filter: TypeAlias = Condition | AllOf | AnyOf | Not


# ---------------------------------------------------------------------------------- evaluation
def values_of(op: Eq | In) -> list[Value]:
    """The values an eq or in condition compares with."""
    return [op.value] if isinstance(op, Eq) else list(op.values)


def matches(node: Filter, meta: ItemMeta) -> bool:
    """Whether an item with metadata ``meta`` matches ``node``, by the tree's semantics
    (this module): values equal only values of the same type, an item without the
    attribute never matches a condition on it, empty all_of matches and empty any_of does not.
    The in-memory twin of ``server.filters.compile_filter`` (SQL), and the reference every
    other evaluator is tested against."""
    if isinstance(node, Condition):
        return _condition_matches(node, meta)
    if isinstance(node, AllOf):
        return all(matches(child, meta) for child in node.filters)
    if isinstance(node, AnyOf):
        return any(matches(child, meta) for child in node.filters)
    return not matches(node.filter, meta)


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {  # int with int, float with float
    "gte": lambda a, b: a >= b,
    "gt": lambda a, b: a > b,
    "lte": lambda a, b: a <= b,
    "lt": lambda a, b: a < b,
}


def _condition_matches(cond: Condition, meta: ItemMeta) -> bool:
    op = cond.op
    if cond.field == TAGS:
        wanted = set(values_of(op))  # type: ignore[arg-type]
        return any(tag in wanted for tag in meta.tags)
    if cond.field == URI:
        return meta.uri in values_of(op)  # type: ignore[arg-type]
    name = cond.attribute
    assert name is not None
    if name not in meta.attributes:
        return False
    value = meta.attributes[name]
    if isinstance(op, Range):
        kind = value_type(value)
        if kind not in (INT, DOUBLE) or isinstance(value, str):
            return False
        for bound_name, bound in op.items():
            if value_type(bound) != kind or isinstance(bound, str):
                return False
            if not _COMPARE[bound_name](value, bound):
                return False
        return True
    key = (value_type(value), value)
    return any((value_type(v), v) == key for v in values_of(op))
