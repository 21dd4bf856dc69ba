"""Health tells the truth: a server with no shards, or with a shard down, does not report
SearchService as SERVING, and a write that needs shards it does not have is FAILED_PRECONDITION
before anything is stored."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from testkit.clusterproc import ClusterProcess
from testkit.serverproc import SingleNodeProcess
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import admin_service_pb2_grpc as admin_grpc
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

SEARCH = "vectorsearch.v1.SearchService"
ADMIN = "vectorsearch.v1.AdminService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def statuses(channel: grpc.Channel) -> dict[str, int]:
    stub = health_pb2_grpc.HealthStub(channel)
    return {name: stub.Check(health_pb2.HealthCheckRequest(service=name)).status for name in ("", SEARCH, ADMIN)}


def wait_for(channel: grpc.Channel, service: str, wanted: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while statuses(channel)[service] != wanted:
        assert time.monotonic() < deadline, f"{service or 'the process'} never became {wanted}"
        time.sleep(0.2)


def test_a_server_without_shards_says_so_and_writes_nothing(tmp_path: Path) -> None:
    server = SingleNodeProcess(tmp_path / "node", local_shard=False)
    channel = grpc.insecure_channel(server.start())
    try:
        assert statuses(channel) == {"": SERVING, SEARCH: NOT_SERVING, ADMIN: SERVING}
        stub = pb_grpc.SearchServiceStub(channel)
        spec = types_pb2.CollectionSpec(name="imgs", dimension=4, metric=types_pb2.METRIC_COSINE)
        try:
            stub.CreateCollection(pb.CreateCollectionRequest(spec=spec))
            raise AssertionError("CreateCollection succeeded without shards")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "no shards" in (exc.details() or "")
        assert not stub.ListCollections(pb.ListCollectionsRequest()).collections, "nothing was stored"
        assert not admin_grpc.AdminServiceStub(channel).ClusterStatus(admin_pb.ClusterStatusRequest()).shards
    finally:
        channel.close()
        server.stop()


def test_a_dead_shard_turns_search_not_serving_until_it_is_back(tmp_path: Path) -> None:
    cluster = ClusterProcess(tmp_path / "c", shards=2)
    cluster.start()
    try:
        assert cluster.channel is not None
        wait_for(cluster.channel, SEARCH, SERVING)
        pid = cluster.shard_pid(1)
        os.kill(pid, signal.SIGSTOP)  # hung: answers nothing, like a dead host
        try:
            wait_for(cluster.channel, SEARCH, NOT_SERVING)
            assert statuses(cluster.channel)[""] == SERVING
            status = cluster.admin().ClusterStatus(admin_pb.ClusterStatusRequest())
            assert {s.shard_id: s.healthy for s in status.shards} == {"shard-0": True, "shard-1": False}
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(cluster.channel, SEARCH, SERVING)
    finally:
        cluster.stop()
