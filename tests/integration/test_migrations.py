"""Schema migrations (core/migrations, Alembic) on SQLite and on the real Postgres: a fresh
database upgraded to head holds exactly ``core.schema.metadata``; a database made before
migrations is stamped and upgraded without losing rows; a newer one is refused; migrating twice,
or from two threads at once, is one migration."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from core import migrations, schema
from core.errors import SchemaTooNew
from router.topology import TopologyStore
from server.metadata import MetadataStore
from tests.pg import fresh_schema_url

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'meta.db'}" if request.param == "sqlite" else fresh_schema_url()


def _engine(url: str) -> Engine:
    return schema.make_engine(url)


def _shape(engine: Engine) -> dict[str, Any]:
    """Every vs_ table's columns (name, type, nullability), primary key and indexes."""
    result: dict[str, Any] = {}
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        for table in sorted(inspector.get_table_names()):
            if table == migrations.ALEMBIC_VERSION_TABLE:
                continue
            columns = [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)]
            pk = inspector.get_pk_constraint(table)["constrained_columns"]
            indexes = sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)
            )
            result[table] = (columns, pk, indexes)
    return result


def _reference_shape(url: str) -> dict[str, Any]:
    """The shape ``core.schema.metadata.create_all`` makes, on a fresh database of ``url``'s kind."""
    ref_url = url.replace("meta.db", "reference.db") if url.startswith("sqlite") else fresh_schema_url()
    engine = _engine(ref_url)
    try:
        schema.metadata.create_all(engine)
        return _shape(engine)
    finally:
        engine.dispose()


def _rows(engine: Engine, table: sa.Table) -> list[Any]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(table)).all()]


def _legacy_database(engine: Engine) -> None:
    """What the code before migrations did on start: create_all and a version row per component."""
    with engine.begin() as conn:
        for component, version in schema.COMPONENTS.items():
            schema.migrate_component(conn, component, version)
        conn.execute(schema.cluster.insert().values(singleton=1, ring_version=3))
        conn.execute(schema.collections.insert().values(name="c", spec='{"name": "c"}'))
        conn.execute(schema.shards.insert().values(shard_id="s0", address="127.0.0.1:7001", weight=1.0))
        conn.execute(schema.items.insert().values(collection="c", item_id="i1", uri="u"))


def test_a_fresh_database_upgraded_to_head_is_the_schema(url: str) -> None:
    engine = _engine(url)
    migrations.migrate(engine)
    with engine.connect() as conn:
        assert migrations.current_revisions(conn) == (migrations.head(),)
        assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
        assert dict(conn.execute(sa.select(schema.schema_version)).all()) == schema.COMPONENTS
    shape = _shape(engine)
    assert set(shape) == set(schema.metadata.tables)
    assert shape == _reference_shape(url)
    engine.dispose()


def test_head_revision_is_alembics_head() -> None:
    assert migrations.head() == schema.HEAD_REVISION


def test_an_empty_or_current_database_is_migrated_without_alembic(url: str) -> None:
    """``schema.migrate`` gives an empty database exactly what the revisions make (stamped at
    head), and leaves a current one alone, without importing Alembic; Alembic then agrees."""
    probe = (
        "import sys\n"
        "from core import schema\n"
        f"engine = schema.make_engine({url!r})\n"
        "schema.migrate(engine)\n"
        "print('alembic loaded' if 'alembic' in sys.modules else 'no alembic')\n"
    )
    for _ in range(2):  # empty, then current
        done = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False, cwd=REPO
        )
        assert done.returncode == 0 and done.stdout.strip() == "no alembic", done.stderr
    engine = _engine(url)
    with engine.connect() as conn:
        assert migrations.current_revisions(conn) == (migrations.head(),)
        assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []
        assert dict(conn.execute(sa.select(schema.schema_version)).all()) == schema.COMPONENTS
    assert _rows(engine, schema.cluster) == [(1, 0)]
    assert _shape(engine) == _reference_shape(url)
    shape = _shape(engine)
    migrations.migrate(engine)  # Alembic's path: nothing to do
    assert _shape(engine) == shape
    engine.dispose()


def test_migrating_twice_is_a_no_op(url: str) -> None:
    engine = _engine(url)
    TopologyStore(engine).migrate()
    MetadataStore(engine).migrate()
    shape = _shape(engine)
    with engine.begin() as conn:
        conn.execute(schema.shards.insert().values(shard_id="s0", address="a:1", weight=1.0))
    TopologyStore(engine).migrate()
    migrations.migrate(engine)
    assert _shape(engine) == shape
    assert _rows(engine, schema.shards) == [("s0", "a:1", 1.0)]
    assert _rows(engine, schema.cluster) == [(1, 0)]
    with engine.connect() as conn:
        assert migrations.current_revisions(conn) == (migrations.head(),)
    engine.dispose()


