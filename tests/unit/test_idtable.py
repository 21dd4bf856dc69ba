"""IdTable: labels <-> ids, packed; checked against a list and a dict doing the same job."""

from __future__ import annotations

import random

import numpy as np
import pytest

from shard import idtable
from shard.idtable import IdTable


def _reference(ids: list[str]) -> dict[str, int]:
    return {item: label for label, item in enumerate(ids) if item}


def _check(table: IdTable, ids: list[str]) -> None:
    of = _reference(ids)
    assert len(table) == len(ids)
    assert table.live == len(of)
    assert [table.id_of(label) for label in range(len(ids))] == ids
    assert table.ids_of(np.arange(len(ids))).tolist() == ids
    assert table.live_labels().tolist() == sorted(of.values())
    assert list(table.live_ids()) == [item for item in ids if item]
    for item, label in of.items():
        assert table.label_of(item) == label
        assert item in table
    probe = [*of, "absent", "é-absent", *[item + "x" for item in list(of)[:5]]]
    expected = [of.get(item, -1) for item in probe]
    assert table.labels_of(probe).tolist() == expected
    lengths, blob = table.encoded()
    again = IdTable.from_lengths(blob, lengths)
    assert [again.id_of(label) for label in range(len(ids))] == ids


def test_from_ids_maps_both_ways_with_dead_labels_and_unicode() -> None:
    ids = ["a", "", "bé", "日本", "", "z" * 256, "0"]
    _check(IdTable.from_ids(ids), ids)


def test_empty_table() -> None:
    table = IdTable.from_ids([])
    _check(table, [])
    assert table.label_of("a") is None
    assert table.labels_of(["a"]).tolist() == [-1]
    assert table.labels_of([]).tolist() == []


def test_ids_of_keeps_shape_and_pads_minus_one_with_empty() -> None:
    table = IdTable.from_ids(["a", "b", "c"])
    out = table.ids_of(np.array([[2, -1], [0, 1]]))
    assert out.shape == (2, 2)
    assert out.tolist() == [["c", ""], ["a", "b"]]


def test_evolve_matches_a_list_and_dict_over_random_folds() -> None:
    rng = random.Random(7)
    ids = [f"id-{i}" for i in range(500)]
    table = IdTable.from_ids(ids)
    for _ in range(40):
        live = [label for label, item in enumerate(ids) if item]
        dead = rng.sample(live, k=min(len(live), rng.randrange(0, 30)))
        rewritten = [ids[label] for label in dead if rng.random() < 0.5]
        fresh = [f"new-{rng.randrange(10**9)}" for _ in range(rng.randrange(0, 40))]
        added = list(dict.fromkeys(rewritten + fresh))
        added = [item for item in added if item not in _reference(ids) or item in rewritten]
        previous = table
        table = table.evolve(dead, added)
        for label in dead:
            ids[label] = ""
        ids.extend(added)
        _check(table, ids)
        assert previous is not table or (not dead and not added)
    assert table.evolve([], []) is table


def test_evolve_leaves_the_old_table_as_it_was() -> None:
    table = IdTable.from_ids(["a", "b"])
    table.evolve([0], ["a", "c"])
    _check(table, ["a", "b"])


def test_a_live_id_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="holds labels"):
        IdTable.from_ids(["a", "b", "a"])
    with pytest.raises(ValueError, match="holds labels"):
        IdTable.from_ids(["a"]).evolve([], ["a"])
    with pytest.raises(ValueError, match="empty"):
        IdTable.from_ids(["a"]).evolve([], [""])


def test_lengths_that_do_not_add_up_are_refused() -> None:
    with pytest.raises(ValueError, match="add up"):
        IdTable.from_lengths(b"abc", np.array([1, 1]))


def test_hash_collisions_never_give_a_wrong_label(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every id hashing alike: lookups fall back to comparing bytes."""
    monkeypatch.setattr(idtable, "hash", lambda _: 42, raising=False)
    ids = ["a", "b", "", "c"]
    table = IdTable.from_ids(ids)
    _check(table, ids)
    table = table.evolve([0], ["d", "a"])
    _check(table, ["", "b", "", "c", "d", "a"])
    with pytest.raises(ValueError, match="holds labels"):
        table.evolve([], ["b"])


def test_memory_per_item_is_small() -> None:
    table = IdTable.from_ids([str(i) for i in range(100_000)])
    assert table.nbytes < 100_000 * 30  # bytes of the ids + 8 (offset) + 16 (hash entry)
