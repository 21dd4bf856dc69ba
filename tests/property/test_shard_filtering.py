"""shard/filtering.py over shard/fields.py equals the reference evaluator ``core.filters.matches``
item by item: random items (uri, tags, typed attributes with int64 extremes, -0.0, infinities,
unicode strings, one attribute name holding values of different types) and random bounded filter
trees, evaluated over delta-style columns (``ColumnIndex``) and a graph ``LayerIndex`` built from
them, within a random universe of visible labels. A second property runs with a 2-bit string
hash, so collisions (re-salting) and foreign strings that hash like stored ones are common.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.filters import AllOf, AnyOf, Condition, Eq, Filter, In, Not, Range, attribute_field, matches
from core.items import INT64_MAX, INT64_MIN, ItemMeta
from shard.fields import ColumnIndex, FieldColumns, Fields, LayerIndex, decode_fields
from shard.filtering import evaluate
from shard.labelset import LabelSet
from vsproto import payload

SETTINGS = settings(max_examples=250, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = ["a", "b", "c"]
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=0, max_size=5)
# pools shared by items and filters (so conditions often match some items but not all), plus
# the whole domain
STRINGS = st.one_of(st.sampled_from(["", "x", "y", "é", "日本", "x "]), st.sampled_from(["x", "y"]), _TEXT)
TAG = st.one_of(st.sampled_from(["x", "y", "z", "é", "🙂"]), st.sampled_from(["x", "y"]), _TEXT.filter(bool))
INTS = st.one_of(
    st.sampled_from([0, 1, -1, 2, INT64_MIN, INT64_MIN + 1, INT64_MAX, INT64_MAX - 1]),
    st.integers(-3, 3),
    st.integers(INT64_MIN, INT64_MAX),
)
FILTER_INTS = st.one_of(INTS, st.sampled_from([2**63, -(2**63) - 1, 2**64, -(2**64)]))
DOUBLES = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, math.inf, -math.inf, 1e308, 5e-324, 2.0**63]),
    st.floats(allow_nan=False),
)
VALUES = st.one_of(STRINGS, INTS, DOUBLES, st.booleans())
FILTER_VALUES = st.one_of(STRINGS, FILTER_INTS, DOUBLES, st.booleans())

METAS = st.builds(
    ItemMeta,
    uri=STRINGS,
    tags=st.lists(TAG, max_size=4),
    attributes=st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=3),
)


def _ops(values: st.SearchStrategy, bound_values: st.SearchStrategy | None) -> st.SearchStrategy:
    choices = [values.map(Eq), st.lists(values, max_size=4).map(lambda vs: In(tuple(vs)))]
    if bound_values is not None:
        bounds = st.lists(st.tuples(st.sampled_from(["gte", "gt", "lte", "lt"]), bound_values), min_size=1, max_size=3)
        choices.append(bounds.map(lambda pairs: Range(**dict(pairs))))
    return st.one_of(*choices)


def _conditions(strings: st.SearchStrategy, tags: st.SearchStrategy, values: st.SearchStrategy) -> st.SearchStrategy:
    numeric = st.one_of(FILTER_INTS, DOUBLES)
    # mostly same-typed bounds, sometimes anything (mixed / bool / string bounds match nothing)
    bound_values = st.one_of(FILTER_INTS, DOUBLES, values)
    return st.one_of(
        st.builds(Condition, st.just("tags"), _ops(tags, None)),
        st.builds(Condition, st.just("uri"), _ops(strings, None)),
        st.builds(Condition, st.sampled_from(NAMES).map(attribute_field), _ops(values, bound_values)),
        st.builds(Condition, st.sampled_from(NAMES).map(attribute_field), _ops(numeric, numeric)),
    )


def _trees(leaves: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3).map(lambda fs: AllOf(tuple(fs))),
            st.lists(children, max_size=3).map(lambda fs: AnyOf(tuple(fs))),
            children.map(Not),
        ),
        max_leaves=8,
    )


TREES = _trees(_conditions(STRINGS, TAG, FILTER_VALUES))


def _check(metas: list[ItemMeta], tree: Filter, data: st.DataObject, hash_bits: int = 64) -> None:
    columns = FieldColumns(hash_bits=hash_bits)
    fields = [decode_fields(payload.encode(meta)) for meta in metas]  # the lean decoder, as the shard will
    cut = sorted(data.draw(st.lists(st.integers(0, len(metas)), max_size=2), label="batch cuts"))
    for start, end in zip([0, *cut], [*cut, len(metas)], strict=True):
        columns.append(fields[start:end])
    assert columns.rows == len(metas)
    n = len(metas)
    visible = data.draw(st.one_of(st.just([True] * n), st.lists(st.booleans(), min_size=n, max_size=n)), "visible")
    universe = LabelSet.from_mask(np.array(visible, dtype=bool))
    expected = [bool(seen and matches(tree, meta)) for seen, meta in zip(visible, metas, strict=True)]
    for index in (ColumnIndex(columns), LayerIndex.build(columns)):
        got = evaluate(tree, index, universe)
        assert got.mask().tolist() == expected, (type(index).__name__, tree)
        assert got.count == sum(expected)


@SETTINGS
@given(metas=st.lists(METAS, min_size=1, max_size=24), tree=TREES, data=st.data())
def test_evaluate_equals_the_reference_evaluator(metas: list[ItemMeta], tree: Filter, data: st.DataObject) -> None:
    _check(metas, tree, data)


# at most 4 distinct strings per field: a 2-bit hash can still be made injective by re-salting
SMALL_STRINGS = st.sampled_from(["", "x", "y", "é"])
SMALL_TAGS = st.sampled_from(["x", "y", "z", "日"])
FOREIGN = st.one_of(SMALL_STRINGS, SMALL_TAGS, st.sampled_from(["q", "r", "s", "t", "u", "v", "w"]))
SMALL_METAS = st.builds(
    ItemMeta,
    uri=SMALL_STRINGS,
    tags=st.lists(SMALL_TAGS, max_size=3),
    attributes=st.dictionaries(st.sampled_from(NAMES), st.one_of(SMALL_STRINGS, st.integers(-2, 2)), max_size=3),
)
SMALL_TREES = _trees(_conditions(FOREIGN, FOREIGN, st.one_of(FOREIGN, st.integers(-2, 2))))


@settings(SETTINGS, max_examples=150)
@given(metas=st.lists(SMALL_METAS, min_size=1, max_size=16), tree=SMALL_TREES, data=st.data())
def test_evaluate_is_exact_with_a_tiny_colliding_hash(metas: list[ItemMeta], tree: Filter, data: st.DataObject) -> None:
    _check(metas, tree, data, hash_bits=2)


EDGE_INTS = st.sampled_from([0, 1, INT64_MIN, INT64_MAX, INT64_MAX - 1])
EDGE_FILTER_INTS = st.one_of(EDGE_INTS, EDGE_INTS, st.sampled_from([2**63, -(2**63) - 1]))
EDGE_DOUBLES = st.sampled_from([-0.0, 0.0, 1.0, math.inf, -math.inf])
EDGE_VALUES = st.one_of(EDGE_INTS, EDGE_DOUBLES, st.booleans())
EDGE_METAS = st.builds(ItemMeta, attributes=st.dictionaries(st.sampled_from(NAMES[:2]), EDGE_VALUES, max_size=2))
EDGE_LEAVES = st.builds(
    Condition,
    st.sampled_from(NAMES[:2]).map(attribute_field),
    _ops(st.one_of(EDGE_FILTER_INTS, EDGE_DOUBLES, st.booleans()), st.one_of(EDGE_FILTER_INTS, EDGE_DOUBLES)),
)
EDGE_TREES = st.one_of(EDGE_LEAVES, EDGE_LEAVES, _trees(EDGE_LEAVES))


@SETTINGS
@given(metas=st.lists(EDGE_METAS, min_size=1, max_size=16), tree=EDGE_TREES, data=st.data())
def test_numeric_conditions_at_their_edges(metas: list[ItemMeta], tree: Filter, data: st.DataObject) -> None:
    """Values on the bounds, int64 extremes, bounds past int64, -0.0 against 0.0, infinities,
    and 1 / 1.0 / True under one attribute name."""
    _check(metas, tree, data)


@SETTINGS
@given(meta=METAS)
def test_lean_decoder_agrees_with_the_payload_codec(meta: ItemMeta) -> None:
    encoded = payload.encode(meta)
    decoded = payload.decode(encoded)
    assert decoded is not None
    assert decode_fields(encoded) == Fields.from_meta(decoded)
    assert decode_fields(b"") is None


def test_every_numeric_leaf_on_edge_values_exhaustively() -> None:
    """Every Eq and every Range of one or two bounds over edge values (int64 extremes, bounds
    past int64, -0.0 / 0.0, infinities, 1 / 1.0 / True) against one item per edge value."""
    stored: list[int | float | bool] = [0, 1, -1, INT64_MIN, INT64_MAX, INT64_MAX - 1]
    stored += [-0.0, 0.0, 1.0, -1.0, math.inf, -math.inf, 2.0**63, True, False]
    bounds: list[int | float | bool] = [*stored, 2**63, -(2**63) - 1]
    metas = [ItemMeta(attributes={"a": value}) for value in stored] + [ItemMeta()]
    columns = FieldColumns()
    columns.append([Fields.from_meta(meta) for meta in metas])
    indexes = (ColumnIndex(columns), LayerIndex.build(columns))
    universe = LabelSet.full(len(metas))
    singles = [(name, bound) for name in ("gte", "gt", "lte", "lt") for bound in bounds]
    ops: list[Eq | In | Range] = [Eq(value) for value in bounds]
    ops += [Range(**{name: bound}) for name, bound in singles]
    ops += [Range(**{a: x, b: y}) for a, x in singles for b, y in singles if a != b]
    for op in ops:
        for node in (Condition("attributes.a", op), Not(Condition("attributes.a", op))):
            expected = [matches(node, meta) for meta in metas]
            for index in indexes:
                assert evaluate(node, index, universe).mask().tolist() == expected, (type(index).__name__, node)
