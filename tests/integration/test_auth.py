"""API keys, roles and the audit log on a real server process over a real socket (issue #18).

Every RPC the server registers is called with no key, a malformed key, a read, a write and an
admin key and an admin key restricted to another collection, and must answer UNAUTHENTICATED,
PERMISSION_DENIED or anything else (allowed) exactly as ``server/auth/roles.py`` says; health
stays open. Also: a restricted key lists only its collections and has each client-stream message
checked; ClusterStatus hides shard addresses from non-admins; the audit log has one line per
admin or destructive call, refused ones included; a server without keys runs open (a WARNING at
start) until the first key is created; a key revoked on one server stops on another sharing the
database within 2 seconds, without a restart.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message_factory
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from vectorsearch_client import AsyncClient, Client, PermissionDenied, Unauthenticated

from core.principal import Principal, Role
from server.auth import roles
from server.auth.roles import Scope
from testkit.serverproc import SingleNodeProcess
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import types_pb2

BOOTSTRAP = "bootstrap-admin-key-for-the-tests"
DIM = 4
SERVICES: list[descriptor.ServiceDescriptor] = [
    pb.DESCRIPTOR.services_by_name["SearchService"],
    admin_pb.DESCRIPTOR.services_by_name["AdminService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
]
METHODS = {f"/{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}


def vec() -> types_pb2.Vectors:
    return types_pb2.Vectors(dimension=DIM, values=[1.0, 0.5, 0.25, 0.125])


def upsert(collection: str, item: str = "x") -> pb.UpsertRequest:
    return pb.UpsertRequest(collection=collection, items=[pb.ItemMetadata(id=item)], vectors=vec())


# One harmless request (or client stream) per RPC, about collection "c" where it names one; the
# destructive ones aim at nothing (a missing collection or id, an empty shard id, a dry run).
REQUESTS: dict[str, list[Any]] = {
    "CreateCollection": [
        pb.CreateCollectionRequest(
            spec=types_pb2.CollectionSpec(name="c", dimension=DIM, metric=types_pb2.METRIC_COSINE)
        )
    ],
    "DropCollection": [pb.DropCollectionRequest(collection="gone")],
    "ListCollections": [pb.ListCollectionsRequest()],
    "DescribeCollection": [pb.DescribeCollectionRequest(collection="c")],
    "Upsert": [upsert("c")],
    "UpsertStream": [upsert("c"), upsert("", "y")],
    "Delete": [pb.DeleteRequest(collection="c", ids=["missing"])],
    "Get": [pb.GetRequest(collection="c", ids=["x"])],
    "Search": [pb.SearchRequest(collection="c", queries=vec(), k=1)],
    "SearchById": [pb.SearchByIdRequest(collection="c", id="x", k=1)],
    "SearchByText": [pb.SearchByTextRequest(collection="c", texts=["a cat"], k=1)],
    "SearchByImage": [pb.SearchByImageRequest(collection="c", images=[b"not an image"], k=1)],
    "IngestImages": [pb.IngestImagesRequest(collection="c", items=[pb.ImageItem(data=b"not an image")])],
    "IngestTexts": [pb.IngestTextsRequest(collection="c", items=[pb.TextItem(text="a cat")])],
    "DescribeEmbeddingModel": [pb.DescribeEmbeddingModelRequest()],
    "ClusterStatus": [admin_pb.ClusterStatusRequest()],
    "Compact": [admin_pb.CompactRequest(collection="c", wait=False)],
    "AddShard": [admin_pb.AddShardRequest(shard_id="")],
    "DrainShard": [admin_pb.DrainShardRequest(shard_id="")],
    "RemoveShard": [admin_pb.RemoveShardRequest(shard_id="")],
    "Rebalance": [admin_pb.RebalanceRequest(dry_run=True)],
    "GetRebalanceStatus": [admin_pb.GetRebalanceStatusRequest()],
    "AbortRebalance": [admin_pb.AbortRebalanceRequest()],
    "CreateApiKey": [admin_pb.CreateApiKeyRequest(name="never")],  # no role: INVALID_ARGUMENT, nothing made
    "ListApiKeys": [admin_pb.ListApiKeysRequest()],
    "RevokeApiKey": [admin_pb.RevokeApiKeyRequest(key_id="000000000000")],
    "Check": [health_pb2.HealthCheckRequest()],
    "List": [health_pb2.HealthListRequest()],
    "Watch": [health_pb2.HealthCheckRequest()],
    "ServerReflectionInfo": [reflection_pb2.ServerReflectionRequest(list_services="")],
}

DENIED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def call(channel: grpc.Channel, full: str, key: str | None, rid: str | None = None) -> grpc.StatusCode:
    """Calls ``full`` with its REQUESTS and ``key``; the status code (a response stream: OK once
    its first message arrived, then cancelled)."""
    method = METHODS[full]
    messages = REQUESTS[method.name]
    response_cls = message_factory.GetMessageClass(method.output_type)
    kinds: dict[tuple[bool, bool], Any] = {
        (False, False): channel.unary_unary,
        (True, False): channel.stream_unary,
        (False, True): channel.unary_stream,
        (True, True): channel.stream_stream,
    }
    stub = kinds[(method.client_streaming, method.server_streaming)](
        full, request_serializer=lambda m: m.SerializeToString(), response_deserializer=response_cls.FromString
    )
    metadata = [("authorization", f"Bearer {key}")] if key else []
    if rid:
        metadata.append(("x-request-id", rid))
    request: Any = iter(messages) if method.client_streaming else messages[0]
    try:
        if method.server_streaming:
            responses = stub(request, metadata=metadata, timeout=10)
            next(responses)
            responses.cancel()
        else:
            stub(request, metadata=metadata, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@dataclass
class Server:
    process: SingleNodeProcess
    channel: grpc.Channel
    audit: Path
    keys: dict[str, str]  # kind -> the whole key

    @property
    def address(self) -> str:
        return self.process.address

    def client(self, kind: str | None) -> Client:
        return Client(self.address, api_key=self.keys[kind] if kind else None)


PRINCIPALS = {
    "read": Principal("r", Role.READ),
    "write": Principal("w", Role.WRITE),
    "admin": Principal("a", Role.ADMIN),
    "restricted": Principal("s", Role.ADMIN, frozenset({"other"})),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("auth")
    key_file = tmp / "admin.key"
    key_file.write_text(BOOTSTRAP + "\n")
    audit = tmp / "audit.jsonl"
    process = SingleNodeProcess(tmp / "node", "--admin-key-file", str(key_file), "--audit-log", str(audit))
    process.start()
    channel = grpc.insecure_channel(process.address)
    try:
        with Client(process.address, api_key=BOOTSTRAP) as boot:
            boot.create_collection("c", DIM)
            boot.create_collection("other", DIM)
            boot.upsert("c", ["x"], [[1.0, 0.5, 0.25, 0.125]])
            keys = {
                kind: boot.create_api_key(kind, role).api_key
                for kind, role in (("read", "read"), ("write", "write"), ("admin", "admin"))
            }
            keys["restricted"] = boot.create_api_key("restricted", "admin", collections=["other"]).api_key
        yield Server(process, channel, audit, keys)
    finally:
        channel.close()
        process.stop()


def expected(kind: str | None, full: str) -> str:
    """What the table says for a caller with a key of ``kind`` (None: no key, "bad": a key the
    server does not know): "allowed", "UNAUTHENTICATED" or "PERMISSION_DENIED"."""
    rule = roles.RULES[full]
    if rule.scope is Scope.OPEN:
        return "allowed"
    if kind is None or kind == "bad":
        return "UNAUTHENTICATED"
    method = METHODS[full]
    collections: list[str] = []
    if rule.scope is Scope.COLLECTION:
        collections = [rule.collection(m) for m in REQUESTS[method.name] if rule.collection(m)]
    return "allowed" if roles.allowed(PRINCIPALS[kind], full, collections) else "PERMISSION_DENIED"


def test_the_matrix_covers_every_rpc_of_the_table() -> None:
    assert set(METHODS) == set(roles.RULES)
    assert {m.name for m in METHODS.values()} == set(REQUESTS)


def test_every_rpc_with_every_kind_of_key(server: Server) -> None:
    bad = "vs_0123456789ab_" + "A" * 43
    got: dict[tuple[str | None, str], str] = {}
    for kind in (None, "bad", "read", "write", "admin", "restricted"):
        key = bad if kind == "bad" else server.keys[kind] if kind else None
        for full in sorted(METHODS):
            code = call(server.channel, full, key)
            got[(kind, full)] = code.name if code in DENIED else "allowed"
    mismatches = {k: v for k, v in got.items() if v != expected(*k)}
    assert mismatches == {}
    # the table, spelled out for a few: the checks above are not only the table against itself
    s, a = "/vectorsearch.v1.SearchService/", "/vectorsearch.v1.AdminService/"
    reflect = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert got[("read", s + "Search")] == "allowed" and got[("read", s + "Upsert")] == "PERMISSION_DENIED"
    assert (
        got[("write", s + "UpsertStream")] == "allowed" and got[("write", s + "DropCollection")] == "PERMISSION_DENIED"
    )
    assert got[("admin", a + "RemoveShard")] == "allowed" and got[("admin", reflect)] == "allowed"
    assert got[("read", reflect)] == "PERMISSION_DENIED" and got[(None, reflect)] == "UNAUTHENTICATED"
    assert got[("restricted", s + "Search")] == "PERMISSION_DENIED"
    assert got[("restricted", a + "CreateApiKey")] == "PERMISSION_DENIED"
    assert got[("restricted", s + "ListCollections")] == "allowed"
    assert got[(None, "/grpc.health.v1.Health/Check")] == "allowed"
    assert got[("bad", "/grpc.health.v1.Health/Watch")] == "allowed"


def test_errors_never_echo_the_secret(server: Server) -> None:
    wrong = server.keys["read"][:-4] + "AAAA"
    with Client(server.address, api_key=wrong) as client, pytest.raises(Unauthenticated) as refused:
        client.list_collections()
    assert wrong.split("_", 2)[2] not in refused.value.message
    with server.client("read") as client, pytest.raises(PermissionDenied) as denied:
        client.drop_collection("c")
    assert server.keys["read"].split("_", 2)[2] not in denied.value.message
    assert "admin role" in denied.value.message


def test_a_restricted_key_sees_and_streams_only_its_collections(server: Server) -> None:
    with server.client("restricted") as restricted, server.client("admin") as admin:
        assert [c.name for c in restricted.list_collections()] == ["other"]
        assert sorted(c.name for c in admin.list_collections()) == ["c", "other"]
        assert restricted.upsert("other", ["o1"], [[1.0, 0.0, 0.0, 0.0]]) == 1
        stub = restricted._stubs["vectorsearch.v1.SearchService"]
        metadata = [("authorization", f"Bearer {server.keys['restricted']}")]
        with pytest.raises(grpc.RpcError) as refused:
            stub.UpsertStream(iter([upsert("other", "o2"), upsert("", "o3"), upsert("c", "sneaky")]), metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'c'" in (refused.value.details() or "")
        assert sorted(i.id for i in admin.get("other", ["o2", "o3"]).items) == ["o2", "o3"]  # before the refused one
        assert admin.get("c", ["sneaky"]).missing_ids == ["sneaky"]


def test_cluster_status_hides_shard_addresses_from_non_admins(server: Server) -> None:
    with server.client("admin") as admin, server.client("read") as read, server.client("restricted") as restricted:
        assert all(s.address for s in admin.cluster_status().shards)
        shards = read.cluster_status().shards
        assert shards and all(s.address == "" for s in shards)
        assert set(shards[0].collection_counts) == {"c", "other"}
        assert set(restricted.cluster_status().shards[0].collection_counts) == {"other"}


def audit_lines(path: Path, skip: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()[skip:]]


def test_the_audit_log_has_one_line_per_admin_or_destructive_call(server: Server) -> None:
    before = len(server.audit.read_text().splitlines())
    s, a = "/vectorsearch.v1.SearchService/", "/vectorsearch.v1.AdminService/"
    with server.client("admin") as admin, server.client("write") as write, server.client("read") as read:
        admin.create_collection("audited", DIM)
        write.upsert("audited", ["i1", "i2"], [[1.0, 0, 0, 0], [0, 1.0, 0, 0]])  # not audited
        read.search("audited", [1.0, 0, 0, 0], k=1)  # not audited
        assert write.delete("audited", ["i1", "i2"]) == 2
        with pytest.raises(PermissionDenied):
            read.delete("audited", ["i1"])
        admin.compact("audited")
        created = admin.create_api_key("audit-me", "read", collections=["audited"])
        admin.revoke_api_key(created.key.key_id)
        admin.drop_collection("audited")
    assert call(server.channel, s + "Delete", None, rid="rid-unauthenticated") == grpc.StatusCode.UNAUTHENTICATED
    assert call(server.channel, a + "Rebalance", server.keys["admin"], rid="rid-rebalance") == grpc.StatusCode.OK
    lines = audit_lines(server.audit, before)
    ids = {kind: key.split("_")[1] for kind, key in server.keys.items()}
    assert [(x["method"], x["key_id"], x["outcome"], x["request"]) for x in lines] == [
        (s + "CreateCollection", ids["admin"], "OK", {"collection": "audited", "dimension": DIM}),
        (s + "Delete", ids["write"], "OK", {"collection": "audited", "ids": 2}),
        (s + "Delete", ids["read"], "PERMISSION_DENIED", {"collection": "audited", "ids": 1}),
        (a + "Compact", ids["admin"], "OK", {"collection": "audited", "wait": True}),
        (
            a + "CreateApiKey",
            ids["admin"],
            "OK",
            {"name": "audit-me", "role": "read", "collections": ["audited"], "requests_per_s": 0.0, "items_per_s": 0.0},
        ),
        (a + "RevokeApiKey", ids["admin"], "OK", {"key_id": created.key.key_id}),
        (s + "DropCollection", ids["admin"], "OK", {"collection": "audited"}),
        (s + "Delete", None, "UNAUTHENTICATED", {"collection": "c", "ids": 1}),
        (a + "Rebalance", ids["admin"], "OK", {"dry_run": True}),
    ]
    for line in lines:
        assert list(line) == ["time", "key_id", "peer", "method", "request", "outcome", "request_id", "duration_ms"]
        assert line["peer"].startswith("ipv4:127.0.0.1:") and line["request_id"]
        assert line["time"].endswith("+00:00")
    assert [x["request_id"] for x in lines[-2:]] == ["rid-unauthenticated", "rid-rebalance"]
    text = server.audit.read_text()
    assert all(key.split("_", 2)[2] not in text for key in server.keys.values()) and BOOTSTRAP not in text
    assert created.api_key.split("_", 2)[2] not in text


def wait_for(condition: Any, limit_s: float) -> float:
    """Seconds until ``condition()`` held (AssertionError after ``limit_s``)."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit_s, f"not within {limit_s} s"
        time.sleep(0.05)
    return time.monotonic() - started


