"""Evaluating a ``core.filters`` tree over one layer's field index (docs/filtered-search.md §5).

``evaluate(node, index, universe)`` is the set of labels of ``universe`` (the layer's visible
labels or rows) whose item matches ``node``, with exactly the semantics of
``core.filters.matches`` (the oracle of its tests): a value equals only values of its own type,
an item without the attribute never matches a condition on it (so it matches the negation),
an empty ``AllOf`` is the universe, an empty ``AnyOf`` and ``In(())`` are empty, and a ``Range``
matches only int or double values, and only when every bound has the value's type (int bounds
are clamped to int64, never wrapped).

The index is a ``FieldIndex``: ``shard.fields.ColumnIndex`` (a delta layer, vectorised compares)
or ``shard.fields.LayerIndex`` (a graph layer, sorted arrays and CSR slices). Leaves are
evaluated over the whole layer; ``Not`` subtracts from the universe and the result is
intersected with it once at the end, which gives the same set as restricting every leaf.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from core.filters import TAGS, URI, AllOf, AnyOf, Condition, Filter, Not, Range, values_of
from core.items import BOOL, DOUBLE, INT, INT64_MAX, INT64_MIN, value_type
from shard.labelset import LabelSet

Numeric = int | float | bool


class FieldIndex(Protocol):
    """What a layer answers for the leaves of a filter, each an exact set over ``[0, size)``."""

    @property
    def size(self) -> int: ...

    def strings_equal(self, field_name: str, texts: Sequence[str]) -> LabelSet:
        """Items whose field (``"tags"``: any tag, ``"uri"``, ``"attributes.<name>"`` of string
        type) equals one of ``texts``."""
        ...

    def values_equal(self, name: str, kind: str, values: Sequence[Numeric]) -> LabelSet:
        """Items whose attribute ``name`` has type ``kind`` (INT, DOUBLE or BOOL) and equals one of
        ``values`` (of that type; ints within int64)."""
        ...

    def values_within(
        self, name: str, kind: str, low: Numeric | None, low_open: bool, high: Numeric | None, high_open: bool
    ) -> LabelSet:
        """Items whose attribute ``name`` has type ``kind`` (INT or DOUBLE) and lies within the
        bounds (None: open; ``*_open``: strict; int bounds within int64)."""
        ...


def evaluate(node: Filter, index: FieldIndex, universe: LabelSet) -> LabelSet:
    """The labels of ``universe`` whose items match ``node``."""
    if universe.size != index.size:
        raise ValueError(f"a universe of size {universe.size} for an index of size {index.size}")
    return _evaluate(node, index, universe) & universe


def _evaluate(node: Filter, index: FieldIndex, universe: LabelSet) -> LabelSet:
    if isinstance(node, Condition):
        return condition_set(node, index)
    if isinstance(node, AllOf):
        result = universe
        for child in node.filters:
            if not result:
                break
            result = result & _evaluate(child, index, universe)
        return result
    if isinstance(node, AnyOf):
        result = LabelSet.empty(index.size)
        for child in node.filters:
            result = result | _evaluate(child, index, universe)
        return result
    assert isinstance(node, Not)
    return universe - _evaluate(node.filter, index, universe)


def condition_set(cond: Condition, index: FieldIndex) -> LabelSet:
    """Every item of the layer (visible or not) that matches ``cond``."""
    op = cond.op
    if cond.field in (TAGS, URI):
        assert not isinstance(op, Range)  # the constructor refuses it
        return index.strings_equal(cond.field, [v for v in values_of(op) if isinstance(v, str)])
    name = cond.attribute
    assert name is not None
    if isinstance(op, Range):
        return _range_set(name, op, index)
    by_kind: dict[str, list[Numeric]] = {INT: [], DOUBLE: [], BOOL: []}
    texts: list[str] = []
    for value in values_of(op):
        if isinstance(value, str):
            texts.append(value)
            continue
        kind = value_type(value)
        if kind == INT and not INT64_MIN <= value <= INT64_MAX:
            continue  # an int outside int64 equals no stored int
        by_kind[kind].append(value)
    result = LabelSet.empty(index.size)
    if texts:
        result = result | index.strings_equal(cond.field, texts)
    for kind, values in by_kind.items():
        if values:
            result = result | index.values_equal(name, kind, values)
    return result


def _range_set(name: str, op: Range, index: FieldIndex) -> LabelSet:
    bounds = op.items()
    kinds = {value_type(bound) for _, bound in bounds}
    if len(kinds) != 1 or (kind := kinds.pop()) not in (INT, DOUBLE):
        return LabelSet.empty(index.size)  # no value has every bound's type
    if kind == INT:
        low, high = INT64_MIN, INT64_MAX
        for bound_name, bound in bounds:
            assert isinstance(bound, int)
            if bound_name == "gte":
                low = max(low, bound)
            elif bound_name == "gt":
                low = max(low, bound + 1)
            elif bound_name == "lte":
                high = min(high, bound)
            else:
                high = min(high, bound - 1)
        if low > high:  # includes a bound past int64 on the wrong side
            return LabelSet.empty(index.size)
        return index.values_within(name, INT, low, False, high, False)
    lower: tuple[float, bool] | None = None  # (bound, strict)
    upper: tuple[float, bool] | None = None
    for bound_name, bound in bounds:
        assert isinstance(bound, float)
        strict = bound_name in ("gt", "lt")
        if bound_name in ("gte", "gt"):
            if lower is None or bound > lower[0] or (bound == lower[0] and strict):
                lower = (bound, strict)
        elif upper is None or bound < upper[0] or (bound == upper[0] and strict):
            upper = (bound, strict)
    return index.values_within(
        name,
        DOUBLE,
        None if lower is None else lower[0],
        lower is not None and lower[1],
        None if upper is None else upper[0],
        upper is not None and upper[1],
    )
