"""Metadata store, filter conversion (proto -> domain tree) and filter compiler (domain tree ->
SQL) on SQLite and the real Postgres, against a Python model."""

from __future__ import annotations

import math
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from core import filters as f
from core import schema
from core.errors import AlreadyExists, InvalidArgument
from core.filters import matches
from core.items import ItemMeta
from core.spec import make_spec
from router.topology import make_engine
from server.convert import filter_from_proto
from server.filters import compile_filter
from server.metadata import MetadataStore
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


def domain(flt: pb.Filter | f.Filter) -> f.Filter:
    return filter_from_proto(flt) if isinstance(flt, pb.Filter) else flt


# Filters as the public API sends them (protos, converted by filter_from_proto) or built as domain
# trees directly; both are compiled by compile_filter.
CASES: list[tuple[str, pb.Filter | f.Filter, Callable[[int], bool]]] = [
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
    ("empty in", cond("tags", **{"in": pb.ValueList()}), lambda i: False),
    ("domain: not of empty any_of", f.Not(f.AnyOf(())), lambda i: True),
    (
        "domain: uri in, or int attribute in",
        f.AnyOf((f.Condition("uri", f.In(("uri-1", "uri-2"))), f.Condition("attributes.n", f.In((3, 4))))),
        lambda i: i in (1, 2, 3, 4),
    ),
    (
        "domain: double range with both bounds, and not a tag",
        f.AllOf(
            (
                f.Condition("attributes.score", f.Range(gte=0.5, lte=0.6)),
                f.Not(f.Condition("tags", f.Eq("five"))),
            )
        ),
        lambda i: 0.5 <= i / N <= 0.6 and i % 5 != 0,
    ),
    ("domain: string eq", f.Condition(f.attribute_field("kind"), f.Eq("c")), lambda i: i % 3 == 2),
]


@pytest.mark.parametrize(("name", "flt", "model"), CASES, ids=[c[0] for c in CASES])
def test_filters_match_the_model(
    store: MetadataStore, name: str, flt: pb.Filter | f.Filter, model: Callable[[int], bool]
) -> None:
    store = loaded(store)
    clause = compile_filter(domain(flt), "c", store.attribute_types("c"))
    expected = {f"i{i}" for i in range(N) if model(i)}
    assert store.count_matching("c", clause) == len(expected)
    assert set(store.ids_matching("c", clause)) == expected
    sample = [f"i{i}" for i in random.Random(1).sample(range(N), 50)]
    assert store.which_match("c", sample, clause) == expected & set(sample)
    # the in-memory evaluator (used on metadata read from the shards) agrees with the SQL
    assert {f"i{i}" for i in range(N) if matches(domain(flt), item(i))} == expected


# (filter, stage at which it is refused: "parse" = filter_from_proto, "compile" = compile_filter,
# the start of the message)
MALFORMED: list[tuple[pb.Filter, str, str]] = [
    (cond("color", eq=V(string_value="x")), "parse", "filter on 'color': unknown field"),
    (
        cond("attributes.missing", eq=V(int_value=1)),
        "compile",
        "filter on 'attributes.missing': no item of this collection has attribute 'missing'",
    ),
    (
        cond("attributes.n", eq=V(string_value="1")),
        "compile",
        "filter on 'attributes.n': value is string, the attribute is int",
    ),
    (
        cond("attributes.n", range=pb.Range(gt=V(double_value=1.0))),
        "compile",
        "filter on 'attributes.n': bound gt is double, the attribute is int",
    ),
    (
        cond("attributes.kind", range=pb.Range(gt=V(string_value="a"))),
        "compile",
        "filter on 'attributes.kind': range needs an int or double attribute, 'kind' is string",
    ),
    (cond("attributes.n", range=pb.Range()), "parse", "filter on 'attributes.n': range has no bound"),
    (cond("tags", eq=V(int_value=1)), "parse", "filter on 'tags': values must be strings, got int"),
    (
        cond("tags", range=pb.Range(gt=V(int_value=1))),
        "parse",
        "filter on 'tags': range applies to int and double attributes only",
    ),
    (cond("tags"), "parse", "filter on 'tags': set one of eq, in, range"),
    (cond("tags", eq=V()), "parse", "filter on 'tags': a value has no type set"),
    (pb.Filter(), "parse", "filter: empty filter"),
]


