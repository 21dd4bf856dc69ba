"""Routes writes to the owning shard and fans searches out to every shard in parallel.

* Writes: ids are grouped by ``ring.owners`` and each group goes to its shard; the groups are
  sent in parallel (blocking calls on a shared pool of long-lived threads). A write succeeds
  only if every group did; otherwise ``ShardsUnavailable`` names the shards that failed (the
  others' groups are durable, and retrying the whole write is safe because writes are
  idempotent).
* Searches: the same request goes to every shard with the caller's deadline; results are
  merged with ``merge_batches`` (deterministic ties, ids de-duplicated). A shard that fails or
  misses the deadline is reported in ``SearchOutcome.failed`` — or, with ``require_all``, the
  search raises ``ShardsUnavailable``.
* A shard's INVALID_ARGUMENT is the caller's fault and is raised as ``InvalidArgument``.

Thread-safety: a Router is immutable once built; build a new one when the topology changes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
import numpy as np
import numpy.typing as npt

from core.errors import AlreadyExists, InvalidArgument, NotFound, ShardsUnavailable
from router.local import LOCAL_PREFIX, LocalShardClient
from router.merge import Hit, merge_batches
from router.ring import HashRing
from router.topology import Topology
from shard.client import ShardClient, pack, unpack
from vsproto.v1 import shard_service_pb2 as shard_pb
from vsproto.v1 import types_pb2

Matrix = npt.NDArray[np.float32]
# Shared by every Router of the process (routers are rebuilt on topology changes); threads are
# created on demand and reused.
_FANOUT = ThreadPoolExecutor(max_workers=64, thread_name_prefix="fanout")


@dataclass
class SearchOutcome:
    results: list[list[Hit]]
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        return bool(self.failed)


def _reason(error: grpc.RpcError) -> str:
    return f"{error.code().name}: {error.details()}"


class ShardEndpoint(Protocol):
    """A remote ``ShardClient`` or an in-process ``LocalShardClient``: the router can't tell."""

    stub: Any

    def close(self) -> None: ...


