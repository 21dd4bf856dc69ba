"""Who may call what: the role every RPC of the public server needs, and where its collection is.

One table, :data:`RULES`, keyed by the full gRPC method name (``/package.Service/Method``), with
a rule for every method of every service the public server registers (SearchService,
AdminService, gRPC health, reflection); ``tests/unit/test_rpc_roles.py`` fails when one is
missing, and the interceptor refuses a method without a rule (fail closed).

A rule's :class:`Scope` says how the key's collections are checked:

* ``OPEN``: no key needed at all (gRPC health: load balancers and probes carry none);
* ``COLLECTION``: the request names a collection (each message of a client stream, where an
  empty name keeps the previous one) that a restricted key must hold;
* ``GLOBAL``: no collection; any key of the role, restricted or not (ListCollections,
  ClusterStatus: the servicer shows a restricted key only its collections);
* ``CLUSTER``: changes or reveals the whole cluster (topology, rebalancing, API keys): only an
  unrestricted key of the role, or a restricted admin key could mint itself an unrestricted one.

``audit``: the call is written to the audit log (``server/auth/audit.py``) with the request
summary ``summary(request)`` (names and counts, never vectors or secrets).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from core.errors import PermissionDenied
from core.principal import Principal, Role

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
SEARCH_SERVICE = "vectorsearch.v1.SearchService"
ADMIN_SERVICE = "vectorsearch.v1.AdminService"


class Scope(enum.Enum):
    OPEN = "open"
    COLLECTION = "collection"
    GLOBAL = "global"
    CLUSTER = "cluster"


Summary = Callable[[Any], dict[str, Any]]


def _collection(request: Any) -> str:
    return str(request.collection)


def _no_summary(request: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Rule:
    """What a method needs: ``role`` (None for ``Scope.OPEN``), the ``scope`` of the key's
    collections, how to read a request's ``collection`` (COLLECTION scope), whether it is
    ``audit``-ed and its request ``summary`` for the audit log."""

    role: Role | None
    scope: Scope
    collection: Callable[[Any], str] = _collection
    audit: bool = False
    summary: Summary = _no_summary


def _read(**kw: Any) -> Rule:
    return Rule(Role.READ, Scope.COLLECTION, **kw)


def _write(**kw: Any) -> Rule:
    return Rule(Role.WRITE, Scope.COLLECTION, **kw)


def _admin_cluster(summary: Summary = _no_summary, audit: bool = True) -> Rule:
    return Rule(Role.ADMIN, Scope.CLUSTER, audit=audit, summary=summary)


OPEN_RULE = Rule(None, Scope.OPEN)

_SEARCH: dict[str, Rule] = {
    "CreateCollection": Rule(
        Role.ADMIN,
        Scope.COLLECTION,
        collection=lambda r: str(r.spec.name),
        audit=True,
        summary=lambda r: {"collection": r.spec.name, "dimension": r.spec.dimension},
    ),
    "DropCollection": Rule(Role.ADMIN, Scope.COLLECTION, audit=True, summary=lambda r: {"collection": r.collection}),
    "ListCollections": Rule(Role.READ, Scope.GLOBAL),
    "DescribeCollection": _read(),
    "Upsert": _write(),
    "UpsertStream": _write(),
    "Delete": _write(audit=True, summary=lambda r: {"collection": r.collection, "ids": len(r.ids)}),
    "Get": _read(),
    "Search": _read(),
    "SearchById": _read(),
    "SearchByText": _read(),
    "SearchByImage": _read(),
    "IngestImages": _write(),
    "IngestTexts": _write(),
    "DescribeEmbeddingModel": Rule(Role.READ, Scope.GLOBAL),
}

_ADMIN: dict[str, Rule] = {
    # readable by every key; shard addresses only for admins, counts only of the key's collections
    "ClusterStatus": Rule(Role.READ, Scope.GLOBAL),
    "Compact": Rule(
        Role.ADMIN, Scope.COLLECTION, audit=True, summary=lambda r: {"collection": r.collection, "wait": r.wait}
    ),
    "AddShard": _admin_cluster(
        lambda r: {"shard_id": r.shard_id, "address": r.address, "weight": r.weight, "no_rebalance": r.no_rebalance}
    ),
    "DrainShard": _admin_cluster(lambda r: {"shard_id": r.shard_id}),
    "RemoveShard": _admin_cluster(lambda r: {"shard_id": r.shard_id}),
    "Rebalance": _admin_cluster(lambda r: {"dry_run": r.dry_run}),
    # a read, polled every second by `vsearch admin rebalance-status --watch`: not audited
    "GetRebalanceStatus": _admin_cluster(audit=False),
    "AbortRebalance": _admin_cluster(),
    "CreateApiKey": _admin_cluster(
        lambda r: {
            "name": r.name,
            "role": _role_name(r.role),
            "collections": list(r.collections),
            "requests_per_s": r.requests_per_s,
            "items_per_s": r.items_per_s,
        }
    ),
    "ListApiKeys": _admin_cluster(lambda r: {"include_revoked": r.include_revoked}),
    "RevokeApiKey": _admin_cluster(lambda r: {"key_id": r.key_id}),
}

_HEALTH: dict[str, Rule] = {"Check": OPEN_RULE, "Watch": OPEN_RULE, "List": OPEN_RULE}

# the services' schemas: admins only once keys are configured (not audited: grpcurl asks per call)
_REFLECTION: dict[str, Rule] = {"ServerReflectionInfo": Rule(Role.ADMIN, Scope.GLOBAL)}


def _role_name(value: int) -> str | int:
    """ApiKeyRole numbers are the Role values: the role's name, else the number as sent."""
    try:
        return Role(value).name.lower()
    except ValueError:
        return int(value)


