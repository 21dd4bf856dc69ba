"""The rebalance coordinator: moves ids between shards online, driven by persisted state.

Any number of servers run a ``Rebalancer``; the one holding the running rebalance's lease in
the metadata database (``TopologyStore.acquire_lease``) drives it, one state at a time (states
in ``router/moves.py``). Every state change is a compare-and-set on (state, lease) in one
transaction, and every step is idempotent, so a coordinator that dies is replaced by any other
server once its lease expires, which redoes at most the step that was interrupted.

The protocol, and what it guarantees:

1. PLANNED -> COPYING. Each target refuses client writes to its incoming arcs (a shard fence)
   and its minimum ring version is raised to the rebalance's (routers that do not know of the
   move are refused and reload); every collection is created on it; each source log is pinned
   at its next position, so compaction cannot truncate what the catch-up still has to read.
2. COPYING. Per (move, collection): the target's incoming arcs are purged (a retried copy
   starts clean, so a late copy never revives an id deleted meanwhile), then the source is
   scanned at one log position S (a point-in-time view) and the moving items are written to
   the target (``replicate=True``: past the fence, keeping vectors and payloads).
3. CATCHING_UP. The target replays the source's log from S + 1, in log order, keeping the
   records' moving ids: upserts and deletes apply exactly as they did on the source (the log
   is the one ordering point, so no version comparison is needed). A log that no longer
   reaches back (OutOfRange: the pin was lost) restarts that collection's copy.
4. FENCING (the write switch). Each source refuses client writes to its outgoing arcs; the
   fence is atomic with the source's writes, so once it is set the rest of the log is final;
   the last records are replayed. Client writes to moving ids are refused meanwhile
   (``WrongRoute``) and the routers retry them.
5. SWITCHED. One transaction: joining targets become active, a draining shard drained, the
   ring version raised. Then every involved shard refuses the old ring version (routers reload
   and write to the new owners), and only then do targets open their arcs to client writes.
6. CLEANUP -> DONE. The moved ids are deleted from the sources in batches; pins and fences
   are released; every shard of the move folds its delta into its graph (tombstones on the
   sources, replayed writes on the targets) before DONE. A target also folds right after its
   copy, before it serves the moved items.

ABORT before SWITCHED: sources unfenced and unpinned, targets purged and unfenced, a joining
shard forgotten, a draining one active again: the old ring, nothing lost. From SWITCHED on, an
abort rolls forward. A target that stays unreachable for ``target_dead_after_s`` aborts the
rebalance (its partial copy is purged when it is back); an unreachable source pauses it.

Searches never wait on any of this: while a rebalance runs, routers keep only each id's
owner's hits (``router/fanout.py``), and the owner on a router's ring always holds every
acknowledged write of the id: before the switch the source takes the writes (the target's
copy is never returned), after it the target does, and it held the complete state before
any router could write to it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from core import status
from core.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    NotFound,
    OutOfRange,
)
from core.keyranges import KeyRange, RangeSet
from core.metrics import REBALANCE_ITEMS_COPIED, REBALANCE_STATE
from core.vectors import Batch
from router.moves import Kind, MovePlan, MoveStatus, RebalanceStatus, State
from router.ring import HashRing, ShardNode
from router.topology import (
    ACTIVE,
    DRAINED,
    DRAINING,
    JOINING,
    RebalanceRow,
    ShardInfo,
    Topology,
    TopologyStore,
)
from shard.api import ShardApi
from shard.records import DeleteOp, UpsertOp

log = logging.getLogger(__name__)

SCAN_BATCH = 512
DELETE_BATCH = 1000


@dataclass(frozen=True)
class RebalanceOptions:
    lease_ttl_s: float = 10.0
    poll_s: float = 0.5
    call_timeout_s: float = 60.0
    # CATCHING_UP ends (FENCING begins) when one replay pass applied at most this many records.
    catch_up_records: int = 200
    # A target unreachable this long aborts the rebalance (before the switch).
    target_dead_after_s: float = 60.0
    progress_every_s: float = 1.0
    # Folds of a target's delta after its copy and of every shard of the move at cleanup.
    compact_timeout_s: float = 3600.0


class _Lost(Exception):
    """This coordinator lost the lease or the state changed under it: stop the step."""


def key_in(rebalance_id: int) -> str:
    """Fence key on a target (incoming arcs) and pin key on a source."""
    return f"rebalance-{rebalance_id}-in"


def key_out(rebalance_id: int) -> str:
    return f"rebalance-{rebalance_id}-out"


class Rebalancer:
    """Implements ``router.moves.RebalanceAdmin`` and runs the coordinator loop (``start``).

    ``handles(topology)``: a shard handle for every shard of a topology, unchecked by ring
    version (epoch 0): the coordinator reads and writes past fences and versions. Thread-safe.
    """

    def __init__(
        self,
        store: TopologyStore,
        handles: Callable[[Topology], Mapping[str, ShardApi]],
        owner: str,
        options: RebalanceOptions | None = None,
    ) -> None:
        self.store = store
        self.handles = handles
        self.owner = owner
        self.options = options or RebalanceOptions()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._unreachable_since: dict[str, float] = {}
        # rebalance id -> the ring version this coordinator fenced its predecessors out with
        self._fenced: dict[int, int] = {}

    # ================================================================== admin
    def shard_states(self) -> dict[str, str]:
        return {s.shard_id: s.state for s in self.store.load().shards}

    def _rings(
        self, topology: Topology, joining: ShardInfo | None = None, draining: str = ""
    ) -> tuple[HashRing, HashRing]:
        old = topology.ring()
        nodes = [ShardNode(s.shard_id, s.weight) for s in topology.shards if s.state in (ACTIVE, JOINING)]
        if joining is not None:
            nodes.append(ShardNode(joining.shard_id, joining.weight))
        nodes = [n for n in nodes if n.shard_id != draining]
        new = HashRing(nodes, vnodes_per_weight=old.vnodes_per_weight, version=old.version + 1)
        return old, new

    def _plans(self, topology: Topology, old: HashRing, new: HashRing) -> list[MovePlan]:
        if not old.shards or not new.shards:
            return []
        moves = old.moving_ranges(new)
        handles = self.handles(topology)
        plans = []
        for (source, target), ranges in sorted(moves.items()):
            items: dict[str, int] = {}
            try:
                shard = handles[source]
                fraction = _share(ranges) / max(_share(_owned_arcs(old, source)), 1e-12)
                for spec in shard.list_collections(self.options.call_timeout_s):
                    count = shard.stats(spec.name, self.options.call_timeout_s).count
                    items[spec.name] = round(count * fraction)
            except DomainError as exc:
                log.warning("plan: cannot count the items of %s: %s", source, exc)
            plans.append(MovePlan(source, target, len(ranges), items))
        return plans

    def plan(self) -> list[MovePlan]:
        topology = self.store.load()
        old, new = self._rings(topology)
        return self._plans(topology, old, new)

    def _start(
        self, kind: Kind, topology: Topology, old: HashRing, new: HashRing, shard: str, join: ShardInfo | None
    ) -> RebalanceStatus:
        if not old.shards:
            raise FailedPrecondition("the ring has no shards: register one first (nothing to move from)")
        if not new.shards:
            raise FailedPrecondition("draining the last shard would leave no shard to hold the data")
        plans = self._plans(topology, old, new)
        progress = {
            "moves": [
                {
                    "source": p.source,
                    "target": p.target,
                    "items_planned": p.total_items,
                    "items_copied": 0,
                    "wal_lag": 0,
                    "error": "",
                    "collections": {},
                }
                for p in plans
            ],
            "fenced": False,
        }
        changes = {shard: DRAINING} if kind is Kind.DRAIN else {}
        row = self.store.start_rebalance(
            kind.value, shard, topology.ring_version, old, new, progress, changes, join=join
        )
        log.info("rebalance %d (%s %s) planned: %d moves", row.id, kind.value, shard or "-", len(plans))
        self._wake.set()
        return to_status(row)

    def add_shard(self, shard_id: str, address: str, weight: float, start: bool = True) -> RebalanceStatus | None:
        topology = self.store.load()
        if any(s.shard_id == shard_id for s in topology.shards):
            raise AlreadyExists(f"shard {shard_id!r} is already in the topology")
        if not topology.ring().shards:  # an empty ring holds no data: the shard joins at once
            self.store.put_shard(shard_id, address, weight)
            return None
        joining = ShardInfo(shard_id, address, weight, JOINING)
        if not start:
            self.store.add_joining(joining)
            return None
        old, new = self._rings(topology, joining=joining)
        return self._start(Kind.ADD, topology, old, new, shard_id, joining)

    def drain_shard(self, shard_id: str) -> RebalanceStatus:
        topology = self.store.load()
        info = next((s for s in topology.shards if s.shard_id == shard_id), None)
        if info is None:
            raise NotFound(f"shard {shard_id!r} is not in the topology")
        if info.state != ACTIVE:
            raise FailedPrecondition(f"shard {shard_id!r} is {info.state}, not active")
        old, new = self._rings(topology, draining=shard_id)
        return self._start(Kind.DRAIN, topology, old, new, shard_id, None)

    def rebalance(self) -> RebalanceStatus:
        topology = self.store.load()
        old, new = self._rings(topology)
        if [(n.shard_id, n.weight) for n in old.nodes] == [(n.shard_id, n.weight) for n in new.nodes]:
            raise FailedPrecondition("the ring already matches the shards and weights: nothing to move")
        return self._start(Kind.REBALANCE, topology, old, new, "", None)

    def remove_shard(self, shard_id: str) -> None:
        topology = self.store.load()
        info = next((s for s in topology.shards if s.shard_id == shard_id), None)
        if info is None:
            raise NotFound(f"shard {shard_id!r} is not in the topology")
        if topology.rebalance is not None:
            raise FailedPrecondition("a rebalance is running; remove the shard after it ends")
        if info.state != DRAINED:
            ring = topology.ring()
            if shard_id in ring.shards:
                raise FailedPrecondition(
                    f"shard {shard_id!r} is on the ring and may hold data: drain it first (DrainShard)"
                )
        self.store.remove_shard(shard_id)

    def status(self, rebalance_id: int = 0) -> RebalanceStatus | None:
        row = self.store.rebalance(rebalance_id)
        return None if row is None else to_status(row)

    def abort(self) -> RebalanceStatus:
        row = self.store.rebalance(0)
        if row is None or row.finished:
            raise FailedPrecondition("no rebalance is running")
        self.store.request_abort(row.id)
        self._wake.set()
        return to_status(self.store.rebalance(row.id) or row)

    # ================================================================== the loop
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rebalancer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once()
            except Exception:
                log.exception("rebalance step failed; retrying")
                busy = False
            if not busy:
                self._wake.wait(self.options.poll_s)
                self._wake.clear()

    def run_once(self) -> bool:
        """Drives the running rebalance one state further if this server holds (or takes) its
        lease; True when it made progress (call again at once)."""
        row = self.store.rebalance(0)
        _export(row)
        if row is None or row.finished:
            return False
        if not self.store.acquire_lease(row.id, self.owner, self.options.lease_ttl_s):
            return False
        state = State(row.state)
        stop = threading.Event()
        keepalive = threading.Thread(target=self._keep_lease, args=(row.id, stop), name="rebalance-lease", daemon=True)
        keepalive.start()  # a step may wait minutes on one call (a copy, a fold)
        try:
            self._fence_predecessors(row)
            if row.abort_requested and state.abortable:
                return self._transition(row, State.ABORTING)
            return _STEPS[state](self, row)
        except _Lost:
            return False
        except DomainError as exc:
            self._note_error(row, exc)
            return False
        finally:
            stop.set()
            keepalive.join()

    def _keep_lease(self, rebalance_id: int, stop: threading.Event) -> None:
        """Renews the lease every third of its time while a step runs; stops at the first
        failure (the step then finds the lease gone at its next save)."""
        while not stop.wait(self.options.lease_ttl_s / 3):
            try:
                if not self.store.acquire_lease(rebalance_id, self.owner, self.options.lease_ttl_s):
                    return
            except Exception:
                log.exception("rebalance %d: lease renewal failed", rebalance_id)
                return

    # ------------------------------------------------------------------ helpers
    def _fence_predecessors(self, row: RebalanceRow) -> None:
        """Once per rebalance this coordinator takes over: raises the ring version and makes
        every shard of the move refuse older ones. A coordinator that lost its lease while in
        the middle of a step (stalled, cut off from the database) made its handles with an
        older version, so whatever it still sends is refused: its late copy cannot land on a
        target after ours. Steps use handles of the current version (``_context``)."""
        if row.id in self._fenced:
            return
        version = self.store.bump()
        shards = self.handles(self.store.load())
        involved = {m["source"] for m in row.progress["moves"]} | {m["target"] for m in row.progress["moves"]}
        for shard_id in sorted(involved):
            if shard_id in shards:
                shards[shard_id].set_min_epoch(version, self.options.call_timeout_s)
        self._fenced[row.id] = version

    def _transition(self, row: RebalanceRow, state: State, **changes: Any) -> bool:
        done = self.store.update_rebalance(row.id, row.state, self.owner, state=state.value, **changes)
        if done:
            log.info("rebalance %d: %s -> %s", row.id, row.state, state.value)
        return done

    def _save(self, row: RebalanceRow, progress: dict[str, Any], error: str | None = None) -> None:
        """Persists progress and renews the lease; _Lost when the lease or state is gone."""
        if not self.store.acquire_lease(row.id, self.owner, self.options.lease_ttl_s):
            raise _Lost()
        if not self.store.update_rebalance(row.id, row.state, self.owner, progress=progress, error=error):
            raise _Lost()

    def _note_error(self, row: RebalanceRow, exc: DomainError) -> None:
        message = f"{type(exc).__name__}: {exc}"
        log.warning("rebalance %d (%s): %s", row.id, row.state, message)
        # clients read it (RebalanceStatus.error): no paths, no SQL (core.status.public_message)
        self.store.update_rebalance(row.id, row.state, self.owner, error=status.public_message(message))
        dead = self._dead_target(row)
        if dead and State(row.state).abortable:
            log.warning("rebalance %d: target %s unreachable for too long; aborting", row.id, dead)
            self.store.request_abort(row.id)

    def _dead_target(self, row: RebalanceRow) -> str:
        """A target that has not answered for ``target_dead_after_s`` ("" if none)."""
        topology = self.store.load()
        handles = self.handles(topology)
        now = time.monotonic()
        for target in {m["target"] for m in row.progress["moves"]}:
            try:
                handles[target].list_collections(2.0)
                self._unreachable_since.pop(target, None)
            except DomainError:
                since = self._unreachable_since.setdefault(target, now)
                if now - since >= self.options.target_dead_after_s:
                    return str(target)
        return ""

    def _context(self, row: RebalanceRow) -> tuple[Mapping[str, ShardApi], list[tuple[dict[str, Any], RangeSet]]]:
        """Shard handles carrying the current ring version (see ``_fence_predecessors``) and
        each move with its arcs."""
        old = HashRing.from_dict(row.old_ring)
        new = HashRing.from_dict(row.new_ring)
        arcs = old.moving_ranges(new)
        moves = [(m, RangeSet(arcs.get((m["source"], m["target"]), []))) for m in row.progress["moves"]]
        topology = self.store.load()
        epoch = topology.ring_version
        return {s: h.with_epoch(epoch) for s, h in self.handles(topology).items()}, moves

    # ------------------------------------------------------------------ steps
    def _planned(self, row: RebalanceRow) -> bool:
        shards, moves = self._context(row)
        timeout = self.options.call_timeout_s
        progress = row.progress
        topology = self.store.load()
        for info in topology.shards:  # a joining shard holds nothing of value: start it clean
            if info.state == JOINING and not progress.get("cleared", {}).get(info.shard_id):
                joiner = shards[info.shard_id]
                for spec in joiner.list_collections(timeout):
                    joiner.drop_collection(spec.name, timeout)
                for key in joiner.control(timeout).fences:  # left by an aborted join
                    joiner.set_fence(key, None, timeout)
                progress.setdefault("cleared", {})[info.shard_id] = True
        for move, ranges in moves:
            target, source = shards[move["target"]], shards[move["source"]]
            target.set_min_epoch(row.from_version, timeout)
            target.set_fence(key_in(row.id) + "-" + move["source"], list(ranges.ranges), timeout)
            self._sync_collections(row, move, source, target)
        self._save(row, progress)
        return self._transition(row, State.COPYING)

    def _sync_collections(self, row: RebalanceRow, move: dict[str, Any], source: ShardApi, target: ShardApi) -> None:
        """Creates the source's collections on the target and pins each new one's log."""
        timeout = self.options.call_timeout_s
        for spec in source.list_collections(timeout):
            entry = move["collections"].get(spec.name)
            if entry is not None:
                continue
            target.create_collection(spec, timeout)
            stats = source.stats(spec.name, timeout)
            source.pin_wal(spec.name, key_in(row.id), stats.last_applied_seq + 1, timeout)
            move["collections"][spec.name] = {"copied": False, "applied": stats.last_applied_seq}

    def _copying(self, row: RebalanceRow) -> bool:
        shards, moves = self._context(row)
        for move, ranges in moves:
            source, target = shards[move["source"]], shards[move["target"]]
            self._sync_collections(row, move, source, target)
            for name, entry in move["collections"].items():
                if not entry["copied"]:
                    self._copy(row, move, name, entry, ranges, source, target)
        return self._transition(row, State.CATCHING_UP, progress=row.progress)

    def _copy(
        self,
        row: RebalanceRow,
        move: dict[str, Any],
        name: str,
        entry: dict[str, Any],
        ranges: RangeSet,
        source: ShardApi,
        target: ShardApi,
    ) -> None:
        """Purges the target's copy of ``ranges`` and copies them again from a source scan."""
        timeout = self.options.call_timeout_s
        try:
            _purge(target, name, ranges, timeout)
            saved = time.monotonic()
            applied = entry["applied"]
            for batch in source.scan(name, list(ranges.ranges), SCAN_BATCH, timeout):
                applied = batch.applied_seq
                if batch.ids:
                    payloads = batch.payloads if any(batch.payloads) else None
                    target.upsert(name, Batch(batch.ids, batch.vectors, payloads), timeout, replicate=True)
                    move["items_copied"] += len(batch.ids)
                if time.monotonic() - saved >= self.options.progress_every_s:
                    self._save(row, row.progress)
                    saved = time.monotonic()
            # The copy arrived as writes, in the target's exact delta: fold it into the graph now,
            # before the target serves it (searches over a large delta are slow).
            target.compact(name, True, self.options.compact_timeout_s)
        except NotFound:  # dropped meanwhile: nothing to move
            entry.update(copied=True, applied=0, dropped=True)
            return
        entry.update(copied=True, applied=applied)
        self._save(row, row.progress)

    def _replay(self, row: RebalanceRow) -> int:
        """One catch-up pass over every move and collection; returns the records applied."""
        shards, moves = self._context(row)
        timeout = self.options.call_timeout_s
        applied_total = 0
        for move, ranges in moves:
            source, target = shards[move["source"]], shards[move["target"]]
            self._sync_collections(row, move, source, target)
            lag = 0
            for name, entry in move["collections"].items():
                if entry.get("dropped"):
                    continue
                if not entry["copied"]:
                    self._copy(row, move, name, entry, ranges, source, target)
                try:
                    applied_total += self._replay_one(row, move, name, entry, ranges, source, target)
                    lag += max(0, source.stats(name, timeout).last_applied_seq - entry["applied"])
                except OutOfRange:
                    log.warning(
                        "rebalance %d: %s's log no longer reaches %s; copying again", row.id, move["source"], name
                    )
                    entry["copied"] = False
                    self._copy(row, move, name, entry, ranges, source, target)
                except NotFound:
                    entry["dropped"] = True
            move["wal_lag"] = lag
            move["error"] = ""
        self._save(row, row.progress, error="")
        return applied_total

    def _replay_one(
        self,
        row: RebalanceRow,
        move: dict[str, Any],
        name: str,
        entry: dict[str, Any],
        ranges: RangeSet,
        source: ShardApi,
        target: ShardApi,
    ) -> int:
        timeout = self.options.call_timeout_s
        count = 0
        saved = time.monotonic()
        for record in source.read_wal(name, entry["applied"] + 1, timeout):
            op = record.op
            keep = ranges.contains_ids(op.ids)
            if keep.any():
                positions = keep.nonzero()[0].tolist()
                if isinstance(op, UpsertOp):
                    payloads = None if op.payloads is None else [op.payloads[p] for p in positions]
                    ids = [op.ids[p] for p in positions]
                    target.upsert(name, Batch(ids, op.vectors[positions], payloads), timeout, replicate=True)
                    move["items_copied"] += len(ids)
                elif isinstance(op, DeleteOp):
                    target.delete(name, [op.ids[p] for p in positions], timeout, replicate=True)
                count += 1
            entry["applied"] = record.seq
            if time.monotonic() - saved >= self.options.progress_every_s:
                self._save(row, row.progress)
                saved = time.monotonic()
        return count

    def _catching_up(self, row: RebalanceRow) -> bool:
        applied = self._replay(row)
        if applied > self.options.catch_up_records:
            return True  # another pass
        return self._transition(row, State.FENCING, progress=row.progress)

    def _fencing(self, row: RebalanceRow) -> bool:
        shards, moves = self._context(row)
        timeout = self.options.call_timeout_s
        if not row.progress.get("fenced"):
            outgoing: dict[str, list[KeyRange]] = {}
            for move, ranges in moves:
                outgoing.setdefault(move["source"], []).extend(ranges.ranges)
            for source, arcs in outgoing.items():
                shards[source].set_fence(key_out(row.id), arcs, timeout)
            row.progress["fenced"] = True
            self._save(row, row.progress)
        self._replay(row)  # the fence makes this pass the last one
        topology = self.store.load()
        switch = {s.shard_id: ACTIVE for s in topology.shards if s.state == JOINING}
        switch.update({s.shard_id: DRAINED for s in topology.shards if s.state == DRAINING})
        return self._transition(row, State.SWITCHED, progress=row.progress, switch=switch)

    def _switched(self, row: RebalanceRow) -> bool:
        shards, moves = self._context(row)
        timeout = self.options.call_timeout_s
        involved = {m["source"] for m, _ in moves} | {m["target"] for m, _ in moves}
        for shard_id in sorted(involved):
            shards[shard_id].set_min_epoch(row.to_version, timeout)  # old-ring routers reload
        for move, _ in moves:
            shards[move["target"]].set_fence(key_in(row.id) + "-" + move["source"], None, timeout)
        return self._transition(row, State.CLEANUP)

    def _cleanup(self, row: RebalanceRow) -> bool:
        shards, moves = self._context(row)
        timeout = self.options.call_timeout_s
        for move, ranges in moves:
            source = shards[move["source"]]
            for name, entry in move["collections"].items():
                if entry.get("cleaned") or entry.get("dropped"):
                    continue
                with contextlib.suppress(NotFound):
                    _purge(source, name, ranges, timeout)
                entry["cleaned"] = True
                self._save(row, row.progress)
        for source in {m["source"] for m, _ in moves}:
            shards[source].unpin_wal(key_in(row.id), timeout)
            shards[source].set_fence(key_out(row.id), None, timeout)
        # The sources hold the moved ids as tombstones (a graph search over-fetches by their
        # number) and the targets the replayed writes in their deltas: fold both before DONE, so
        # DONE means the cluster searches at full speed again.
        for shard_id, name in sorted(
            {
                (m[side], c)
                for m, _ in moves
                for side in ("source", "target")
                for c, e in m["collections"].items()
                if not e.get("dropped")
            }
        ):
            with contextlib.suppress(NotFound):
                shards[shard_id].compact(name, True, self.options.compact_timeout_s)
        return self._transition(row, State.DONE, progress=row.progress)

    def _aborting(self, row: RebalanceRow) -> bool:
        shards, moves = self._context(row)
        timeout = self.options.call_timeout_s
        for source in {m["source"] for m, _ in moves}:
            shards[source].set_fence(key_out(row.id), None, timeout)  # writes resume on the old ring
            shards[source].unpin_wal(key_in(row.id), timeout)
        topology = self.store.load()
        joined = tuple(s.shard_id for s in topology.shards if s.state == JOINING)
        for move, ranges in moves:
            if move["target"] in joined:
                continue  # forgotten below; it is cleared when it joins again
            target = shards[move["target"]]
            for name in move["collections"]:
                with contextlib.suppress(NotFound):
                    _purge(target, name, ranges, timeout)
            target.set_fence(key_in(row.id) + "-" + move["source"], None, timeout)
        restore = {s.shard_id: ACTIVE for s in topology.shards if s.state == DRAINING}
        for shard_id in joined:  # best effort: a joining shard never served; it is cleared when it joins again
            try:
                for spec in shards[shard_id].list_collections(timeout):
                    shards[shard_id].drop_collection(spec.name, timeout)
                shards[shard_id].set_fence(key_in(row.id) + "-" + "*", None, timeout)
            except DomainError as exc:
                log.warning(
                    "rebalance %d: could not clear joining shard %s (%s); it is cleared when it joins",
                    row.id,
                    shard_id,
                    exc,
                )
        done = self.store.update_rebalance(
            row.id, row.state, self.owner, state=State.ABORTED.value, switch=restore, remove_shards=joined
        )
        if done:
            log.info("rebalance %d aborted: back on ring v%d's shards", row.id, row.from_version - 1)
        return done


