"""Cluster topology (shards, addresses, weights, states, ring version, rebalances) in the
metadata database.

Routers are stateless: every router reads the topology from here, so any number can run
behind a load balancer. The tables (``vs_cluster``, ``vs_shards``), their versioning and
``make_engine`` live in ``core/schema.py`` (re-exported here); ``TopologyStore.migrate``
migrates the database (``core/migrations``) and refuses one whose schema is newer than the code.

Contract: every change to the shard set, a shard's state or the running rebalance's phase that
routers must act on bumps ``ring_version`` in the same transaction, so a reader that sees a
version sees exactly the topology it names. The ring routers write with holds the shards that
are ``active`` or ``draining``; ``joining`` and ``drained`` shards are known (collections are
created and dropped on them) but own no ids. Rebalance rows change only by compare-and-set on
their state and lease (``update_rebalance``), so any number of servers agree on them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from core import schema
from core.errors import AlreadyExists, FailedPrecondition, NotFound
from core.schema import cluster as cluster
from core.schema import make_engine as make_engine
from core.schema import metadata as metadata
from core.schema import migrate_component as migrate_component
from core.schema import rebalances as rebalances
from core.schema import schema_version as schema_version
from core.schema import shard_states as shard_states
from core.schema import shards as shards
from router.ring import HashRing, ShardNode

COMPONENT = schema.TOPOLOGY
SCHEMA_VERSION = schema.TOPOLOGY_VERSION


ACTIVE, JOINING, DRAINING, DRAINED = "active", "joining", "draining", "drained"
SHARD_STATES = (ACTIVE, JOINING, DRAINING, DRAINED)
ON_RING = (ACTIVE, DRAINING)


@dataclass(frozen=True)
class ShardInfo:
    shard_id: str
    address: str
    weight: float
    state: str = ACTIVE


@dataclass(frozen=True)
class RebalanceRow:
    """A persisted rebalance (``vs_rebalances``); ``progress`` is the coordinator's JSON state."""

    id: int
    kind: str
    state: str
    finished: bool
    shard_id: str
    from_version: int
    to_version: int
    old_ring: dict[str, Any]
    new_ring: dict[str, Any]
    progress: dict[str, Any]
    error: str
    abort_requested: bool
    started_at: float
    updated_at: float
    lease_owner: str
    lease_until: float


@dataclass(frozen=True)
class Topology:
    ring_version: int
    shards: tuple[ShardInfo, ...]
    # The running (unfinished) rebalance: (id, state); None when there is none.
    rebalance: tuple[int, str] | None = field(default=None)

    @property
    def moving(self) -> bool:
        """A rebalance is under way: shards may hold copies of ids they do not own, so a search
        keeps only hits from each id's owner."""
        return self.rebalance is not None

    def ring(self, vnodes_per_weight: int | None = None) -> HashRing:
        """The ring writes and reads follow: the ``active`` and ``draining`` shards."""
        nodes = [ShardNode(s.shard_id, s.weight) for s in self.shards if s.state in ON_RING]
        if vnodes_per_weight is None:
            return HashRing(nodes, version=self.ring_version)
        return HashRing(nodes, vnodes_per_weight=vnodes_per_weight, version=self.ring_version)

    def address_of(self, shard_id: str) -> str:
        for shard in self.shards:
            if shard.shard_id == shard_id:
                return shard.address
        raise KeyError(shard_id)