def _table(service: str, rules: dict[str, Rule]) -> dict[str, Rule]:
    return {f"/{service}/{name}": rule for name, rule in rules.items()}


RULES: dict[str, Rule] = {
    **_table(SEARCH_SERVICE, _SEARCH),
    **_table(ADMIN_SERVICE, _ADMIN),
    **_table(HEALTH_SERVICE, _HEALTH),
    **_table(REFLECTION_SERVICE, _REFLECTION),
}
"""Every RPC of the public server -> its rule."""


def method_name(full_method: str) -> str:
    """``/pkg.Service/Method`` -> ``Service/Method`` (for messages)."""
    return full_method.lstrip("/").rsplit(".", 1)[-1]


def check_call(principal: Principal, full_method: str, rule: Rule) -> None:
    """PermissionDenied unless ``principal`` may call the method at all (its role; for CLUSTER
    scope, an unrestricted key). Collections are checked per request: :func:`check_collection`."""
    if rule.scope is Scope.OPEN or rule.role is None:
        return
    if not principal.may(rule.role):
        raise PermissionDenied(
            f"{method_name(full_method)} needs the {rule.role.name.lower()} role; "
            f"API key {principal.key_id} has {principal.role.name.lower()}"
        )
    if rule.scope is Scope.CLUSTER and principal.collections is not None:
        raise PermissionDenied(
            f"{method_name(full_method)} concerns the whole cluster; API key {principal.key_id} is restricted "
            "to some collections"
        )


def check_collection(principal: Principal, full_method: str, collection: str) -> None:
    """PermissionDenied unless ``principal`` may use ``collection``."""
    if not principal.may_access(collection):
        raise PermissionDenied(
            f"{method_name(full_method)}: API key {principal.key_id} may not use collection {_short(collection)!r}"
        )


def allowed(principal: Principal, full_method: str, collections: Iterable[str] = ()) -> bool:
    """Whether ``principal`` may call the method on every one of ``collections`` (the table's
    answer, as the interceptor applies it; for tests and docs)."""
    rule = RULES[full_method]
    try:
        check_call(principal, full_method, rule)
        if rule.scope is Scope.COLLECTION:
            for collection in collections:
                check_collection(principal, full_method, collection)
    except PermissionDenied:
        return False
    return True


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