@pytest.mark.parametrize(("flt", "stage", "message"), MALFORMED, ids=[m[2] for m in MALFORMED])
def test_malformed_filters_are_invalid_argument(store: MetadataStore, flt: pb.Filter, stage: str, message: str) -> None:
    store = loaded(store)
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        compile_filter(filter_from_proto(flt), "c", store.attribute_types("c"))
    if stage == "parse":
        with pytest.raises(InvalidArgument, match=re.escape(message)):
            filter_from_proto(flt)
    else:
        filter_from_proto(flt)  # well formed: only the collection's types refuse it


def nested(levels: int) -> pb.Filter:
    """A condition under ``levels`` alternating not / all_of / any_of wrappers."""
    flt = cond("tags", eq=V(string_value="a"))
    for level in range(levels):
        if level % 3 == 0:
            flt = negate(flt)
        elif level % 3 == 1:
            flt = pb.Filter(all_of=pb.FilterList(filters=[flt]))
        else:
            flt = pb.Filter(any_of=pb.FilterList(filters=[flt]))
    return flt


def test_filter_from_proto_builds_the_domain_tree() -> None:
    flt = pb.Filter(
        all_of=pb.FilterList(
            filters=[
                cond("tags", **{"in": pb.ValueList(values=[V(string_value="a"), V(string_value="b")])}),
                negate(cond("attributes.n", range=pb.Range(gte=V(int_value=-(2**63)), lt=V(int_value=2**63 - 1)))),
                pb.Filter(
                    any_of=pb.FilterList(
                        filters=[
                            cond("attributes.flag", eq=V(bool_value=False)),
                            cond("attributes.x", eq=V(double_value=-0.5)),
                            cond("uri", eq=V(string_value="")),
                        ]
                    )
                ),
            ]
        )
    )
    tree = filter_from_proto(flt)
    assert tree == f.AllOf(
        (
            f.Condition("tags", f.In(("a", "b"))),
            f.Not(f.Condition("attributes.n", f.Range(gte=-(2**63), lt=2**63 - 1))),
            f.AnyOf(
                (
                    f.Condition("attributes.flag", f.Eq(False)),
                    f.Condition("attributes.x", f.Eq(-0.5)),
                    f.Condition("uri", f.Eq("")),
                )
            ),
        )
    )
    assert hash(tree) == hash(filter_from_proto(flt))
    assert (tree.depth(), tree.size()) == (2, 8)
    flag = tree.filters[2]
    assert isinstance(flag, f.AnyOf) and isinstance(flag.filters[0], f.Condition)
    assert flag.filters[0].attribute == "flag" and f.Condition("tags", f.Eq("a")).attribute is None
    value = flag.filters[0].op
    assert isinstance(value, f.Eq) and value.value is False


def test_values_keep_their_type() -> None:
    int_one, double_one, true = (
        filter_from_proto(cond("attributes.a", eq=v)) for v in (V(int_value=1), V(double_value=1.0), V(bool_value=True))
    )
    assert len({int_one, double_one, true}) == 3
    assert int_one != double_one != true != int_one
    conditions = [c for c in (int_one, double_one, true) if isinstance(c, f.Condition)]
    assert [type(c.op.value) for c in conditions if isinstance(c.op, f.Eq)] == [int, float, bool]
    assert f.In((1, 2)) != f.In((True, 2)) and f.In((1, 2)) == f.In((1, 2))
    assert f.Range(gt=1) != f.Range(gt=1.0) and f.Range(gt=1) != f.Range(gte=1)
    assert f.Eq(1) == f.Eq(1) and hash(f.Eq(1)) == hash(f.Eq(1))


