"""No starvation: a thousand idle client streams held open leave Search and Health answering,
streams beyond the server's bound are refused at once with RESOURCE_EXHAUSTED, and a client
that goes away mid-stream leaves no ERROR in the log."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from testkit.serverproc import SingleNodeProcess
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

STREAMS = 1_000
DIM = 8


def idle_stream(gate: queue.Queue[pb.UpsertRequest | None]) -> Iterator[pb.UpsertRequest]:
    """Sends whatever is put on ``gate`` until None: idle until then."""
    while (request := gate.get()) is not None:
        yield request


def test_a_thousand_idle_streams_leave_search_and_health_answering(tmp_path: Path) -> None:
    server = SingleNodeProcess(tmp_path / "node", "--max-streams", str(STREAMS))
    address = server.start()
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.SearchServiceStub(channel)
    spec = types_pb2.CollectionSpec(name="c", dimension=DIM, metric=types_pb2.METRIC_L2)
    stub.CreateCollection(pb.CreateCollectionRequest(spec=spec))
    matrix = np.random.default_rng(3).standard_normal((100, DIM)).astype(np.float32)
    upsert = pb.UpsertRequest(
        collection="c",
        items=[pb.ItemMetadata(id=str(i)) for i in range(100)],
        vectors=types_pb2.Vectors(dimension=DIM, packed=matrix.tobytes()),
    )
    stub.Upsert(upsert)
    far = np.full((1, DIM), 100.0, dtype=np.float32)  # never nearer than the loaded items
    one = types_pb2.Vectors(dimension=DIM, packed=far.tobytes())
    gates: list[queue.Queue[pb.UpsertRequest | None]] = [queue.Queue() for _ in range(STREAMS)]
    for i, gate in enumerate(gates):  # a slow client: one batch, then nothing for a long time
        gate.put(pb.UpsertRequest(collection="c", items=[pb.ItemMetadata(id=f"s{i}")], vectors=one))
    streams = [stub.UpsertStream.future(idle_stream(gate), timeout=300) for gate in gates]
    try:
        # every stream is on the server, in its handler, once its first batch is written
        deadline = time.monotonic() + 120
        written = pb.GetRequest(collection="c", ids=[f"s{i}" for i in range(STREAMS)])
        while len(stub.Get(written, timeout=10).items) < STREAMS:
            assert time.monotonic() < deadline, "the streams' first batches were not all written"
            time.sleep(0.5)
        assert not any(s.done() for s in streams), "an idle stream ended early"
        health = health_pb2_grpc.HealthStub(channel)
        query = pb.SearchRequest(
            collection="c", queries=types_pb2.Vectors(dimension=DIM, packed=matrix[:1].tobytes()), k=5
        )
        latencies = []
        for _ in range(20):
            started = time.monotonic()
            assert stub.Search(query, timeout=5).results[0].hits[0].id == "0"
            status = health.Check(health_pb2.HealthCheckRequest(service="vectorsearch.v1.SearchService"), timeout=5)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 2.0, f"Search + Health took up to {max(latencies):.2f}s with {STREAMS} idle streams"
        # one stream more than the bound is refused at once
        extra: queue.Queue[pb.UpsertRequest | None] = queue.Queue()
        extra.put(pb.UpsertRequest(collection="c", items=[pb.ItemMetadata(id="extra")], vectors=one))
        try:
            stub.UpsertStream(idle_stream(extra), timeout=5)
            raise AssertionError("a stream beyond the bound was admitted")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
        finally:
            extra.put(None)
        # the held streams still work: one writes another item, and every one ends cleanly
        gates[0].put(pb.UpsertRequest(collection="c", items=[pb.ItemMetadata(id="late")], vectors=one))
        for gate in gates:
            gate.put(None)
        assert streams[0].result(timeout=120).upserted == 2
        assert all(s.result(timeout=120).upserted == 1 for s in streams[1:])
        # a client that goes away mid-stream is one info line, not an error
        gone: queue.Queue[pb.UpsertRequest | None] = queue.Queue()
        call = stub.UpsertStream.future(idle_stream(gone), timeout=60)
        gone.put(pb.UpsertRequest(collection="c", items=[pb.ItemMetadata(id="gone")], vectors=one))
        deadline = time.monotonic() + 60  # the handler runs once its first batch is written
        while not stub.Get(pb.GetRequest(collection="c", ids=["gone"]), timeout=10).items:
            assert time.monotonic() < deadline, "the stream's first batch was not written"
            time.sleep(0.1)
        call.cancel()
        time.sleep(2.0)
        # Whether the handler sees the cancellation or an end of stream is grpcio's race; either
        # way nothing is logged as an error (the info line itself: tests/unit/test_status.py).
        log = server.log_tail(100_000)
        assert "Traceback" not in log and " ERROR " not in log
    finally:
        for gate in gates:
            gate.put(None)
        channel.close()
        server.stop()