class Router:
    def __init__(self, ring: HashRing, clients: Mapping[str, ShardEndpoint]) -> None:
        missing = set(ring.shards) - set(clients)
        if missing:
            raise ValueError(f"no client for shards {sorted(missing)}")
        self.ring = ring
        self.clients = clients

    @classmethod
    def connect(cls, topology: Topology, local: Mapping[str, ShardEndpoint] | None = None) -> Router:
        """A router over every shard of ``topology``: one channel per remote shard, and the
        in-process endpoint for shards whose address is ``local:...`` (they must be in
        ``local``: only the process that owns such a shard can route to it)."""
        local = local or {}
        clients: dict[str, ShardEndpoint] = {}
        for shard in topology.shards:
            if shard.address.startswith(LOCAL_PREFIX):
                if shard.shard_id not in local:
                    raise ValueError(f"shard {shard.shard_id} lives in another process ({shard.address})")
                clients[shard.shard_id] = local[shard.shard_id]
            else:
                clients[shard.shard_id] = ShardClient(shard.address)
        return cls(topology.ring(), clients)

    def close(self) -> None:
        for client in self.clients.values():
            client.close()

    # ------------------------------------------------------------------ helpers
    def _call(
        self, method: str, requests: Mapping[str, Any], timeout: float
    ) -> tuple[dict[str, Any], dict[str, grpc.RpcError]]:
        """Sends ``requests[shard]`` to each shard's ``method`` with one deadline; returns
        (replies, errors) by shard. The first shard is called on this thread; the others in
        parallel on the shared fan-out pool (blocking calls on long-lived threads: grpcio's
        ``.future()`` starts a thread per call on an idle channel, which costs more than the
        call itself)."""
        (first, first_request), *rest = requests.items()
        deadline = time.monotonic() + timeout
        calls = {s: _FANOUT.submit(self._blocking, s, method, r, timeout) for s, r in rest}
        replies: dict[str, Any] = {}
        errors: dict[str, grpc.RpcError] = {}
        try:
            replies[first] = self._blocking(first, method, first_request, timeout)
        except grpc.RpcError as exc:
            errors[first] = exc
        more_replies, more_errors = self._gather(calls, deadline)
        replies.update(more_replies)
        errors.update(more_errors)
        return replies, errors

    def _blocking(self, shard_id: str, method: str, request: Any, timeout: float) -> Any:
        return getattr(self.clients[shard_id].stub, method)(request, timeout=timeout)

    def _gather(
        self, calls: Mapping[str, Future[Any]], deadline: float
    ) -> tuple[dict[str, object], dict[str, grpc.RpcError]]:
        """Waits for every call (each carries its own deadline); splits replies and errors."""
        replies: dict[str, object] = {}
        errors: dict[str, grpc.RpcError] = {}
        for shard_id, future in calls.items():
            try:
                replies[shard_id] = future.result(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
            except grpc.RpcError as exc:
                errors[shard_id] = exc
            except FutureTimeout:
                errors[shard_id] = _TimeoutError()
        return replies, errors

    @staticmethod
    def _raise_client_errors(errors: dict[str, grpc.RpcError]) -> None:
        for error in errors.values():
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(error.details() or "invalid argument")

    def _group(self, ids: Sequence[str]) -> dict[str, list[int]]:
        """Positions of ``ids`` by owning shard."""
        if len(self.ring.shards) == 1:  # no hashing needed
            return {self.ring.shards[0]: list(range(len(ids)))}
        groups: dict[str, list[int]] = defaultdict(list)
        for position, owner in enumerate(self.ring.owners(list(ids))):
            groups[owner].append(position)
        return groups

    # ------------------------------------------------------------------ collections
    def create_collection(self, spec: types_pb2.CollectionSpec, timeout: float) -> shard_pb.CreateCollectionResponse:
        """Creates the collection on every shard (idempotent); returns one shard's reply."""
        request = shard_pb.CreateCollectionRequest(spec=spec)
        replies, errors = self._call("CreateCollection", dict.fromkeys(self.clients, request), timeout)
        self._raise_client_errors(errors)
        for error in errors.values():
            if error.code() == grpc.StatusCode.ALREADY_EXISTS:
                raise AlreadyExists(error.details() or "collection exists with another spec")
        if errors:
            raise ShardsUnavailable({s: _reason(e) for s, e in errors.items()})
        created = any(r.created for r in replies.values())
        reply = next(iter(replies.values()))
        return shard_pb.CreateCollectionResponse(created=created, spec=reply.spec)

    def drop_collection(self, name: str, timeout: float) -> bool:
        request = shard_pb.DropCollectionRequest(collection=name)
        replies, errors = self._call("DropCollection", dict.fromkeys(self.clients, request), timeout)
        self._raise_client_errors(errors)
        if errors:
            raise ShardsUnavailable({s: _reason(e) for s, e in errors.items()})
        return any(r.dropped for r in replies.values())

    def compact(self, collection: str, wait: bool, timeout: float) -> dict[str, shard_pb.CollectionStats]:
        """Compacts ``collection`` on every shard in parallel (waiting for each when ``wait``),
        then returns each shard's stats. Raises ``ShardsUnavailable`` if any shard failed."""
        request = shard_pb.CompactRequest(collection=collection, wait=wait)
        _, errors = self._call("Compact", dict.fromkeys(self.clients, request), timeout)
        self._raise_not_found(errors, collection)
        if errors:
            raise ShardsUnavailable({s: _reason(e) for s, e in errors.items()})
        stats_request = shard_pb.StatsRequest(collection=collection)
        replies, errors = self._call("Stats", dict.fromkeys(self.clients, stats_request), timeout)
        self._raise_not_found(errors, collection)
        if errors:
            raise ShardsUnavailable({s: _reason(e) for s, e in errors.items()})
        return {shard_id: reply.stats for shard_id, reply in sorted(replies.items())}

    # ------------------------------------------------------------------ writes
    def upsert(self, collection: str, ids: Sequence[str], vectors: Matrix, timeout: float) -> int:
        requests = {}
        for shard_id, positions in self._group(ids).items():
            whole = len(positions) == len(ids)  # one owner: no gather copies
            request = shard_pb.UpsertRequest(
                collection=collection,
                ids=ids if whole else [ids[p] for p in positions],
                vectors=pack(vectors if whole else vectors[positions]),
            )
            requests[shard_id] = request
        replies, errors = self._call("Upsert", requests, timeout)
        self._raise_not_found(errors, collection)
        self._raise_client_errors(errors)
        if errors:
            raise ShardsUnavailable({s: _reason(e) for s, e in errors.items()})
        return sum(r.upserted for r in replies.values())

    def delete(self, collection: str, ids: Sequence[str], timeout: float) -> int:
        requests = {}
        for shard_id, positions in self._group(ids).items():
            request = shard_pb.DeleteRequest(collection=collection, ids=[ids[p] for p in positions])
            requests[shard_id] = request
        replies, errors = self._call("Delete", requests, timeout)
        self._raise_not_found(errors, collection)
        self._raise_client_errors(errors)
        if errors:
            raise ShardsUnavailable({s: _reason(e) for s, e in errors.items()})
        return sum(r.deleted for r in replies.values())

    def get(self, collection: str, ids: Sequence[str], timeout: float) -> dict[str, Matrix]:
        requests = {}
        for shard_id, positions in self._group(ids).items():
            request = shard_pb.GetRequest(collection=collection, ids=[ids[p] for p in positions])
            requests[shard_id] = request
        replies, errors = self._call("Get", requests, timeout)
        self._raise_not_found(errors, collection)
        self._raise_client_errors(errors)
        if errors:
            raise ShardsUnavailable({s: _reason(e) for s, e in errors.items()})
        found: dict[str, Matrix] = {}
        for reply in replies.values():
            if reply.ids:
                matrix = unpack(reply.vectors)
                found.update(zip(reply.ids, matrix, strict=True))
        return found

    @staticmethod
    def _raise_not_found(errors: dict[str, grpc.RpcError], collection: str) -> None:
        if errors and all(e.code() == grpc.StatusCode.NOT_FOUND for e in errors.values()):
            raise NotFound(f"collection {collection!r} does not exist")

    # ------------------------------------------------------------------ search
    def search(
        self,
        collection: str,
        queries: Matrix,
        k: int,
        ef: int,
        timeout: float,
        require_all: bool = False,
        allow_ids: Sequence[str] | None = None,
    ) -> SearchOutcome:
        """Top-k per query over every shard; see the module docstring for failure handling.

        With ``allow_ids``, results are restricted to those ids: each is sent only to its
        owning shard, and shards that own none of them are not asked at all.
        """
        if allow_ids is not None and not allow_ids:
            return SearchOutcome([[] for _ in range(len(queries))])
        if len(self.clients) == 1:
            (only,) = self.clients.values()
            if isinstance(only, LocalShardClient):  # the single-node shape: no messages at all
                found = only.search(collection, queries, k, ef, allow_ids)
                return SearchOutcome(
                    [[Hit(i, d) for i, d in zip(h.ids, h.distances.tolist(), strict=True)] for h in found]
                )
        packed = pack(queries)
        if allow_ids is None:
            request = shard_pb.SearchRequest(collection=collection, queries=packed, k=k, ef=ef)
            requests = dict.fromkeys(self.clients, request)
        else:
            requests = {}
            for shard_id, positions in self._group(allow_ids).items():
                requests[shard_id] = shard_pb.SearchRequest(
                    collection=collection, queries=packed, k=k, ef=ef, allow_ids=[allow_ids[p] for p in positions]
                )
        replies, errors = self._call("Search", requests, timeout)
        self._raise_client_errors(errors)
        if len(errors) == len(requests) and all(e.code() == grpc.StatusCode.NOT_FOUND for e in errors.values()):
            raise NotFound(f"collection {collection!r} does not exist")
        failed = {s: _reason(e) for s, e in errors.items()}
        if failed and (require_all or not replies):
            raise ShardsUnavailable(failed)
        per_shard = [
            [[Hit(i, float(d)) for i, d in zip(r.ids, r.distances, strict=True)] for r in reply.results]
            for reply in replies.values()
        ]
        return SearchOutcome(merge_batches(per_shard, k, num_queries=len(queries)), failed)


class _TimeoutError(grpc.RpcError):
    """Stands in for a call that outlived its deadline on the client side."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "no answer before the deadline"
