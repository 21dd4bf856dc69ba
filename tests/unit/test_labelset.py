"""shard/labelset.py: the set algebra in every pair of forms against Python sets, the switch
between sparse and dense at size / 32, immutability; and shard/fields.py's string hashing
staying exact when hashes collide (re-salting, foreign strings that hash like stored ones)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from core.filters import Condition, Eq, In, Not
from core.items import STRING
from shard import fields as fields_module
from shard.fields import ColumnIndex, FieldColumns, Fields, LayerIndex, StringMap, hash_string
from shard.filtering import evaluate
from shard.labelset import DENSE_FRACTION, LabelSet

SIZE = 640  # dense from 20 members


def _sets(rng: np.random.Generator) -> list[set[int]]:
    counts = [0, 1, 5, SIZE // DENSE_FRACTION - 1, SIZE // DENSE_FRACTION, 100, SIZE - 1, SIZE]
    return [set(rng.choice(SIZE, size=count, replace=False).tolist()) for count in counts]


def _check(result: LabelSet, expected: set[int]) -> None:
    assert result.size == SIZE
    assert result.count == len(result) == len(expected)
    assert result.labels().tolist() == sorted(expected)
    assert np.flatnonzero(result.mask()).tolist() == sorted(expected)
    assert result.is_dense == (len(expected) * DENSE_FRACTION >= SIZE)


def test_algebra_matches_python_sets_in_every_pair_of_forms() -> None:
    rng = np.random.default_rng(7)
    sets = _sets(rng)
    full = set(range(SIZE))
    for a, b in itertools.product(sets, repeat=2):
        x, y = LabelSet.from_labels(sorted(a), SIZE), LabelSet.from_labels(list(b), SIZE)
        _check(x & y, a & b)
        _check(x | y, a | b)
        _check(x - y, a - b)
        _check(~x, full - a)
        assert (x == y) == (a == b)
        for label in (0, 3, SIZE - 1):
            assert (label in x) == (label in a)
    assert -1 not in LabelSet.full(SIZE) and SIZE not in LabelSet.full(SIZE)


def test_forms_switch_at_size_over_32() -> None:
    threshold = SIZE // DENSE_FRACTION
    below = LabelSet.from_labels(range(threshold - 1), SIZE)
    at = LabelSet.from_labels(range(threshold), SIZE)
    assert not below.is_dense and at.is_dense
    assert (at - LabelSet.from_labels([0], SIZE)).is_dense is False  # shrinking goes back to sparse
    assert (below | LabelSet.from_labels([SIZE - 1], SIZE)).is_dense
    assert not LabelSet.from_mask(np.arange(SIZE) < 3).is_dense
    assert LabelSet.full(SIZE).is_dense and LabelSet.full(SIZE).count == SIZE
    assert not LabelSet.empty(SIZE).is_dense and not LabelSet.empty(SIZE)
    assert LabelSet.empty(0).count == 0 and (~LabelSet.empty(0)).count == 0
    # duplicates and any order, in either construction path
    assert LabelSet.from_labels([5, 1, 5, 1], SIZE).labels().tolist() == [1, 5]
    assert LabelSet.from_labels([*range(100), *range(100)], SIZE).count == 100


def test_sets_are_immutable_and_checked() -> None:
    dense, sparse = LabelSet.full(SIZE), LabelSet.from_labels([1, 2], SIZE)
    for array in (dense.mask(), dense.labels(), sparse.mask(), sparse.labels()):
        with pytest.raises(ValueError):
            array[0] = 0
    mask = np.zeros(SIZE, dtype=bool)
    built = LabelSet.from_mask(mask)
    mask[:] = True  # the caller's array is copied
    assert built.count == 0
    with pytest.raises(ValueError):
        LabelSet.from_labels([SIZE], SIZE)
    with pytest.raises(ValueError):
        LabelSet.from_labels([-1], SIZE)
    with pytest.raises(ValueError):
        _ = dense & LabelSet.full(SIZE + 1)


# ----------------------------------------------------------------------------- hash collisions
def _colliding(salt: bytes, bits: int, count: int) -> list[str]:
    """``count`` distinct strings with the same ``bits``-bit hash under ``salt``."""
    by_hash: dict[int, list[str]] = {}
    for number in itertools.count():
        text = f"s{number}"
        group = by_hash.setdefault(hash_string(text, salt, bits), [])
        group.append(text)
        if len(group) == count:
            return group
    raise AssertionError("unreachable")


def _matching(node: Condition | Not, columns: FieldColumns) -> list[list[int]]:
    universe = LabelSet.full(columns.rows)
    return [
        evaluate(node, index, universe).labels().tolist() for index in (ColumnIndex(columns), LayerIndex.build(columns))
    ]


def test_a_colliding_string_resalts_the_field_and_rehashes_published_rows() -> None:
    columns = FieldColumns(hash_bits=8)
    first, second = _colliding(StringMap("uri", 8).salt, 8, 2)
    columns.append([Fields(first, ("t",), {("s", STRING): first})])
    assert columns.uri.strings is not None and columns.uri.strings.generation == 0
    columns.append([Fields(second, ("t",), {("s", STRING): "other"}), Fields("x")])  # collides with row 0's uri
    assert columns.uri.strings.generation > 0
    assert _matching(Condition("uri", Eq(first)), columns) == [[0], [0]]
    assert _matching(Condition("uri", Eq(second)), columns) == [[1], [1]]
    assert _matching(Condition("uri", In((first, second))), columns) == [[0, 1], [0, 1]]
    assert _matching(Not(Condition("uri", Eq(first))), columns) == [[1, 2], [1, 2]]
    assert _matching(Condition("attributes.s", Eq(first)), columns) == [[0], [0]]


def test_collisions_within_one_batch_and_in_tags() -> None:
    columns = FieldColumns(hash_bits=8)
    tags = _colliding(StringMap("tags", 8).salt, 8, 3)
    columns.append([Fields("", (tags[0], tags[1])), Fields("", (tags[2],)), Fields("", ())])
    assert columns.tags.strings.generation > 0
    for number, tag in enumerate(tags):
        assert _matching(Condition("tags", Eq(tag)), columns) == [[0 if number < 2 else 1]] * 2
    assert _matching(Condition("tags", In((tags[0], tags[2]))), columns) == [[0, 1], [0, 1]]


def test_a_foreign_string_that_hashes_like_a_stored_one_matches_nothing() -> None:
    columns = FieldColumns(hash_bits=8)
    stored, foreign = _colliding(StringMap("attributes.s", 8).salt, 8, 2)
    columns.append([Fields(stored, (stored,), {("s", STRING): stored})])
    for field in ("uri", "tags"):  # other fields have other salts: make the foreign one collide there too
        salt = StringMap(field, 8).salt
        other = next(
            f"f{n}" for n in itertools.count() if hash_string(f"f{n}", salt, 8) == hash_string(stored, salt, 8)
        )
        assert _matching(Condition(field, Eq(other)), columns) == [[], []]
        assert _matching(Not(Condition(field, Eq(other))), columns) == [[0], [0]]
    assert _matching(Condition("attributes.s", Eq(foreign)), columns) == [[], []]
    assert _matching(Condition("attributes.s", Eq(stored)), columns) == [[0], [0]]


def test_a_layer_index_built_before_a_resalt_stays_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    # a hash that ignores the text under generation 0: every second string collides
    real = fields_module.hash_string

    def weak(text: str, salt: bytes, bits: int = 64) -> int:
        return 42 if salt.endswith(b"\x000\x00") else real(text, salt, bits)

    monkeypatch.setattr(fields_module, "hash_string", weak)
    columns = FieldColumns()
    columns.append([Fields("a")])
    before = LayerIndex.build(columns)
    columns.append([Fields("b")])
    assert columns.uri.strings is not None and columns.uri.strings.generation == 1
    universe = LabelSet.full(1)
    assert evaluate(Condition("uri", Eq("a")), before, universe).labels().tolist() == [0]
    assert evaluate(Condition("uri", Eq("b")), before, universe).labels().tolist() == []
    assert _matching(Condition("uri", In(("a", "b"))), columns) == [[0, 1], [0, 1]]