def refused(address: str, key: str | None) -> bool:
    with Client(address, api_key=key, timeout=5) as client:
        try:
            client.list_collections()
        except Unauthenticated:
            return True
    return False


def test_open_until_the_first_key_and_revocation_across_servers(tmp_path: Path) -> None:
    """Two servers on one database, no bootstrap key: open (a WARNING says so) until a key is
    created through A; then both need keys; a key revoked through A stops on B within 2 s."""
    a = SingleNodeProcess(tmp_path / "a", local_shard=False)
    database = f"sqlite:///{tmp_path / 'a' / 'meta.db'}"
    b = SingleNodeProcess(tmp_path / "b", "--database-url", database, local_shard=False)
    try:
        a.start()
        b.start()
        for node in (a, b):
            assert "WARNING server.auth: no API keys are configured: the service is OPEN" in node.log_tail()
            assert not refused(node.address, None)
        with Client(a.address) as anyone:  # open: anyone may create the first key
            admin_key = anyone.create_api_key("first-admin", "admin").api_key
        assert refused(a.address, None)  # at once on the server that created it
        assert wait_for(lambda: refused(b.address, None), 2.5) < 2.5  # B re-reads within its refresh
        assert "API keys are enforced from now on" in a.log_tail()
        with Client(a.address, api_key=admin_key) as admin:
            created = admin.create_api_key("reader", "read")
            assert not refused(b.address, created.api_key)  # a new key works on B at once
            assert admin.revoke_api_key(created.key.key_id)
        took = wait_for(lambda: refused(b.address, created.api_key), 3.0)
        assert took <= 2.0 + 0.5, took  # 2 s at most, plus the calls' own time on a busy machine
        assert refused(a.address, created.api_key)
        assert not refused(b.address, admin_key)
    finally:
        a.stop()
        b.stop()


