"""API keys, roles and the audit log of the public server (issue #18; docs/api-keys.md).

``roles.py`` is the table of every RPC's required role and how to read its collection;
``keys.py`` the key store (hashed keys in the metadata database, a refreshed snapshot) and
authentication; ``interceptor.py`` the one server interceptor that applies both and binds the
caller's ``core.principal.Principal``; ``audit.py`` the JSON-lines audit log.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

ADMIN_KEY_ENV = "VS_SERVER_ADMIN_KEY"


def add_arguments(p: argparse.ArgumentParser, env: Callable[[str, str], str]) -> None:
    """``--admin-key-file`` and ``--audit-log`` (the bootstrap key itself only from the
    environment, never a flag: command lines are visible to every user of the machine)."""
    p.add_argument(
        "--admin-key-file",
        default=env("admin_key_file", ""),
        metavar="PATH",
        help=f"a file whose first line is a bootstrap admin API key (at least 16 characters; or the key itself in "
        f"${ADMIN_KEY_ENV}); with one, every call needs a key (docs/api-keys.md)",
    )
    p.add_argument(
        "--audit-log",
        default=env("audit_log", ""),
        metavar="PATH",
        help="append one JSON line per admin or destructive call to PATH ('-': stdout); off when unset",
    )


def bootstrap_key(args: argparse.Namespace) -> str | None:
    """The bootstrap admin key of ``--admin-key-file`` or ``$VS_SERVER_ADMIN_KEY`` (None: none)."""
    from server.auth.keys import load_bootstrap_key

    return load_bootstrap_key(args.admin_key_file, os.environ.get(ADMIN_KEY_ENV, ""))
