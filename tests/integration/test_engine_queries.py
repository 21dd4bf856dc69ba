"""Metadata reads per search are batched: the number of SQL statements a search issues does
not depend on how many hits it returns (real shard process, real Postgres)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from core import schema
from core.errors import FailedPrecondition, InvalidArgument
from core.filters import AllOf, Condition, Eq, Filter, Range
from core.items import ItemMeta
from core.spec import make_spec
from core.vectors import prepare_batch, prepare_queries
from router.fanout import Router
from router.topology import TopologyStore, make_engine
from server.convert import filter_from_proto
from server.engine import Engine
from server.metadata import MetadataStore
from server.query import PLAN_LEGACY_SQL, SearchQuery, SearchResult, VectorTarget
from testkit.shardproc import ShardProcess
from tests.pg import fresh_schema_url
from vsproto.v1 import search_service_pb2 as pb


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    proc = ShardProcess(tmp_path / "shard")
    proc.start()
    db = make_engine(fresh_schema_url())
    topology = TopologyStore(db)
    topology.migrate()
    topology.put_shard("s0", proc.address)
    metadata = MetadataStore(db)
    metadata.migrate()
    router = Router.connect(topology.load())
    yield Engine(metadata, router)
    router.close()
    proc.kill()


def test_statements_per_search_do_not_grow_with_hits(engine: Engine) -> None:
    engine.create_collection(make_spec("c", 8, 3))
    data = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    ids = [f"i{i}" for i in range(300)]
    metas = [ItemMeta(f"u{i}", ["a", "b"], {"n": i, "x": float(i)}) for i in range(300)]
    assert engine.upsert("c", ids, data, metas) == 300
    statements: list[str] = []

    @sa.event.listens_for(engine.metadata.engine, "before_cursor_execute")
    def count(_conn, _cursor, statement, _params, _context, _many) -> None:
        statements.append(statement)

    counts = {}
    tag = filter_from_proto(pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value="a"))))
    for k in (1, 50):
        for flt in (None, tag):
            statements.clear()
            query = SearchQuery("c", VectorTarget(data[:5]), k, 0, flt, include_metadata=True)
            result = engine.search(query)
            assert all(len(row) == k for row in result.hits)
            assert all(result.metadata[h.id].uri == f"u{h.id[1:]}" for row in result.hits for h in row)
            counts[(k, flt is not None)] = len(statements)
    assert counts[(1, False)] == counts[(50, False)] <= 2, counts  # spec lookup + one metadata read
    # a filtered search is planned on the shards: SQL only reads the attribute types, once (cached)
    assert counts[(1, True)] <= 1 and counts[(50, True)] == 0, counts


class GoneContext:
    """A served call whose client has gone (cancelled, or past its deadline)."""

    def is_active(self) -> bool:
        return False


def keep_sql_index(engine: Engine, collection: str) -> None:
    """Makes ``collection`` one created before payload-only collections (it keeps the SQL item
    index), as an upgraded database holds them; before its first write."""
    with engine.metadata.engine.begin() as conn:
        conn.execute(schema.payload_only.delete().where(schema.payload_only.c.collection == collection))


def test_work_stops_when_the_caller_has_gone(engine: Engine) -> None:
    from core import calls
    from core.errors import Cancelled, DeadlineExceeded

    engine.create_collection(make_spec("c", 4, 3))
    keep_sql_index(engine, "c")  # markers and the SQL planner exist only there
    rows = np.eye(4, dtype=np.float32)
    with calls.serving(GoneContext()), pytest.raises(Cancelled, match="shard write"):
        engine.upsert("c", ["a", "b", "c", "d"], rows, [ItemMeta() for _ in range(4)])
    vectors, _ = engine.get("c", ["a"])
    assert not vectors, "a cancelled write reached the shards"
    assert engine.metadata.pending(0) == [], "and left no marker"
    engine.upsert("c", ["a", "b", "c", "d"], rows, [ItemMeta(tags=["t"]) for _ in range(4)])
    flt = filter_from_proto(pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value="t"))))
    query = SearchQuery("c", VectorTarget(rows[:1]), k=2, filter=flt)
    with calls.serving(GoneContext()), pytest.raises(Cancelled):
        engine.search(query)
    queries = prepare_queries(rows[:1], engine.spec("c"))
    with pytest.raises(DeadlineExceeded, match="deadline passed before"):  # no time left for a round trip
        engine._filtered(query, queries, 2, deadline=time.monotonic() - 0.001)
    assert len(engine.search(query).hits[0]) == 2  # the same search, served normally


def test_filtered_search_is_planned_by_the_shards_and_by_sql_while_legacy_items_remain(engine: Engine) -> None:
    engine.create_collection(make_spec("c", 8, 3))
    keep_sql_index(engine, "c")
    data = np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32)
    ids = [f"i{i}" for i in range(200)]
    metas = [ItemMeta(f"u{i}", ["even"] if i % 2 == 0 else [], {"n": i}) for i in range(200)]
    engine.upsert("c", ids, data, metas)
    small = AllOf((Condition("tags", Eq("even")), Condition("attributes.n", Range(lt=20))))
    expected = {f"i{i}" for i in range(0, 20, 2)}

    def search(node: Filter) -> SearchResult:
        return engine.search(SearchQuery("c", VectorTarget(data[:3]), 20, 0, node, explain=True))

    result = search(small)
    assert all({h.id for h in row} == expected for row in result.hits)
    assert result.explain is not None and result.explain.plan == "exact" and result.explain.matched == 10
    assert list(result.explain.shards) == ["s0"] and result.explain.shards["s0"].matched == 10
    nothing = search(Condition("attributes.n", Eq(5000)))
    assert nothing.hits == [[], [], []] and nothing.explain is not None and nothing.explain.plan == "empty"
    with pytest.raises(InvalidArgument, match="attribute 'missing'"):
        search(Condition("attributes.missing", Eq(1)))
    with pytest.raises(InvalidArgument, match="the attribute is int"):
        search(Condition("attributes.n", Eq("5")))

    # An item written straight to the shard without a payload (as before payloads existed): the
    # shard cannot judge it, so the server plans on its SQL index, and says so.
    shard = engine.router.shards["s0"]
    spec = engine.spec("c")
    shard.upsert("c", prepare_batch(["old"], data[:1], spec))
    legacy = search(small)
    assert all({h.id for h in row} == expected for row in legacy.hits)
    assert legacy.explain is not None and legacy.explain.plan == PLAN_LEGACY_SQL and legacy.explain.matched == 10
    engine.delete("c", ["old"])
    again = search(small)
    assert again.explain is not None and again.explain.plan == "exact"


def test_a_new_collection_keeps_no_sql_item_index(engine: Engine) -> None:
    """Created since metadata travels in shard payloads: writes touch SQL only to fix new attribute
    types; the shards filter, and Get reads metadata from the payloads."""
    engine.create_collection(make_spec("c", 8, 3))
    assert not engine.metadata.keeps_index("c")
    data = np.random.default_rng(2).standard_normal((50, 8)).astype(np.float32)
    metas = [ItemMeta(f"u{i}", ["odd"] if i % 2 else [], {"n": i}) for i in range(50)]
    engine.upsert("c", [f"i{i}" for i in range(50)], data, metas)
    engine.delete("c", ["i1", "i2"])
    with engine.metadata.engine.connect() as conn:
        for table in (schema.items, schema.item_tags, schema.item_attrs, schema.pending_writes):
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0, table.name
    assert engine.metadata.attribute_types("c") == {"n": "i"}
    with pytest.raises(InvalidArgument, match="'n'"):  # the type stays fixed by the first write
        engine.upsert("c", ["x"], data[:1], [ItemMeta(attributes={"n": "text"})])
    odd = engine.search(SearchQuery("c", VectorTarget(data[:2]), 50, 0, Condition("tags", Eq("odd")), explain=True))
    assert all({h.id for h in row} == {f"i{i}" for i in range(3, 50, 2)} for row in odd.hits)
    _, got = engine.get("c", ["i3", "i1"])
    assert got == {"i3": metas[3]}
    # A shard item without a payload (written around the server) cannot be judged, and there is
    # no SQL index to plan on: the search says so instead of guessing.
    engine.router.shards["s0"].upsert("c", prepare_batch(["bare"], data[:1], engine.spec("c")))
    with pytest.raises(FailedPrecondition, match="without metadata"):
        engine.search(SearchQuery("c", VectorTarget(data[:1]), 5, 0, Condition("tags", Eq("odd"))))
