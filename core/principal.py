"""Who is calling: the principal an API key resolves to, bound to the served call.

The authentication interceptor (one place, on the public server) resolves the caller's key to a
:class:`Principal` and binds it with :func:`bind` for the duration of the call's handler; the
rate limiter, the audit log and servicers that filter what they return (ListCollections,
ClusterStatus's shard addresses) read it with :func:`current`. A context variable, so it follows
the handler's thread and never leaks into another call; outside a bound call (or with no keys
configured: the open mode) it is :data:`OPEN`.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


class Role(enum.IntEnum):
    """Ordered: a role may do everything the lower ones may."""

    READ = 1  # search, get, describe and list collections
    WRITE = 2  # + upsert, delete, ingest
    ADMIN = 3  # + collections, compaction, topology, rebalancing, keys, reflection

    @classmethod
    def parse(cls, name: str) -> Role:
        """``read`` / ``write`` / ``admin`` (any case); ValueError otherwise."""
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}: read, write or admin") from None


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``collections`` None = every collection. Rate limits: None = the
    server's defaults (flags)."""

    key_id: str
    role: Role
    collections: frozenset[str] | None = None
    requests_per_s: float | None = None
    items_per_s: float | None = None

    def may(self, role: Role) -> bool:
        return self.role >= role

    def may_access(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections


OPEN = Principal(key_id="open", role=Role.ADMIN)
"""The caller when no keys are configured: everything is allowed, as before keys existed."""

_current: ContextVar[Principal] = ContextVar("vs_principal", default=OPEN)


def current() -> Principal:
    """The principal of the call being served (:data:`OPEN` outside one)."""
    return _current.get()


@contextlib.contextmanager
def bind(principal: Principal) -> Iterator[Principal]:
    """Makes ``principal`` :func:`current` inside the block (the call's handler)."""
    token = _current.set(principal)
    try:
        yield principal
    finally:
        _current.reset(token)
