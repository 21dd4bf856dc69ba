"""Typed results of the AdminService calls (frozen dataclasses) and their parsers.

Enum values travel as lower-case names: a rebalance's ``kind`` is ``add``, ``drain`` or
``rebalance``; its ``state`` (and each move's) is ``planned``, ``copying``, ``catching_up``,
``fencing``, ``switched``, ``cleanup``, ``done``, ``aborting`` or ``aborted``. A value this client
does not know (a newer server) raises ``UnreadableReply``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vectorsearch_client._proto import admin_service_pb2 as admin_pb
from vectorsearch_client.errors import UnreadableReply

FINISHED_STATES = frozenset({"done", "aborted"})


@dataclass(frozen=True)
class MovePlan:
    """One planned move: the ring ranges of ``source`` that ``target`` takes over and the items
    they hold now, per collection."""

    source: str
    target: str
    ranges: int
    items: dict[str, int]
    total_items: int


@dataclass(frozen=True)
class MoveStatus:
    source: str
    target: str
    state: str
    items_planned: int
    items_copied: int
    wal_lag: int
    elapsed_s: float
    error: str = ""


@dataclass(frozen=True)
class RebalanceStatus:
    rebalance_id: int
    kind: str
    state: str
    from_ring_version: int
    to_ring_version: int  # 0 until SWITCHED
    moves: list[MoveStatus]
    shard_id: str  # the shard added or drained ("" for a plain rebalance)
    error: str
    started_at: float  # unix time
    updated_at: float
    elapsed_s: float

    @property
    def finished(self) -> bool:
        """Done or aborted: the state will not change any more."""
        return self.state in FINISHED_STATES


@dataclass(frozen=True)
class RebalanceResult:
    """What ``rebalance`` planned, and the rebalance it started (None on a dry run or when
    there is nothing to move)."""

    moves: list[MovePlan]
    rebalance: RebalanceStatus | None


@dataclass(frozen=True)
class ShardStatus:
    shard_id: str
    address: str
    weight: float
    healthy: bool
    collection_counts: dict[str, int]  # empty when unhealthy
    error: str
    state: str  # active, joining, draining, drained

    @property
    def items(self) -> int:
        return sum(self.collection_counts.values())


@dataclass(frozen=True)
class ClusterStatus:
    ring_version: int
    shards: list[ShardStatus]
    rebalance: RebalanceStatus | None  # the running one


@dataclass(frozen=True)
class ShardIndexStatus:
    """Where one shard's index stands for a collection after its compaction."""

    shard_id: str
    count: int
    graph_elements: int
    delta_size: int


ROLES = ("read", "write", "admin")


@dataclass(frozen=True)
class ApiKey:
    """An API key as the server stores it (never its secret). ``role``: read, write or admin;
    ``collections``: the only ones it may use (None: every one); rate limits None: the server's
    defaults; times are unix seconds, ``revoked_at`` None while the key is valid."""

    key_id: str
    name: str
    role: str
    collections: tuple[str, ...] | None
    requests_per_s: float | None
    items_per_s: float | None
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class CreatedApiKey:
    """A new key: its record and ``api_key``, the whole key to send (``vs_<id>_<secret>``),
    returned only once."""

    key: ApiKey
    api_key: str = field(repr=False)


def role_number(role: str) -> admin_pb.ApiKeyRole:
    """``read`` / ``write`` / ``admin`` -> the ApiKeyRole value; ValueError otherwise."""
    name = role.strip().lower()
    if name not in ROLES:
        raise ValueError(f"unknown role {role!r}: read, write or admin")
    number: admin_pb.ApiKeyRole = getattr(admin_pb, f"API_KEY_ROLE_{name.upper()}")
    return number


def api_key(k: admin_pb.ApiKey) -> ApiKey:
    return ApiKey(
        key_id=k.key_id,
        name=k.name,
        role=_enum_name(admin_pb.ApiKeyRole, "API_KEY_ROLE_", k.role, "API key role"),
        collections=tuple(k.collections) or None,
        requests_per_s=float(k.requests_per_s) or None,
        items_per_s=float(k.items_per_s) or None,
        created_at=float(k.created_at),
        revoked_at=float(k.revoked_at) or None,
    )


def created_api_key(response: admin_pb.CreateApiKeyResponse) -> CreatedApiKey:
    return CreatedApiKey(api_key(response.key), response.api_key)


def api_keys(response: admin_pb.ListApiKeysResponse) -> list[ApiKey]:
    return [api_key(k) for k in response.keys]


def _enum_name(enum: Any, prefix: str, value: int, what: str) -> str:
    if value == 0 or value not in enum.values():
        raise UnreadableReply(f"unknown {what} {value}")
    return str(enum.Name(value)).removeprefix(prefix).lower()


def state_name(value: int) -> str:
    return _enum_name(admin_pb.RebalanceState, "REBALANCE_STATE_", value, "rebalance state")


def kind_name(value: int) -> str:
    return _enum_name(admin_pb.RebalanceKind, "REBALANCE_KIND_", value, "rebalance kind")


def move_plan(m: admin_pb.MovePlan) -> MovePlan:
    items = {name: int(n) for name, n in m.items.items()}
    return MovePlan(m.source, m.target, int(m.ranges), items, int(m.total_items) or sum(items.values()))


def move_status(m: admin_pb.MoveStatus) -> MoveStatus:
    return MoveStatus(
        m.source,
        m.target,
        state_name(m.state),
        int(m.items_planned),
        int(m.items_copied),
        int(m.wal_lag),
        float(m.elapsed_s),
        m.error,
    )


def rebalance_status(r: admin_pb.RebalanceStatus) -> RebalanceStatus:
    return RebalanceStatus(
        rebalance_id=int(r.rebalance_id),
        kind=kind_name(r.kind),
        state=state_name(r.state),
        from_ring_version=int(r.from_ring_version),
        to_ring_version=int(r.to_ring_version),
        moves=[move_status(m) for m in r.moves],
        shard_id=r.shard_id,
        error=r.error,
        started_at=float(r.started_at),
        updated_at=float(r.updated_at),
        elapsed_s=float(r.elapsed_s),
    )


def optional_rebalance(response: Any) -> RebalanceStatus | None:
    """The ``rebalance`` field of a response (any message with one), None when unset."""
    return rebalance_status(response.rebalance) if response.HasField("rebalance") else None


def rebalance_result(response: admin_pb.RebalanceResponse) -> RebalanceResult:
    return RebalanceResult([move_plan(m) for m in response.moves], optional_rebalance(response))


def cluster_status(response: admin_pb.ClusterStatusResponse) -> ClusterStatus:
    shards = [
        ShardStatus(
            s.shard_id,
            s.address,
            float(s.weight),
            bool(s.healthy),
            {name: int(n) for name, n in s.collection_counts.items()},
            s.error,
            s.state or "active",
        )
        for s in response.shards
    ]
    return ClusterStatus(int(response.ring_version), shards, optional_rebalance(response))


def shard_index_statuses(response: admin_pb.CompactResponse) -> list[ShardIndexStatus]:
    return [
        ShardIndexStatus(s.shard_id, int(s.count), int(s.graph_elements), int(s.delta_size)) for s in response.shards
    ]
