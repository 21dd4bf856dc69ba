"""Routes writes to the owning shard and fans searches out to every shard in parallel.

The router knows shards only through ``shard.api.ShardApi`` (in-process ``LocalShard`` or
``RemoteShard`` over gRPC — it cannot tell them apart) and speaks domain types only.

* Writes: ids are grouped by ``ring.owners`` and each group goes to its shard; the groups are
  sent in parallel (blocking calls on a shared pool of long-lived threads). A write succeeds
  only if every group did; otherwise ``ShardsUnavailable`` names the shards that failed (the
  others' groups are durable, and retrying the whole write is safe because writes are
  idempotent).
* Searches: the same query goes to every shard with the caller's deadline; results are
  merged with ``merge_batches`` (deterministic ties, ids de-duplicated). A shard that fails or
  misses the deadline is reported in ``SearchOutcome.failed`` — or, with ``require_all``, the
  search raises ``ShardsUnavailable``. A single shard's answer needs no merge: its hits are
  taken as they are, ties re-ordered by id as the merge would.
* A shard's ``InvalidArgument`` is the caller's fault and is raised as it is, and so is a
  shard's ``FailedPrecondition`` to a filtered search (the engine then plans it itself);
  ``NotFound`` from every shard asked is raised as ``NotFound``.
* Ring versions and rebalancing (``router/rebalance.py``): every shard handle carries the
  topology's ring version, and a shard refuses a stale one (``WrongRoute``), as it refuses a
  client write to an id that is moving. With a ``reroute`` callback (the server's: reload the
  topology now, return the current router), a call that meets ``WrongRoute`` is retried on the
  fresh router with a short backoff until its timeout; without one, ``WrongRoute`` is raised.
  Writes, gets and searches follow the ring (``active`` and ``draining`` shards); collections
  are created and dropped on every known shard (``joining`` and ``drained`` ones too). While a
  rebalance runs (``Topology.moving``) a shard may hold copies of ids it does not own: a search
  then asks each shard for up to twice ``k`` and keeps only hits from each id's owner, so every
  item is returned once, from the shard that takes its writes.

Thread-safety: a Router is immutable once built; build a new one when the topology changes.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from core import status, tracing
from core.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ShardsUnavailable,
    WrongRoute,
)
from core.filters import Filter
from core.metrics import FANOUT_PARTIAL
from core.spec import MAX_K as SHARD_MAX_K
from core.spec import CollectionSpec
from core.vectors import Batch, Matrix, Queries
from router.merge import Hit, merge_batches
from router.ring import HashRing
from router.topology import Topology
from shard.api import ShardApi
from shard.local import LocalShard
from shard.remote import RemoteShard
from shard.types import CollectionStats, QueryHits, SearchReply, SearchStats

NO_SHARDS = (
    "the cluster has no shards: register one (python -m server --register-shard ID=HOST:PORT, or "
    "--local-shard DIR for a single node) before creating or using collections"
)
LOCAL_PREFIX = "local:"
"""Topology address prefix of a shard that lives inside a server process (single-node shape)."""
A = TypeVar("A")
R = TypeVar("R")
# Shared by every Router of the process (routers are rebuilt on topology changes); threads are
# created on demand and reused.
_FANOUT = ThreadPoolExecutor(max_workers=64, thread_name_prefix="fanout")
REROUTE_BACKOFF_S = (0.02, 0.05, 0.1, 0.2, 0.25)
"""Waits between retries of a call refused with ``WrongRoute`` (the last one repeats)."""
F = TypeVar("F", bound=Callable[..., Any])


def rerouted(method: F) -> F:
    """Retries ``method`` on a fresh router (``Router.reroute``) while shards answer
    ``WrongRoute``, until the call's ``timeout`` argument (10 s when it has none) runs out."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self: Router, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except WrongRoute:
            if self.reroute is None:
                raise
            bound = signature.bind(self, *args, **kwargs)
            timeout = bound.arguments.get("timeout")
            deadline = time.monotonic() + (timeout if isinstance(timeout, (int, float)) else 10.0)
            attempt = 0
            while True:
                wait = REROUTE_BACKOFF_S[min(attempt, len(REROUTE_BACKOFF_S) - 1)]
                attempt += 1
                if time.monotonic() + wait >= deadline:
                    raise
                time.sleep(wait)
                fresh = self.reroute()
                try:
                    return getattr(fresh, method.__name__).__wrapped__(fresh, *args, **kwargs)
                except WrongRoute:
                    continue

    return wrapper  # type: ignore[return-value]