def test_the_sdk_manages_keys_sync_and_async(server: Server) -> None:
    with server.client("admin") as admin:
        created = admin.create_api_key("sdk", "write", collections=["c"], requests_per_s=10, items_per_s=1000)
        key = created.key
        assert (key.name, key.role, key.collections, key.requests_per_s, key.items_per_s) == (
            "sdk",
            "write",
            ("c",),
            10.0,
            1000.0,
        )
        assert created.api_key.startswith(f"vs_{key.key_id}_") and created.api_key not in repr(created)
        assert {k.key_id: k for k in admin.list_api_keys()}[key.key_id] == key
        with pytest.raises(ValueError):
            admin.create_api_key("x", "superuser")
    with Client(server.address, api_key=created.api_key) as sdk_key:
        assert sdk_key.upsert("c", ["w1"], [[0.0, 1.0, 0.0, 0.0]]) == 1

    async def manage() -> None:
        async with AsyncClient(server.address, api_key=server.keys["admin"]) as client:
            assert key.key_id in {k.key_id for k in await client.list_api_keys()}
            assert await client.revoke_api_key(key.key_id)
            assert not await client.revoke_api_key(key.key_id)
            revoked = {k.key_id: k for k in await client.list_api_keys(include_revoked=True)}[key.key_id]
            assert revoked.revoked and key.key_id not in {k.key_id for k in await client.list_api_keys()}
            made = await client.create_api_key("async", "read")
            assert made.key.role == "read" and made.key.collections is None

    asyncio.run(manage())
    assert refused(server.address, created.api_key)