_STEPS: dict[State, Callable[[Rebalancer, RebalanceRow], bool]] = {
    State.PLANNED: Rebalancer._planned,
    State.COPYING: Rebalancer._copying,
    State.CATCHING_UP: Rebalancer._catching_up,
    State.FENCING: Rebalancer._fencing,
    State.SWITCHED: Rebalancer._switched,
    State.CLEANUP: Rebalancer._cleanup,
    State.ABORTING: Rebalancer._aborting,
}


def _purge(shard: ShardApi, collection: str, ranges: RangeSet, timeout: float) -> int:
    """Deletes every item of ``collection`` in ``ranges`` from ``shard`` (past its fences)."""
    doomed: list[str] = []
    for batch in shard.scan(collection, list(ranges.ranges), SCAN_BATCH, timeout):
        doomed.extend(batch.ids)
    for lo in range(0, len(doomed), DELETE_BATCH):
        shard.delete(collection, doomed[lo : lo + DELETE_BATCH], timeout, replicate=True)
    return len(doomed)


def _share(ranges: Iterable[KeyRange]) -> float:
    """The fraction of the hash space the arcs cover."""
    total = 0
    for arc in ranges:
        total += sum(hi - lo + 1 for lo, hi in arc.closed_intervals())
    return total / float(1 << 64)