def test_a_database_from_before_migrations_is_stamped_and_keeps_its_rows(url: str) -> None:
    engine = _engine(url)
    _legacy_database(engine)
    with engine.begin() as conn:  # an older one still: version 3 of metadata, before vs_payload_only
        schema.payload_only.drop(conn)
        conn.execute(
            schema.schema_version.update().where(schema.schema_version.c.component == schema.METADATA).values(version=3)
        )
    with engine.connect() as conn:
        assert migrations.current_revisions(conn) == ()
    TopologyStore(engine).migrate()
    MetadataStore(engine).migrate()
    with engine.connect() as conn:
        assert migrations.current_revisions(conn) == (migrations.head(),)
        assert dict(conn.execute(sa.select(schema.schema_version)).all()) == schema.COMPONENTS
    assert _rows(engine, schema.collections) == [("c", '{"name": "c"}')]
    assert _rows(engine, schema.shards) == [("s0", "127.0.0.1:7001", 1.0)]
    assert _rows(engine, schema.items) == [("c", "i1", "u")]
    assert _rows(engine, schema.cluster) == [(1, 3)]
    assert _shape(engine) == _reference_shape(url)
    assert MetadataStore(engine).keeps_index("c")  # made before payloads: keeps its SQL index
    engine.dispose()


def test_a_database_at_the_baseline_revision_upgrades_to_api_keys(url: str) -> None:
    """A database a server of revision 0001 made (before API keys) gets ``vs_api_keys`` and the
    ``auth`` component, keeps its rows, and takes keys afterwards."""
    engine = _engine(url)
    with migrations.locked(engine) as conn:
        command.upgrade(migrations.config(conn), "0001")
        for component in (schema.TOPOLOGY, schema.METADATA):
            conn.execute(
                schema.schema_version.insert().values(component=component, version=schema.COMPONENTS[component])
            )
        conn.execute(schema.cluster.insert().values(singleton=1, ring_version=5))
        conn.execute(schema.collections.insert().values(name="c", spec='{"name": "c"}'))
    with engine.connect() as conn:
        assert migrations.current_revisions(conn) == ("0001",)
        assert not sa.inspect(conn).has_table(schema.api_keys.name)
    MetadataStore(engine).migrate()
    with engine.connect() as conn:
        assert migrations.current_revisions(conn) == (migrations.head(),) == ("0002",)
        assert dict(conn.execute(sa.select(schema.schema_version)).all()) == schema.COMPONENTS
    assert _rows(engine, schema.collections) == [("c", '{"name": "c"}')]
    assert _rows(engine, schema.cluster) == [(1, 5)]
    assert _shape(engine) == _reference_shape(url)
    with engine.begin() as conn:
        conn.execute(
            schema.api_keys.insert().values(
                id="k1", name="n", secret_sha256="0" * 64, role="read", collections=None, created_at=1.0
            )
        )
    assert _rows(engine, schema.api_keys) == [("k1", "n", "0" * 64, "read", None, None, None, 1.0, None)]
    engine.dispose()


def test_a_newer_database_is_refused(url: str) -> None:
    engine = _engine(url)
    migrations.migrate(engine)
    with engine.begin() as conn:
        conn.execute(
            schema.schema_version.update()
            .where(schema.schema_version.c.component == schema.TOPOLOGY)
            .values(version=schema.TOPOLOGY_VERSION + 1)
        )
    with pytest.raises(SchemaTooNew):
        TopologyStore(engine).migrate()
    with engine.begin() as conn:  # versions known, but a revision this code does not have
        conn.execute(schema.schema_version.update().values(version=1))
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff_from_the_future'"))
    with pytest.raises(SchemaTooNew):
        MetadataStore(engine).migrate()
    with engine.connect() as conn:
        assert migrations.current_revisions(conn) == ("ffff_from_the_future",)
    engine.dispose()


def test_concurrent_migrations_make_one_schema(url: str) -> None:
    engines = [_engine(url) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def run(engine: Engine) -> None:
        try:
            barrier.wait()
            TopologyStore(engine).migrate()
            MetadataStore(engine).migrate()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    engine = engines[0]
    with engine.connect() as conn:
        assert migrations.current_revisions(conn) == (migrations.head(),)
        assert conn.execute(sa.select(sa.func.count()).select_from(sa.table("alembic_version"))).scalar() == 1
        assert dict(conn.execute(sa.select(schema.schema_version)).all()) == schema.COMPONENTS
    assert _rows(engine, schema.cluster) == [(1, 0)]
    assert _shape(engine) == _reference_shape(url)
    for e in engines:
        e.dispose()


def test_the_command(url: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "core.migrate", "--database-url", url, *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    done = cli("current")
    assert done.returncode == 0 and "revision: none" in done.stdout, done.stderr
    done = cli("upgrade")
    assert done.returncode == 0 and f"revision: {migrations.head()}" in done.stdout, done.stderr
    assert "topology: version 2" in done.stdout and "metadata: version 4" in done.stdout
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(schema.schema_version.update().values(version=99))
    engine.dispose()
    done = cli("upgrade")
    assert done.returncode == 3 and "refused" in done.stderr