class StoredItem(NamedTuple):
    """One item as its shard holds it: the vector and the opaque payload (b"": none)."""

    vector: Matrix
    payload: bytes


@dataclass
class SearchOutcome:
    results: list[list[Hit]]
    failed: dict[str, str] = field(default_factory=dict)
    # shard id -> how that shard answered (only when asked for with ``explain``)
    stats: dict[str, SearchStats] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        return bool(self.failed)


class Router:
    def __init__(
        self,
        ring: HashRing,
        shards: Mapping[str, ShardApi],
        *,
        moving: bool = False,
        reroute: Callable[[], Router] | None = None,
    ) -> None:
        """``shards``: a handle for every shard of ``ring`` (ValueError otherwise) and any other
        known shard (joining or drained: they get collection creates and drops only)."""
        missing = set(ring.shards) - set(shards)
        if missing:
            raise ValueError(f"no client for shards {sorted(missing)}")
        self.ring = ring
        self.known = shards
        self.shards: Mapping[str, ShardApi] = {s: shards[s] for s in ring.shards}
        self.moving = moving
        self.reroute = reroute

    @classmethod
    def connect(
        cls,
        topology: Topology,
        local: Mapping[str, LocalShard] | None = None,
        reroute: Callable[[], Router] | None = None,
        coalesce_in_flight: int = 1,
    ) -> Router:
        """A router over every shard of ``topology``: a ``RemoteShard`` per remote shard, and
        the in-process shard for those whose address is ``local:...`` (they must be in
        ``local``: only the process that owns such a shard can route to it). Every handle
        carries ``topology.ring_version``; ``coalesce_in_flight``: see ``RemoteShard``."""
        local = local or {}
        epoch = topology.ring_version
        shards: dict[str, ShardApi] = {}
        for shard in topology.shards:
            if shard.address.startswith(LOCAL_PREFIX):
                if shard.shard_id not in local:
                    raise ValueError(f"shard {shard.shard_id} lives in another process ({shard.address})")
                shards[shard.shard_id] = LocalShard(local[shard.shard_id].registry, epoch=epoch)
            else:
                shards[shard.shard_id] = RemoteShard(shard.address, epoch=epoch, coalesce_in_flight=coalesce_in_flight)
        return cls(topology.ring(), shards, moving=topology.moving, reroute=reroute)

    def close(self) -> None:
        for shard in self.known.values():
            shard.close()

    # ------------------------------------------------------------------ helpers
    def _call(
        self, call: Callable[[ShardApi, A], R], args: Mapping[str, A], timeout: float
    ) -> tuple[dict[str, R], dict[str, DomainError]]:
        """Runs ``call(shard, args[shard_id])`` on each shard with one deadline; returns
        (replies, errors) by shard id. The first shard is called on this thread; the others in
        parallel on the shared fan-out pool (blocking calls on long-lived threads: grpcio's
        ``.future()`` starts a thread per call on an idle channel, which costs more than the
        call itself)."""
        if not args:
            return {}, {}
        if len(args) == 1:  # one shard: no pool, no second deadline
            ((only, only_arg),) = args.items()
            try:
                return {only: call(self.known[only], only_arg)}, {}
            except WrongRoute:
                raise
            except DomainError as exc:
                return {}, {only: exc}
        (first, first_arg), *rest = args.items()
        deadline = time.monotonic() + timeout
        # each task runs in a copy of this thread's context: it sees the served call (core.calls)
        calls = {s: _FANOUT.submit(contextvars.copy_context().run, call, self.known[s], a) for s, a in rest}
        replies: dict[str, R] = {}
        errors: dict[str, DomainError] = {}
        try:
            replies[first] = call(self.known[first], first_arg)
        except DomainError as exc:
            errors[first] = exc
        for shard_id, future in calls.items():
            try:
                replies[shard_id] = future.result(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
            except DomainError as exc:
                errors[shard_id] = exc
            except FutureTimeout:
                errors[shard_id] = DeadlineExceeded("no answer before the deadline")
        for error in errors.values():
            if isinstance(error, WrongRoute):
                raise error  # this router's view is stale: the whole call is retried on a fresh one
        return replies, errors

    def _check(self, errors: Mapping[str, DomainError], collection: str | None = None) -> None:
        """Raises the caller's errors (InvalidArgument, AlreadyExists), NotFound when every
        failing shard said so (``collection`` given), and ShardsUnavailable for the rest."""
        for error in errors.values():
            if isinstance(error, InvalidArgument | AlreadyExists):
                raise error
        if not errors:
            return
        if collection is not None and all(isinstance(e, NotFound) for e in errors.values()):
            raise NotFound(f"collection {collection!r} does not exist")
        raise ShardsUnavailable({s: status.describe(e) for s, e in errors.items()})

    def require_shards(self) -> None:
        """FailedPrecondition when the topology has no shard (nothing can be stored or searched)."""
        if not self.shards:
            raise FailedPrecondition(NO_SHARDS)

    def _group(self, ids: Sequence[str]) -> dict[str, list[int]]:
        """Positions of ``ids`` by owning shard (FailedPrecondition when there is none)."""
        self.require_shards()
        if len(self.ring.shards) == 1:  # no hashing needed
            return {self.ring.shards[0]: list(range(len(ids)))}
        groups: dict[str, list[int]] = defaultdict(list)
        for position, owner in enumerate(self.ring.owners(list(ids))):
            groups[owner].append(position)
        return groups

    def probe(self, timeout: float) -> dict[str, str]:
        """Asks every shard in parallel for its collections (a cheap call) with ``timeout``;
        returns the shards that failed, by id, with the reason (empty: all answered)."""
        _, errors = self._call(lambda shard, _: shard.list_collections(timeout), dict.fromkeys(self.shards), timeout)
        return {s: status.describe(e) for s, e in sorted(errors.items())}

    # ------------------------------------------------------------------ collections
    @rerouted
    def create_collection(self, spec: CollectionSpec, timeout: float) -> tuple[bool, CollectionSpec]:
        """Creates the collection on every shard (idempotent); created is True if any shard
        created it, and the spec is the stored one (defaults filled). FailedPrecondition when
        the topology has no shard."""
        self.require_shards()
        replies, errors = self._call(
            lambda shard, s: shard.create_collection(s, timeout), dict.fromkeys(self.known, spec), timeout
        )
        self._check(errors)
        created = any(c for c, _ in replies.values())
        return created, next(iter(replies.values()))[1]

    @rerouted
    def drop_collection(self, name: str, timeout: float) -> bool:
        replies, errors = self._call(
            lambda shard, n: shard.drop_collection(n, timeout), dict.fromkeys(self.known, name), timeout
        )
        self._check(errors)
        return any(replies.values())

    @rerouted
    def compact(self, collection: str, wait: bool, timeout: float) -> dict[str, CollectionStats]:
        """Compacts ``collection`` on every shard in parallel (waiting for each when ``wait``),
        then returns each shard's stats. Raises ``ShardsUnavailable`` if any shard failed."""
        self.require_shards()
        targets = dict.fromkeys(self.shards, collection)
        _, errors = self._call(lambda shard, c: shard.compact(c, wait, timeout), targets, timeout)
        self._check(errors, collection)
        return self.stats(collection, timeout)

    @rerouted
    def stats(self, collection: str, timeout: float) -> dict[str, CollectionStats]:
        """Every shard's stats of ``collection``, by shard id. Raises ``ShardsUnavailable`` if any
        shard failed (a count from some shards only would be wrong, not approximate)."""
        self.require_shards()
        targets = dict.fromkeys(self.shards, collection)
        replies, errors = self._call(lambda shard, c: shard.stats(c, timeout), targets, timeout)
        self._check(errors, collection)
        return dict(sorted(replies.items()))

    # ------------------------------------------------------------------ writes
    @rerouted
    def upsert(self, collection: str, batch: Batch, timeout: float) -> int:
        groups = {s: batch.take(p) for s, p in self._group(batch.ids).items()}
        replies, errors = self._call(lambda shard, b: shard.upsert(collection, b, timeout), groups, timeout)
        self._check(errors, collection)
        return sum(r.count for r in replies.values())

    @rerouted
    def delete(self, collection: str, ids: Sequence[str], timeout: float) -> int:
        groups = {s: [ids[p] for p in positions] for s, positions in self._group(ids).items()}
        replies, errors = self._call(lambda shard, i: shard.delete(collection, i, timeout), groups, timeout)
        self._check(errors, collection)
        return sum(r.count for r in replies.values())

    def get(self, collection: str, ids: Sequence[str], timeout: float) -> dict[str, Matrix]:
        """The vectors of the ids that exist, by id."""
        return {item: stored.vector for item, stored in self.fetch(collection, ids, timeout).items()}

    @rerouted
    def fetch(self, collection: str, ids: Sequence[str], timeout: float) -> dict[str, StoredItem]:
        """The vector and payload of each id that exists, by id: each pair read by its shard at
        one moment, so from one write."""
        groups = {s: [ids[p] for p in positions] for s, positions in self._group(ids).items()}
        replies, errors = self._call(lambda shard, i: shard.get(collection, i, timeout), groups, timeout)
        self._check(errors, collection)
        found: dict[str, StoredItem] = {}
        for fetched in replies.values():
            payloads = fetched.payloads or [b""] * len(fetched.ids)
            for item, vector, payload in zip(fetched.ids, fetched.vectors, payloads, strict=True):
                found[item] = StoredItem(vector, payload)
        return found

    # ------------------------------------------------------------------ search
    @rerouted
    @tracing.traced("router.fanout")
    def search(
        self,
        collection: str,
        queries: Queries,
        k: int,
        ef: int,
        timeout: float,
        require_all: bool = False,
        allow_ids: Sequence[str] | None = None,
        *,
        filter: Filter | None = None,
        explain: bool = False,
    ) -> SearchOutcome:
        """Top-k per query over every shard; see the module docstring for failure handling.

        With ``allow_ids``, results are restricted to those ids: each is sent only to its
        owning shard, and shards that own none of them are not asked at all. With ``filter``,
        every shard plans the search on its own items; a shard's ``FailedPrecondition`` (it
        holds items it cannot filter) is raised as it is. With ``explain``, each shard's
        ``SearchStats`` come back in ``SearchOutcome.stats``.
        """
        self.require_shards()
        if allow_ids is not None and not allow_ids:
            return SearchOutcome([[] for _ in range(len(queries))])
        if allow_ids is None:
            targets: dict[str, Sequence[str] | None] = dict.fromkeys(self.shards, None)
        else:
            targets = {s: [allow_ids[p] for p in positions] for s, positions in self._group(allow_ids).items()}

        # While ids move, shards may hold copies they do not own: ask for more, keep the owners' hits.
        asked = min(2 * k, SHARD_MAX_K) if self.moving and allow_ids is None else k

        def search_one(shard: ShardApi, allowed: Sequence[str] | None) -> SearchReply:
            with tracing.span("shard.search", shard=getattr(shard, "address", type(shard).__name__)):
                return shard.search(collection, queries, asked, ef, allowed, timeout, filter=filter, explain=explain)

        answers, errors = self._call(search_one, targets, timeout)
        for error in errors.values():
            if isinstance(error, InvalidArgument | FailedPrecondition):
                raise error
        replies = {s: a.hits for s, a in answers.items()}
        if asked != k:
            replies = {s: [self._owned(s, h) for h in hits] for s, hits in replies.items()}
        stats = {s: a.stats for s, a in answers.items() if a.stats is not None}
        if len(errors) == len(targets) and all(isinstance(e, NotFound) for e in errors.values()):
            raise NotFound(f"collection {collection!r} does not exist")
        failed = {s: status.describe(e) for s, e in errors.items()}
        if failed and (require_all or not replies):
            raise ShardsUnavailable(failed)
        for shard_id in failed:
            FANOUT_PARTIAL.labels(shard_id).inc()
        with tracing.span("router.merge", shards=len(replies)):
            if len(replies) == 1 and asked == k:
                (only,) = replies.values()
                return SearchOutcome([_as_hits(h) for h in only], failed, stats)
            per_shard = [[_as_hits(h) for h in reply] for reply in replies.values()]
            return SearchOutcome(merge_batches(per_shard, k, num_queries=len(queries)), failed, stats)

    def _owned(self, shard_id: str, found: QueryHits) -> QueryHits:
        """``found`` without the hits whose id ``shard_id`` does not own on this ring."""
        if not found.ids:
            return found
        keep = [i for i, owner in enumerate(self.ring.owners(found.ids)) if owner == shard_id]
        if len(keep) == len(found.ids):
            return found
        return QueryHits([found.ids[i] for i in keep], found.distances[keep])


def _as_hits(found: QueryHits) -> list[Hit]:
    """One shard's sorted hits as ``Hit`` objects, equal distances ordered by id (the merge's
    tie rule), without a merge."""
    distances = found.distances.tolist()
    hits = [Hit(i, d) for i, d in zip(found.ids, distances, strict=True)]
    if len(set(distances)) < len(distances):  # a tie: order it as the merge would
        hits.sort(key=lambda h: (h.distance, h.id))
    return hits
