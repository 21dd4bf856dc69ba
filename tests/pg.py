"""The real Postgres the tests use (127.0.0.1:5432, trust auth, database ``test``).

``postgres_url()`` starts the local cluster if it is down and returns a SQLAlchemy URL whose
connections use a fresh schema, so tests never see each other's tables.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import sqlalchemy as sa

BASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def ensure_running(timeout: float = 30.0) -> None:
    engine = sa.create_engine(BASE_URL)
    deadline = time.monotonic() + timeout
    started = False
    while True:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
            engine.dispose()
            return
        except sa.exc.OperationalError:
            if not started:
                subprocess.run(
                    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -1) main start",
                    shell=True,
                    check=False,
                )
                started = True
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def fresh_schema_url() -> str:
    """Creates a new schema and returns a URL whose connections use it (search_path)."""
    ensure_running()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(BASE_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    return f"{BASE_URL}?options=-csearch_path%3D{schema}"
