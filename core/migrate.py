"""Schema migrations of the metadata database by hand (``core/migrations``).

    python -m core.migrate --database-url URL [upgrade]   # what every server does on start
    python -m core.migrate --database-url URL current     # revision and component versions
    python -m core.migrate --database-url URL stamp REV   # record REV without migrating

``--database-url`` defaults to ``$VS_SERVER_DATABASE_URL``. Exit status 3 when the database is
newer than this code.
"""

from __future__ import annotations

import argparse
import os
import sys

import sqlalchemy as sa

from core import migrations, schema
from core.errors import SchemaTooNew


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.migrate", description=__doc__.split("\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("VS_SERVER_DATABASE_URL"))
    parser.add_argument("action", nargs="?", default="upgrade", choices=["upgrade", "current", "stamp"])
    parser.add_argument("revision", nargs="?", help="stamp: the revision to record (default: head)")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("--database-url (or VS_SERVER_DATABASE_URL) is required")
    engine = schema.make_engine(args.database_url)
    try:
        if args.action == "upgrade":
            migrations.migrate(engine)
        elif args.action == "stamp":
            migrations.stamp(engine, args.revision or "head")
        with engine.connect() as conn:
            revisions = migrations.current_revisions(conn)
            versions: dict[str, int] = {}
            if sa.inspect(conn).has_table(schema.schema_version.name):
                versions = {c: v for c, v in conn.execute(sa.select(schema.schema_version)).all()}
        print(f"revision: {','.join(revisions) or 'none'} (head of this code: {migrations.head()})")
        for component, version in sorted(versions.items()):
            print(f"{component}: version {version} (this code: {schema.COMPONENTS.get(component, '?')})")
        return 0
    except SchemaTooNew as e:
        print(f"refused: {e}", file=sys.stderr)
        return 3
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