def test_a_rate_limited_key_is_refused_while_another_key_is_not(tmp_path: Path) -> None:
    """Per-key limits from the key store reach the rate limiter through the bound Principal: a
    key allowed 1 request/s is refused with a retry hint on its second call in a row, while an
    unlimited key (the server's defaults: none) and the admin key go on."""
    key_file = tmp_path / "admin.key"
    key_file.write_text(BOOTSTRAP + "\n")
    process = SingleNodeProcess(tmp_path / "node", "--admin-key-file", str(key_file))
    process.start()
    try:
        with Client(process.address, api_key=BOOTSTRAP, max_attempts=1) as admin:
            admin.create_collection("c", DIM)
            slow = admin.create_api_key("slow", "read", requests_per_s=1.0).api_key
            fast = admin.create_api_key("fast", "read").api_key
        channel = grpc.insecure_channel(process.address)
        try:
            list_collections = channel.unary_unary(
                "/vectorsearch.v1.SearchService/ListCollections",
                request_serializer=pb.ListCollectionsRequest.SerializeToString,
                response_deserializer=pb.ListCollectionsResponse.FromString,
            )

            def call(key: str) -> grpc.RpcError | None:
                try:
                    list_collections(
                        pb.ListCollectionsRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=5
                    )
                except grpc.RpcError as exc:
                    return exc
                return None

            assert call(slow) is None
            refused = call(slow)
            assert refused is not None and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
            hint: dict[str, Any] = {m.key: m.value for m in refused.trailing_metadata() or ()}
            assert 0 < int(hint["retry-after-ms"]) <= 1000
            assert all(call(fast) is None for _ in range(20))
            assert call(BOOTSTRAP) is None
            time.sleep(int(hint["retry-after-ms"]) / 1000 + 0.05)
            assert call(slow) is None  # the hint was honest
        finally:
            channel.close()
    finally:
        process.stop()
