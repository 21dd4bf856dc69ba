"""Single-node shape: the public server owns its shard in-process (``--local-shard``), with no
second gRPC hop. Same API and results as the distributed shape; acknowledged writes survive
a SIGKILL of the server process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np

from testkit.datasets import data_and_queries
from testkit.procutil import wait_for_ready_file
from testkit.truth import exact_top_k, recall_at_k
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import admin_service_pb2_grpc as admin_grpc
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

REPO = Path(__file__).resolve().parents[2]
DIM = 16


def start(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    ready = data / "ready"
    ready.unlink(missing_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "server",
        "--local-shard",
        str(data / "shard"),
        "--database-url",
        f"sqlite:///{data / 'meta.db'}",
        "--listen",
        "127.0.0.1:0",
        "--ready-file",
        str(ready),
    ]
    with open(data / "server.log", "ab") as log:
        proc = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1")
        )
    log_tail = (data / "server.log").read_text
    return proc, wait_for_ready_file(proc, ready, 60, "server", log_tail)


def packed(matrix: np.ndarray) -> types_pb2.Vectors:
    return types_pb2.Vectors(dimension=matrix.shape[1], packed=np.ascontiguousarray(matrix, dtype="<f4").tobytes())


def test_single_node_serves_the_api_and_survives_sigkill(tmp_path: Path) -> None:
    proc, address = start(tmp_path)
    try:
        stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(address))
        spec = types_pb2.CollectionSpec(name="c", dimension=DIM, metric=types_pb2.METRIC_COSINE)
        assert stub.CreateCollection(pb.CreateCollectionRequest(spec=spec)).created
        data, queries = data_and_queries(3000, 50, DIM, seed=31)
        ids = [f"s{i}" for i in range(3000)]
        for lo in range(0, 3000, 500):
            request = pb.UpsertRequest(collection="c", vectors=packed(data[lo : lo + 500]))
            for i in range(lo, lo + 500):
                tags = request.items.add(id=ids[i]).metadata.tags
                tags.append("odd" if i % 2 else "even")
                if i % 1000 == 7:
                    tags.append("rare")
            stub.Upsert(request)
        reply = stub.Search(pb.SearchRequest(collection="c", queries=packed(queries), k=10))
        found = [[h.id for h in r.hits] for r in reply.results]
        assert not reply.partial and recall_at_k(exact_top_k(data, queries, 10, "cosine"), found, ids) >= 0.95
        odd = pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value="odd")))
        reply = stub.Search(pb.SearchRequest(collection="c", queries=packed(queries[:5]), k=5, filter=odd))
        assert all(int(h.id[1:]) % 2 for r in reply.results for h in r.hits)
        rare = pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value="rare")))
        reply = stub.Search(pb.SearchRequest(collection="c", queries=packed(queries[:5]), k=5, filter=rare))
        assert [sorted(h.id for h in r.hits) for r in reply.results] == [["s1007", "s2007", "s7"]] * 5
        none = pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value="absent")))
        reply = stub.Search(pb.SearchRequest(collection="c", queries=packed(queries[:2]), k=5, filter=none))
        assert [len(r.hits) for r in reply.results] == [0, 0]
        status = admin_grpc.AdminServiceStub(grpc.insecure_channel(address)).ClusterStatus(
            admin_pb.ClusterStatusRequest()
        )
        assert [(s.shard_id, s.healthy, s.collection_counts["c"]) for s in status.shards] == [("local-0", True, 3000)]
        assert status.shards[0].address.startswith("local:")
        compacted = admin_grpc.AdminServiceStub(grpc.insecure_channel(address)).Compact(
            admin_pb.CompactRequest(collection="c", wait=True)
        )
        assert [(s.shard_id, s.count, s.graph_elements, s.delta_size) for s in compacted.shards] == [
            ("local-0", 3000, 3000, 0)
        ]
        bad = pb.SearchRequest(collection="c", queries=packed(queries[:1, :3]), k=5)
        try:
            stub.Search(bad)
            raise AssertionError("a wrong dimension was accepted")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc, address = start(tmp_path)
        stub = pb_grpc.SearchServiceStub(grpc.insecure_channel(address))
        assert stub.DescribeCollection(pb.DescribeCollectionRequest(collection="c")).count == 3000
        got = stub.Get(pb.GetRequest(collection="c", ids=["s0", "s2999"]))
        assert [i.id for i in got.items] == ["s0", "s2999"] and got.items[1].metadata.tags == ["odd"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
