"""Every RPC the public server registers has a role decision (server/auth/roles.py): the methods of
SearchService, AdminService, gRPC health and reflection, enumerated from their proto descriptors.
A new RPC without a rule fails here (and would be refused by the interceptor: fail closed)."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from core.principal import OPEN, Principal, Role
from server.auth import roles
from server.auth.roles import RULES, Scope
from vsproto.v1 import admin_service_pb2, search_service_pb2

SERVICES: list[descriptor.ServiceDescriptor] = [
    search_service_pb2.DESCRIPTOR.services_by_name["SearchService"],
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
METHODS = {f"/{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}


def test_the_services_are_the_ones_the_server_registers() -> None:
    from server import main

    names = {s.full_name for s in SERVICES}
    assert names == {main.SEARCH, main.ADMIN, "grpc.health.v1.Health", reflection.SERVICE_NAME}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_has_a_rule_that_reads_its_request(method: str) -> None:
    assert method in RULES, f"{method} has no role decision in server/auth/roles.py"
    rule = RULES[method]
    assert (rule.role is None) == (rule.scope is Scope.OPEN)
    request = message_factory.GetMessageClass(METHODS[method].input_type)()
    if rule.scope is Scope.COLLECTION:
        assert rule.collection(request) == ""  # the reader names a real field of the request
    if rule.audit:
        assert isinstance(rule.summary(request), dict)


def test_no_rule_for_a_method_that_does_not_exist() -> None:
    assert set(RULES) == set(METHODS)


def test_only_health_is_open() -> None:
    assert {m for m, r in RULES.items() if r.scope is Scope.OPEN} == {
        f"/grpc.health.v1.Health/{name}" for name in ("Check", "Watch", "List")
    }


READ = Principal("r", Role.READ)
WRITE = Principal("w", Role.WRITE)
ADMIN = Principal("a", Role.ADMIN)
SCOPED_ADMIN = Principal("s", Role.ADMIN, frozenset({"mine"}))
S = "/vectorsearch.v1.SearchService/"
A = "/vectorsearch.v1.AdminService/"
REFLECT = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def test_the_roles_of_issue_18() -> None:
    reads = [S + m for m in ("Search", "SearchById", "SearchByText", "SearchByImage", "Get", "DescribeCollection")]
    reads += [S + "ListCollections", S + "DescribeEmbeddingModel", A + "ClusterStatus"]
    writes = [S + m for m in ("Upsert", "UpsertStream", "Delete", "IngestImages", "IngestTexts")]
    admins = [S + "CreateCollection", S + "DropCollection", A + "Compact", REFLECT]
    admins += [A + m for m in ("AddShard", "DrainShard", "RemoveShard", "Rebalance", "GetRebalanceStatus")]
    admins += [A + m for m in ("AbortRebalance", "CreateApiKey", "ListApiKeys", "RevokeApiKey")]
    assert sorted(reads + writes + admins) == sorted(m for m, r in RULES.items() if r.scope is not Scope.OPEN)
    for method in reads:
        assert roles.allowed(READ, method, ["c"])
    for method in writes:
        assert not roles.allowed(READ, method, ["c"]) and roles.allowed(WRITE, method, ["c"])
    for method in admins:
        assert not roles.allowed(WRITE, method, ["c"]) and roles.allowed(ADMIN, method, ["c"])
        assert roles.allowed(OPEN, method, ["c"])


def test_collection_restricted_keys() -> None:
    assert roles.allowed(SCOPED_ADMIN, S + "Search", ["mine"])
    assert not roles.allowed(SCOPED_ADMIN, S + "Search", ["other"])
    assert roles.allowed(SCOPED_ADMIN, S + "DropCollection", ["mine"])
    assert roles.allowed(SCOPED_ADMIN, S + "ListCollections")  # filtered by the servicer
    assert roles.allowed(SCOPED_ADMIN, A + "ClusterStatus")
    for cluster_wide in ("AddShard", "Rebalance", "CreateApiKey", "RevokeApiKey", "GetRebalanceStatus"):
        assert not roles.allowed(SCOPED_ADMIN, A + cluster_wide)  # could mint itself an unrestricted key


def test_audited_calls_are_the_admin_and_destructive_ones() -> None:
    audited = {m.rsplit("/", 1)[1] for m, r in RULES.items() if r.audit}
    assert audited == {
        "CreateCollection",
        "DropCollection",
        "Delete",
        "Compact",
        "AddShard",
        "DrainShard",
        "RemoveShard",
        "Rebalance",
        "AbortRebalance",
        "CreateApiKey",
        "ListApiKeys",
        "RevokeApiKey",
    }
