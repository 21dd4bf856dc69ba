"""Domain types of online rebalancing: the plan, the persisted state of a rebalance and its
moves, and the admin interface the public AdminService calls (``RebalanceAdmin``).

A *rebalance* takes the cluster from one ring (version v) to the next; it consists of one
*move* per (source shard, target shard) pair whose arcs change owner. States of a rebalance
(``State``), in order; every change is one metadata-database transaction that checks the
expected current state (see ``router/rebalance.py``)::

    PLANNED -> COPYING -> CATCHING_UP -> FENCING -> SWITCHED -> CLEANUP -> DONE
         \\________\\___________\\____________\\-> ABORTING -> ABORTED

* PLANNED: recorded; targets joining (not in the ring), nothing copied.
* COPYING: targets refuse client writes to their incoming arcs; source logs are pinned;
  the moving items are being copied (a scan at one log position per collection).
* CATCHING_UP: the targets replay the sources' logs from the copy's position.
* FENCING: the write switch has begun: sources refuse client writes to the moving ids
  (routers retry them), the last log records are replayed.
* SWITCHED: the new ring is committed; routers holding the old ring are refused by the
  sources and reload it; targets open their arcs to client writes.
* CLEANUP: the moved ids are deleted from the sources in batches; pins released.
* ABORTING / ABORTED: before SWITCHED an abort returns to the old ring (targets' copies
  purged, fences and pins released); from SWITCHED on, an abort rolls forward instead.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol


class State(enum.Enum):
    PLANNED = "planned"
    COPYING = "copying"
    CATCHING_UP = "catching_up"
    FENCING = "fencing"
    SWITCHED = "switched"
    CLEANUP = "cleanup"
    DONE = "done"
    ABORTING = "aborting"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self in (State.DONE, State.ABORTED)

    @property
    def abortable(self) -> bool:
        """An abort returns to the old ring (before the write switch commits)."""
        return self in (State.PLANNED, State.COPYING, State.CATCHING_UP, State.FENCING)


class Kind(enum.Enum):
    ADD = "add"  # a shard joins
    DRAIN = "drain"  # a shard leaves
    REBALANCE = "rebalance"  # weights or membership changed by other means


@dataclass(frozen=True)
class MovePlan:
    """One planned move: the arcs of ``source`` that ``target`` takes over, and how many items
    they hold now, per collection (counted by a scan of the source)."""

    source: str
    target: str
    ranges: int
    items: dict[str, int] = field(default_factory=dict)

    @property
    def total_items(self) -> int:
        return sum(self.items.values())


@dataclass(frozen=True)
class MoveStatus:
    """Where one move stands: items copied so far (scan and replay), the log records of the
    source not yet replayed on the target (``wal_lag``), and the last error (empty: none)."""

    source: str
    target: str
    state: State
    items_planned: int
    items_copied: int
    wal_lag: int
    elapsed_s: float
    error: str = ""


@dataclass(frozen=True)
class RebalanceStatus:
    rebalance_id: int
    kind: Kind
    state: State
    from_version: int  # the ring version the rebalance started from
    to_version: int  # the ring version it commits at SWITCHED (0 until then)
    moves: list[MoveStatus]
    shard: str  # the shard added or drained ("" for a plain rebalance)
    error: str
    started_at: float  # unix time
    updated_at: float
    elapsed_s: float


class RebalanceAdmin(Protocol):
    """What AdminService's topology RPCs call. Errors are ``core.errors`` domain errors:
    InvalidArgument (bad id, address or weight), AlreadyExists (shard id taken), NotFound
    (unknown shard or rebalance), FailedPrecondition (another rebalance is running, the shard
    is not empty, nothing to abort)."""

    def add_shard(self, shard_id: str, address: str, weight: float, start: bool = True) -> RebalanceStatus | None:
        """Registers a joining shard and (``start``) starts the rebalance that moves its share
        to it; None when not started."""
        ...

    def drain_shard(self, shard_id: str) -> RebalanceStatus:
        """Starts moving everything off the shard; it leaves the ring at the switch."""
        ...

    def remove_shard(self, shard_id: str) -> None:
        """Forgets a shard that holds nothing: drained, or joining and never switched in."""
        ...

    def plan(self) -> list[MovePlan]:
        """The moves the current membership and weights imply (a dry run; changes nothing)."""
        ...

    def rebalance(self) -> RebalanceStatus:
        """Starts the rebalance :meth:`plan` describes."""
        ...

    def status(self, rebalance_id: int = 0) -> RebalanceStatus | None:
        """A rebalance (0: the running one, else the latest); None when there never was one."""
        ...

    def abort(self) -> RebalanceStatus:
        """Aborts the running rebalance (rolls back before SWITCHED, forward after)."""
        ...

    def shard_states(self) -> dict[str, str]:
        """Each known shard's membership: "active" (in the ring), "joining" (added, not yet
        switched in), "draining" (being emptied), "drained" (out of the ring, removable).
        ClusterStatus reports it per shard."""
        ...