class TopologyStore:
    """Reads and changes the topology. Thread-safe (each call uses its own transaction)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def migrate(self) -> None:
        """Migrates the database (``core.schema.migrate``; idempotent), which also creates the
        ring version row."""
        schema.migrate(self.engine)

    def load(self) -> Topology:
        with self.engine.connect() as conn:
            return self._load(conn)

    @staticmethod
    def _load(conn: sa.Connection) -> Topology:
        version = conn.execute(sa.select(cluster.c.ring_version)).scalar() or 0
        rows = conn.execute(sa.select(shards).order_by(shards.c.shard_id)).all()
        states = {r.shard_id: r.state for r in conn.execute(sa.select(shard_states)).all()}
        running = conn.execute(
            sa.select(rebalances.c.id, rebalances.c.state).where(rebalances.c.finished.is_(False))
        ).first()
        return Topology(
            int(version),
            tuple(ShardInfo(r.shard_id, r.address, float(r.weight), states.get(r.shard_id, ACTIVE)) for r in rows),
            (int(running.id), str(running.state)) if running is not None else None,
        )

    @staticmethod
    def _bump(conn: sa.Connection) -> None:
        conn.execute(cluster.update().values(ring_version=cluster.c.ring_version + 1))

    def put_shard(self, shard_id: str, address: str, weight: float | None = None) -> Topology:
        """Adds an active shard (weight 1.0 unless given), or updates a known shard's address
        (and its weight, when given); bumps the ring version if anything changed. A new shard
        or a new weight while a rebalance runs is FailedPrecondition (it would change the rings
        the rebalance moves between). Only for shards that hold no ids yet, or to follow a
        shard to a new address: a shard added here to a ring that holds data owns ids at once
        without holding them (``Rebalancer.add_shard`` moves them)."""
        if not shard_id or (weight is not None and weight <= 0):
            raise ValueError("a shard needs a non-empty id and a positive weight")
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(shards).where(shards.c.shard_id == shard_id)).first()
            new_weight = weight if weight is not None else (float(row.weight) if row is not None else 1.0)
            if row is not None and row.address == address and float(row.weight) == new_weight:
                pass
            else:
                if (row is None or float(row.weight) != new_weight) and self._running_id(conn) is not None:
                    raise FailedPrecondition(
                        f"a rebalance is running: shard {shard_id!r} cannot join or change weight until it ends"
                    )
                if row is None:
                    conn.execute(shards.insert().values(shard_id=shard_id, address=address, weight=new_weight))
                else:
                    conn.execute(
                        shards.update().where(shards.c.shard_id == shard_id).values(address=address, weight=new_weight)
                    )
                self._bump(conn)
        return self.load()

    def remove_shard(self, shard_id: str) -> Topology:
        with self.engine.begin() as conn:
            deleted = conn.execute(shards.delete().where(shards.c.shard_id == shard_id)).rowcount
            conn.execute(shard_states.delete().where(shard_states.c.shard_id == shard_id))
            if deleted:
                self._bump(conn)
        return self.load()

    def bump(self) -> int:
        """Raises the ring version (routers reload) and returns the new one."""
        with self.engine.begin() as conn:
            self._bump(conn)
            return int(conn.execute(sa.select(cluster.c.ring_version)).scalar() or 0)

    def add_joining(self, info: ShardInfo) -> Topology:
        """Registers a shard as joining (known, not on the ring: a later rebalance moves its
        share to it). AlreadyExists when the id is taken."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(shards.c.shard_id).where(shards.c.shard_id == info.shard_id)).first():
                raise AlreadyExists(f"shard {info.shard_id!r} is already in the topology")
            conn.execute(shards.insert().values(shard_id=info.shard_id, address=info.address, weight=info.weight))
            self._set_state(conn, info.shard_id, JOINING)
            self._bump(conn)
        return self.load()

    # ------------------------------------------------------------------ shard states
    @staticmethod
    def _set_state(conn: sa.Connection, shard_id: str, state: str) -> None:
        conn.execute(shard_states.delete().where(shard_states.c.shard_id == shard_id))
        if state != ACTIVE:
            conn.execute(shard_states.insert().values(shard_id=shard_id, state=state))

    @staticmethod
    def _running_id(conn: sa.Connection) -> int | None:
        found = conn.execute(sa.select(rebalances.c.id).where(rebalances.c.finished.is_(False))).scalar()
        return None if found is None else int(found)

    # ------------------------------------------------------------------ rebalances
    def start_rebalance(
        self,
        kind: str,
        shard_id: str,
        expect_version: int,
        old_ring: HashRing,
        new_ring: HashRing,
        progress: dict[str, Any],
        state_changes: dict[str, str],
        join: ShardInfo | None = None,
    ) -> RebalanceRow:
        """Records a new rebalance in state ``planned`` (and registers ``join`` as a joining
        shard, applies ``state_changes``), bumping the ring version, in one transaction that
        checks the ring version is still ``expect_version`` and no rebalance runs
        (FailedPrecondition otherwise; AlreadyExists when ``join``'s id is taken)."""
        now = time.time()
        with self.engine.begin() as conn:
            if self._running_id(conn) is not None:
                raise FailedPrecondition("a rebalance is already running (see GetRebalanceStatus)")
            version = int(conn.execute(sa.select(cluster.c.ring_version)).scalar() or 0)
            if version != expect_version:
                raise FailedPrecondition(
                    f"the topology changed while the rebalance was planned (v{expect_version} -> v{version}); retry"
                )
            if join is not None:
                if conn.execute(sa.select(shards.c.shard_id).where(shards.c.shard_id == join.shard_id)).first():
                    raise AlreadyExists(f"shard {join.shard_id!r} is already in the topology")
                conn.execute(shards.insert().values(shard_id=join.shard_id, address=join.address, weight=join.weight))
                self._set_state(conn, join.shard_id, JOINING)
            for changed, state in state_changes.items():
                self._set_state(conn, changed, state)
            new_id = conn.execute(
                rebalances.insert().values(
                    kind=kind,
                    state="planned",
                    finished=False,
                    shard_id=shard_id,
                    from_version=version + 1,
                    to_version=0,
                    old_ring=json.dumps(old_ring.to_dict()),
                    new_ring=json.dumps(new_ring.to_dict()),
                    progress=json.dumps(progress),
                    error="",
                    abort_requested=False,
                    started_at=now,
                    updated_at=now,
                    lease_owner="",
                    lease_until=0.0,
                )
            ).inserted_primary_key
            self._bump(conn)
            assert new_id is not None
            return self._rebalance(conn, int(new_id[0]))

    @staticmethod
    def _rebalance(conn: sa.Connection, rebalance_id: int) -> RebalanceRow:
        r = conn.execute(sa.select(rebalances).where(rebalances.c.id == rebalance_id)).first()
        if r is None:
            raise NotFound(f"rebalance {rebalance_id} does not exist")
        return RebalanceRow(
            int(r.id),
            r.kind,
            r.state,
            bool(r.finished),
            r.shard_id,
            int(r.from_version),
            int(r.to_version),
            json.loads(r.old_ring),
            json.loads(r.new_ring),
            json.loads(r.progress),
            r.error,
            bool(r.abort_requested),
            float(r.started_at),
            float(r.updated_at),
            r.lease_owner,
            float(r.lease_until),
        )

    def rebalance(self, rebalance_id: int = 0) -> RebalanceRow | None:
        """A rebalance by id; 0: the running one, else the latest; None when there never was one
        (NotFound for an unknown non-zero id)."""
        with self.engine.connect() as conn:
            if rebalance_id:
                return self._rebalance(conn, rebalance_id)
            found = self._running_id(conn)
            if found is None:
                found = conn.execute(sa.select(sa.func.max(rebalances.c.id))).scalar()
            return None if found is None else self._rebalance(conn, int(found))

    def acquire_lease(self, rebalance_id: int, owner: str, ttl_s: float) -> bool:
        """Takes or renews the coordinator lease of a running rebalance: True when ``owner``
        holds it until now + ``ttl_s`` (it was free, expired, or already its own)."""
        now = time.time()
        with self.engine.begin() as conn:
            taken = conn.execute(
                rebalances.update()
                .where(
                    (rebalances.c.id == rebalance_id)
                    & rebalances.c.finished.is_(False)
                    & ((rebalances.c.lease_owner == owner) | (rebalances.c.lease_until < now))
                )
                .values(lease_owner=owner, lease_until=now + ttl_s)
            ).rowcount
        return bool(taken)

    def update_rebalance(
        self,
        rebalance_id: int,
        expect_state: str,
        owner: str | None,
        *,
        state: str | None = None,
        progress: dict[str, Any] | None = None,
        error: str | None = None,
        bump: bool = False,
        switch: dict[str, str] | None = None,
        remove_shards: tuple[str, ...] = (),
    ) -> bool:
        """One compare-and-set transaction on a rebalance: applies the changes only if it is in
        ``expect_state`` and (``owner`` given) ``owner`` holds its lease; returns whether it did.
        ``bump`` raises the ring version (routers must act); ``switch`` sets shard states
        (the ring changes: the version is raised and recorded as ``to_version``);
        ``remove_shards`` forgets shards (an aborted join). A finishing state (done, aborted)
        marks the row finished."""
        now = time.time()
        values: dict[str, Any] = {"updated_at": now}
        if state is not None:
            values["state"] = state
            values["finished"] = state in ("done", "aborted")
        if progress is not None:
            values["progress"] = json.dumps(progress)
        if error is not None:
            values["error"] = error
        condition = (rebalances.c.id == rebalance_id) & (rebalances.c.state == expect_state)
        if owner is not None:
            condition = condition & (rebalances.c.lease_owner == owner) & (rebalances.c.lease_until >= now)
        with self.engine.begin() as conn:
            if switch is not None:
                version = int(conn.execute(sa.select(cluster.c.ring_version)).scalar() or 0)
                values["to_version"] = version + 1
            if not conn.execute(rebalances.update().where(condition).values(**values)).rowcount:
                return False
            for shard_id, shard_state in (switch or {}).items():
                self._set_state(conn, shard_id, shard_state)
            for shard_id in remove_shards:
                conn.execute(shards.delete().where(shards.c.shard_id == shard_id))
                conn.execute(shard_states.delete().where(shard_states.c.shard_id == shard_id))
            if bump or switch is not None or remove_shards or values.get("finished"):
                self._bump(conn)
        return True

    def request_abort(self, rebalance_id: int) -> bool:
        """Marks the running rebalance for abort (its coordinator acts on it); False when it
        is not running."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    rebalances.update()
                    .where((rebalances.c.id == rebalance_id) & rebalances.c.finished.is_(False))
                    .values(abort_requested=True, updated_at=time.time())
                ).rowcount
            )
