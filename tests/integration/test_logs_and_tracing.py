"""Structured logs and tracing on real processes (issue #17 parts 4 and 5).

Logs: a single-node server with ``--log-format json``: every line parses, a call's lines carry
the caller's ``x-request-id``, which comes back in the reply's metadata; a bad request is logged
below WARNING.

Tracing: the public server built in-process (SearchServicer over an Engine over a Router) with
an in-memory exporter, against two real shard processes that write their spans to a file: one
search gives the span tree public RPC → planning → fan-out → per-shard search → client call →
the shard's server span (same trace, across the socket), plus merge and metadata join.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import logs, tracing
from router.fanout import Router
from router.topology import TopologyStore, make_engine
from server.engine import Engine
from server.metadata import MetadataStore
from server.service import SearchServicer
from testkit.serverproc import SingleNodeProcess
from testkit.shardproc import ShardProcess
from vsproto.handlers import add_servicer
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

DIM = 8


def packed(matrix: np.ndarray) -> types_pb2.Vectors:
    return types_pb2.Vectors(dimension=matrix.shape[1], packed=np.ascontiguousarray(matrix, dtype="<f4").tobytes())


def fill(stub: pb_grpc.SearchServiceStub, n: int = 50) -> np.ndarray:
    spec = types_pb2.CollectionSpec(name="c", dimension=DIM, metric=types_pb2.METRIC_COSINE)
    assert stub.CreateCollection(pb.CreateCollectionRequest(spec=spec)).created
    data = np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32)
    request = pb.UpsertRequest(collection="c", vectors=packed(data))
    for i in range(n):
        request.items.add(id=f"i{i}")
    stub.Upsert(request)
    return data


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line is a JSON object


# ---------------------------------------------------------------------------- logs
def test_json_logs_carry_the_request_id_which_comes_back_to_the_caller(tmp_path: Path) -> None:
    server = SingleNodeProcess(tmp_path / "node", "--log-format", "json", "--log-level", "DEBUG")
    channel = grpc.insecure_channel(server.start())
    try:
        stub = pb_grpc.SearchServiceStub(channel)
        data = fill(stub)
        reply, call = stub.Search.with_call(
            pb.SearchRequest(collection="c", queries=packed(data[:1]), k=3), metadata=(("x-request-id", "abc"),)
        )
        assert len(reply.results[0].hits) == 3
        assert ("x-request-id", "abc") in tuple(call.trailing_metadata())
        with pytest.raises(grpc.RpcError) as bad:
            stub.Search(
                pb.SearchRequest(collection="c", queries=packed(data[:1, :3]), k=3),
                metadata=(("x-request-id", "bad-1"),),
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        failed: Any = bad.value  # a grpc.Call too
        assert ("x-request-id", "bad-1") in tuple(failed.trailing_metadata())
        _, plain = stub.Search.with_call(pb.SearchRequest(collection="c", queries=packed(data[:1]), k=3))
        generated = dict(plain.trailing_metadata())["x-request-id"]
        assert len(generated) == 32  # none sent: one was made

        deadline = time.monotonic() + 10
        while True:
            records = json_lines(server.log_path)
            mine = [r for r in records if r.get("request_id") == "abc"]
            bad_lines = [r for r in records if r.get("request_id") == "bad-1"]
            if (mine and bad_lines) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        channel.close()
        server.stop()
    records = json_lines(server.log_path)
    assert records, server.log_tail()
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r["message"].startswith("server serving on") for r in records)
    mine = [r for r in records if r.get("request_id") == "abc"]
    assert mine and all(r["level"] == "DEBUG" for r in mine), mine
    assert any(r.get("rpc_method") == "/vectorsearch.v1.SearchService/Search" and r["code"] == "OK" for r in mine)
    bad_lines = [r for r in records if r.get("request_id") == "bad-1"]
    assert bad_lines and all(r["level"] in ("DEBUG", "INFO") for r in bad_lines), bad_lines
    assert any(r.get("code") == "INVALID_ARGUMENT" for r in bad_lines)
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], records
    assert any(r.get("request_id") == generated for r in records)


def test_the_text_format_is_the_default(tmp_path: Path) -> None:
    server = SingleNodeProcess(tmp_path / "node")
    server.start()
    server.stop()
    lines = server.log_path.read_text().splitlines()
    assert lines and not any(line.startswith("{") for line in lines)
    # "2026-12-03 07:50:23,682 WARNING server.auth: ..." (asctime, level, logger: message)
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING) [\w.]+: ", lines[0]), lines[0]


# ---------------------------------------------------------------------------- tracing
@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.install(provider)
    try:
        yield memory
    finally:
        tracing.install(None)
        provider.shutdown()


def test_one_search_gives_a_span_tree_across_server_and_shards(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    trace_file = tmp_path / "shard-spans.jsonl"
    shards = [ShardProcess(tmp_path / f"shard-{i}", "--trace-file", str(trace_file)) for i in range(2)]
    for shard in shards:
        shard.start()
    db = make_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    topology = TopologyStore(db)
    topology.migrate()
    for i, shard in enumerate(shards):
        topology.put_shard(f"s{i}", shard.address)
    metadata = MetadataStore(db)
    metadata.migrate()
    router = Router.connect(topology.load())
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=[logs.RequestInterceptor()])
    add_servicer(server, SearchServicer(Engine(metadata, router)), pb.DESCRIPTOR.services_by_name["SearchService"])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = pb_grpc.SearchServiceStub(channel)
        data = fill(stub)
        exporter.clear()
        trace_file.unlink(missing_ok=True)
        reply = stub.Search(pb.SearchRequest(collection="c", queries=packed(data[:2]), k=5, include_metadata=True))
        assert len(reply.results) == 2 and len(reply.results[0].hits) == 5
    finally:
        channel.close()
        server.stop(grace=1).wait()
        router.close()
        for shard in shards:
            shard.stop()

    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}

    def parent_name(span: Any) -> str | None:
        parent = by_id.get(span.parent.span_id) if span.parent is not None else None
        return parent.name if parent is not None else None

    names = sorted(s.name for s in spans)
    (rpc,) = [s for s in spans if s.name == "vectorsearch.v1.SearchService/Search"]
    assert rpc.parent is None
    assert len({s.context.trace_id for s in spans}) == 1, names
    (planning,) = [s for s in spans if s.name == "engine.search"]
    assert parent_name(planning) == rpc.name
    (fanout,) = [s for s in spans if s.name == "router.fanout"]
    assert parent_name(fanout) == "engine.search"
    per_shard = [s for s in spans if s.name == "shard.search"]
    assert len(per_shard) == 2 and all(parent_name(s) == "router.fanout" for s in per_shard), names
    clients = [s for s in spans if s.name == "vectorsearch.shard.v1.ShardService/Search"]
    assert len(clients) == 2 and all(parent_name(s) == "shard.search" for s in clients), names
    (merge,) = [s for s in spans if s.name == "router.merge"]
    assert parent_name(merge) == "router.fanout"
    (join,) = [s for s in spans if s.name == "engine.metadata_join"]
    assert parent_name(join) == "engine.search"

    # across the socket: each shard's server span is the child of its client span, same trace
    deadline = time.monotonic() + 10
    while not trace_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    remote = [s for s in json_lines(trace_file) if s["name"] == "vectorsearch.shard.v1.ShardService/Search"]
    assert len(remote) == 2, remote
    trace_id = f"{rpc.context.trace_id:032x}"
    assert {s["trace_id"] for s in remote} == {trace_id}
    assert {s["parent_id"] for s in remote} == {f"{c.context.span_id:016x}" for c in clients}
    assert {s["kind"] for s in remote} == {"SERVER"}


def test_tracing_off_costs_no_span() -> None:
    assert not tracing.enabled
    assert tracing.span("x") is tracing.span("y")  # one shared no-op
    assert tracing.inject((("k", "v"),)) == (("k", "v"),)
