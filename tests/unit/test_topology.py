"""Topology store on SQLite and on the real Postgres: versioning, shard changes, schema guard."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from core.errors import SchemaTooNew
from router import topology as topo
from router.topology import TopologyStore, make_engine
from tests.pg import fresh_schema_url


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> TopologyStore:
    url = f"sqlite:///{tmp_path / 'meta.db'}" if request.param == "sqlite" else fresh_schema_url()
    result = TopologyStore(make_engine(url))
    result.migrate()
    result.migrate()  # idempotent
    return result


def test_shard_changes_bump_the_ring_version(store: TopologyStore) -> None:
    assert store.load().ring_version == 0 and store.load().shards == ()
    t1 = store.put_shard("s0", "127.0.0.1:7001")
    t2 = store.put_shard("s1", "127.0.0.1:7002", 2.0)
    assert (t1.ring_version, t2.ring_version) == (1, 2)
    assert store.put_shard("s1", "127.0.0.1:7002", 2.0).ring_version == 2  # no change, no bump
    t3 = store.put_shard("s1", "127.0.0.1:7003", 2.0)
    assert t3.ring_version == 3 and t3.address_of("s1") == "127.0.0.1:7003"
    ring = t3.ring()
    assert ring.version == 3 and set(ring.shards) == {"s0", "s1"}
    t4 = store.remove_shard("s0")
    assert t4.ring_version == 4 and [s.shard_id for s in t4.shards] == ["s1"]
    assert store.remove_shard("nope").ring_version == 4
    with pytest.raises(ValueError):
        store.put_shard("s2", "x", 0)


def test_refuses_a_newer_schema(store: TopologyStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            topo.schema_version.update()
            .where(topo.schema_version.c.component == topo.COMPONENT)
            .values(version=topo.SCHEMA_VERSION + 1)
        )
    with pytest.raises(SchemaTooNew):
        store.migrate()


def test_two_stores_on_one_database_agree(store: TopologyStore) -> None:
    other = TopologyStore(store.engine)
    store.put_shard("a", "h:1")
    assert other.load() == store.load()
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(topo.shards)).scalar() == 1