def _owned_arcs(ring: HashRing, shard_id: str) -> Iterator[KeyRange]:
    """The arcs ``shard_id`` owns on ``ring`` (derived from a ring without it)."""
    others = [n for n in ring.nodes if n.shard_id != shard_id]
    if not others:
        yield KeyRange(0, 0)
        return
    without = HashRing(others, vnodes_per_weight=ring.vnodes_per_weight, version=ring.version + 1)
    for (source, _), arcs in ring.moving_ranges(without).items():
        if source == shard_id:
            yield from arcs


def _export(row: RebalanceRow | None) -> None:
    """The metrics of the latest rebalance as last read: its state (1, every other state 0; all
    0 when there is none) and the items its moves copied."""
    current = None if row is None else row.state
    for state in State:
        REBALANCE_STATE.labels(state.value).set(1 if state.value == current else 0)
    copied = 0 if row is None else sum(int(m.get("items_copied", 0)) for m in row.progress.get("moves", []))
    REBALANCE_ITEMS_COPIED.set(copied)


def to_status(row: RebalanceRow) -> RebalanceStatus:
    now = time.time()
    end = row.updated_at if row.finished else now
    state = State(row.state)
    moves = [
        MoveStatus(
            source=m["source"],
            target=m["target"],
            state=state,
            items_planned=int(m.get("items_planned", 0)),
            items_copied=int(m.get("items_copied", 0)),
            wal_lag=int(m.get("wal_lag", 0)),
            elapsed_s=end - row.started_at,
            error=str(m.get("error", "")),
        )
        for m in row.progress.get("moves", [])
    ]
    return RebalanceStatus(
        rebalance_id=row.id,
        kind=Kind(row.kind),
        state=state,
        from_version=row.from_version,
        to_version=row.to_version,
        moves=moves,
        shard=row.shard_id,
        error=row.error,
        started_at=row.started_at,
        updated_at=row.updated_at,
        elapsed_s=end - row.started_at,
    )
