"""Metadata store and filter compiler on SQLite and the real Postgres, against a Python model."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from core.errors import AlreadyExists, InvalidArgument
from core.spec import make_spec
from router.topology import make_engine
from server.filters import compile_filter
from server.metadata import ItemMeta, MetadataStore
from tests.pg import fresh_schema_url
from vsproto.v1 import search_service_pb2 as pb

V = pb.AttributeValue
N = 400


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> MetadataStore:
    url = f"sqlite:///{tmp_path / 'meta.db'}" if request.param == "sqlite" else fresh_schema_url()
    result = MetadataStore(make_engine(url))
    result.migrate()
    return result


def item(i: int) -> ItemMeta:
    attributes: dict[str, str | int | float | bool] = {"n": i, "score": i / N, "kind": ["a", "b", "c"][i % 3]}
    if i % 2:
        attributes["flag"] = i % 4 == 1
    return ItemMeta(f"uri-{i}", [t for t, every in (("ten", 10), ("five", 5)) if i % every == 0], attributes)


def loaded(store: MetadataStore) -> MetadataStore:
    store.create_collection(make_spec("c", 4, 3))
    batch = [(f"i{i}", item(i)) for i in range(N)]
    store.upsert("c", batch, store.check_types("c", batch))
    return store


def cond(field: str, **op: object) -> pb.Filter:
    return pb.Filter(condition=pb.Condition(field=field, **op))  # type: ignore[arg-type]


def negate(inner: pb.Filter) -> pb.Filter:
    out = pb.Filter()
    getattr(out, "not").CopyFrom(inner)
    return out


CASES: list[tuple[str, pb.Filter, Callable[[int], bool]]] = [
    ("tag eq", cond("tags", eq=V(string_value="ten")), lambda i: i % 10 == 0),
    (
        "tag in",
        cond("tags", **{"in": pb.ValueList(values=[V(string_value="ten"), V(string_value="five")])}),
        lambda i: i % 5 == 0,
    ),
    ("uri eq", cond("uri", eq=V(string_value="uri-7")), lambda i: i == 7),
    (
        "int range",
        cond("attributes.n", range=pb.Range(gte=V(int_value=100), lt=V(int_value=150))),
        lambda i: 100 <= i < 150,
    ),
    ("double range", cond("attributes.score", range=pb.Range(gt=V(double_value=0.9))), lambda i: i / N > 0.9),
    (
        "string in",
        cond("attributes.kind", **{"in": pb.ValueList(values=[V(string_value="a"), V(string_value="c")])}),
        lambda i: i % 3 in (0, 2),
    ),
    ("bool eq", cond("attributes.flag", eq=V(bool_value=True)), lambda i: i % 4 == 1),
    (
        "not bool (missing attr matches the negation)",
        negate(cond("attributes.flag", eq=V(bool_value=True))),
        lambda i: i % 4 != 1,
    ),
    (
        "all_of",
        pb.Filter(
            all_of=pb.FilterList(
                filters=[cond("tags", eq=V(string_value="five")), cond("attributes.kind", eq=V(string_value="b"))]
            )
        ),
        lambda i: i % 5 == 0 and i % 3 == 1,
    ),
    (
        "any_of",
        pb.Filter(
            any_of=pb.FilterList(
                filters=[cond("tags", eq=V(string_value="ten")), cond("attributes.n", eq=V(int_value=3))]
            )
        ),
        lambda i: i % 10 == 0 or i == 3,
    ),
    ("empty all_of", pb.Filter(all_of=pb.FilterList()), lambda i: True),
    ("empty any_of", pb.Filter(any_of=pb.FilterList()), lambda i: False),
]


@pytest.mark.parametrize(("name", "flt", "model"), CASES, ids=[c[0] for c in CASES])
def test_filters_match_the_model(store: MetadataStore, name: str, flt: pb.Filter, model: Callable[[int], bool]) -> None:
    store = loaded(store)
    clause = compile_filter(flt, "c", store.attribute_types("c"))
    expected = {f"i{i}" for i in range(N) if model(i)}
    assert store.count_matching("c", clause) == len(expected)
    assert set(store.ids_matching("c", clause)) == expected
    sample = [f"i{i}" for i in random.Random(1).sample(range(N), 50)]
    assert store.which_match("c", sample, clause) == expected & set(sample)


@pytest.mark.parametrize(
    "flt",
    [
        cond("color", eq=V(string_value="x")),
        cond("attributes.missing", eq=V(int_value=1)),
        cond("attributes.n", eq=V(string_value="1")),
        cond("attributes.n", range=pb.Range(gt=V(double_value=1.0))),
        cond("attributes.kind", range=pb.Range(gt=V(string_value="a"))),
        cond("attributes.n", range=pb.Range()),
        cond("tags", eq=V(int_value=1)),
        cond("tags", range=pb.Range(gt=V(int_value=1))),
        cond("tags"),
        cond("tags", eq=V()),
        pb.Filter(),
    ],
)
def test_malformed_filters_are_invalid_argument(store: MetadataStore, flt: pb.Filter) -> None:
    store = loaded(store)
    with pytest.raises(InvalidArgument):
        compile_filter(flt, "c", store.attribute_types("c"))


def test_metadata_round_trip_types_and_collections(store: MetadataStore) -> None:
    store = loaded(store)
    fetched = store.fetch("c", ["i5", "i10", "nope"])
    assert set(fetched) == {"i5", "i10"}
    assert fetched["i10"] == ItemMeta("uri-10", ["five", "ten"], {"n": 10, "score": 10 / N, "kind": "b"})
    assert fetched["i5"].attributes["flag"] is True
    with pytest.raises(InvalidArgument, match="stores it as int"):
        store.check_types("c", [("x", ItemMeta(attributes={"n": "text"}))])
    with pytest.raises(InvalidArgument):
        store.check_types("c", [("x", ItemMeta(tags=[""]))])
    assert store.create_collection(make_spec("c", 4, 3))[0] is False
    with pytest.raises(AlreadyExists):
        store.create_collection(make_spec("c", 5, 3))
    store.delete("c", ["i5"])
    assert store.count("c") == N - 1
    assert store.drop_collection("c") is True
    assert store.count("c") == 0 and store.list_collections() == []


def test_upsert_replaces_metadata_in_collections_with_and_without_tags(store: MetadataStore) -> None:
    store.create_collection(make_spec("plain", 4, 3))
    plain = [(f"p{i}", ItemMeta(uri=f"u{i}")) for i in range(5)]
    store.upsert("plain", plain, store.check_types("plain", plain))
    again = [("p1", ItemMeta()), ("p9", ItemMeta(uri="new"))]
    store.upsert("plain", again, store.check_types("plain", again))
    assert store.count("plain") == 6
    assert store.fetch("plain", ["p1", "p2", "p9"]) == {"p1": ItemMeta(), "p2": ItemMeta("u2"), "p9": ItemMeta("new")}
    store = loaded(store)  # collection "c": tags and attributes on its items
    before = store.fetch("c", ["i10", "i11"])
    replaced = [("i10", ItemMeta(uri="x")), ("i11", ItemMeta(tags=["t"], attributes={"n": -1}))]
    store.upsert("c", replaced, store.check_types("c", replaced))
    after = store.fetch("c", ["i10", "i11", "i12"])
    assert after["i10"] == ItemMeta("x") and after["i11"] == ItemMeta("", ["t"], {"n": -1})
    assert after["i12"] == item(12) and before["i10"] != after["i10"]
    assert store.count("c") == N