def test_depth_limit() -> None:
    assert filter_from_proto(nested(f.MAX_DEPTH)).depth() == f.MAX_DEPTH
    with pytest.raises(InvalidArgument, match=f"filter nested deeper than {f.MAX_DEPTH}"):
        filter_from_proto(nested(f.MAX_DEPTH + 1))
    with pytest.raises(InvalidArgument, match="nested deeper"):  # refused on the way down
        filter_from_proto(nested(50))
    tree: f.Filter = f.Condition("uri", f.Eq("u"))
    for _ in range(f.MAX_DEPTH):
        tree = f.Not(tree)
    assert tree.depth() == f.MAX_DEPTH and tree.size() == f.MAX_DEPTH + 1
    with pytest.raises(InvalidArgument, match="nested deeper"):  # the domain tree refuses it too
        f.AllOf((f.Condition("uri", f.Eq("u")), tree))


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        (cond("attributes.x", eq=V(double_value=math.nan)), "filter on 'attributes.x': NaN is not a filter value"),
        (
            cond("attributes.x", **{"in": pb.ValueList(values=[V(double_value=1.0), V(double_value=-math.nan)])}),
            "NaN is not a filter value",
        ),
        (cond("attributes.x", range=pb.Range(lt=V(double_value=math.nan))), "NaN is not a filter value"),
        (cond("tags", eq=V(double_value=math.nan)), "NaN is not a filter value"),
        (
            cond("tags", **{"in": pb.ValueList(values=[V(string_value=str(i)) for i in range(f.MAX_IN_VALUES + 1)])}),
            f"filter on 'tags': more than {f.MAX_IN_VALUES} values in 'in'",
        ),
        (cond("attributes.n", range=pb.Range(gte=V())), "filter on 'attributes.n': a value has no type set"),
        (
            cond("attributes.n", **{"in": pb.ValueList(values=[V(int_value=1), V()])}),
            "filter on 'attributes.n': a value has no type set",
        ),
        (cond("uri", eq=V(bool_value=True)), "filter on 'uri': values must be strings, got bool"),
        (
            cond("uri", **{"in": pb.ValueList(values=[V(string_value="a"), V(double_value=1.0)])}),
            "filter on 'uri': values must be strings, got double",
        ),
        (cond("uri", range=pb.Range(gte=V(string_value="a"))), "filter on 'uri': range applies to int and double"),
        (cond("attributes", eq=V(int_value=1)), "filter on 'attributes': unknown field"),
        (cond("Tags", eq=V(string_value="a")), "filter on 'Tags': unknown field"),
        (cond("", eq=V(string_value="a")), "filter on '': unknown field"),
        (pb.Filter(all_of=pb.FilterList(filters=[cond("tags", eq=V(string_value="a")), pb.Filter()])), "empty filter"),
        (negate(pb.Filter(any_of=pb.FilterList(filters=[cond("tags")]))), "set one of eq, in, range"),
    ],
)
def test_filter_from_proto_refuses(flt: pb.Filter, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        filter_from_proto(flt)


def test_filter_from_proto_limits_are_inclusive() -> None:
    many = [V(string_value=str(i)) for i in range(f.MAX_IN_VALUES)]
    tree = filter_from_proto(cond("tags", **{"in": pb.ValueList(values=many)}))
    assert isinstance(tree, f.Condition) and isinstance(tree.op, f.In) and len(tree.op.values) == f.MAX_IN_VALUES


def test_the_filter_compiler_needs_no_protobuf() -> None:
    code = (
        "import sys, core.filters, server.filters; "
        "bad = sorted(m for m in sys.modules if m.startswith(('google.protobuf', 'grpc', 'vsproto', 'vectorsearch'))); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


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


def test_an_upgraded_database_keeps_the_index_of_its_older_collections(store: MetadataStore) -> None:
    """A metadata schema of version 3 (before vs_payload_only): migrating adds the table; the
    collections it held keep their SQL item index, new ones are payload-only."""
    store.create_collection(make_spec("old", 4, 3))
    with store.engine.begin() as conn:  # back to what version 3 held (before Alembic)
        schema.payload_only.drop(conn)
        conn.execute(sa.text("DROP TABLE alembic_version"))
        conn.execute(
            schema.schema_version.update().where(schema.schema_version.c.component == schema.METADATA).values(version=3)
        )
    store.migrate()
    with store.engine.connect() as conn:
        version = conn.execute(
            sa.select(schema.schema_version.c.version).where(schema.schema_version.c.component == schema.METADATA)
        ).scalar_one()
    assert version == schema.METADATA_VERSION == 4
    assert store.keeps_index("old")
    store.create_collection(make_spec("new", 4, 3))
    assert not store.keeps_index("new") and store.keeps_index("old")
    assert store.create_collection(make_spec("old", 4, 3))[0] is False and store.keeps_index("old")
    store.drop_collection("new")
    store.create_collection(make_spec("new", 4, 3))
    assert not store.keeps_index("new")
