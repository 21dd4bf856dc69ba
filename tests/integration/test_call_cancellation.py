"""A caller that goes away stops the shard work done for it: a public Compact(wait) cancelled
by its client ends on every shard at once, not when its deadline passes (the shards hold the
compaction at a test delay point, ``VS_DELAYS``, for far longer than the test waits)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from testkit.clusterproc import ClusterProcess
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import types_pb2

HOLD_S = 120  # how long a shard holds Compact; the test never waits that long
DIM = 4


def wait_for_lines(paths: list[Path], text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(text in p.read_text(errors="replace") for p in paths if p.exists()) or not all(
        p.exists() for p in paths
    ):
        assert time.monotonic() < deadline, f"not every shard log says {text!r} within {timeout} s"
        time.sleep(0.1)


def test_a_cancelled_compaction_call_ends_on_every_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VS_DELAYS", f"shard_compact:{HOLD_S}")
    cluster = ClusterProcess(tmp_path / "c", shards=2)
    stub = cluster.start()
    try:
        spec = types_pb2.CollectionSpec(name="c", dimension=DIM, metric=types_pb2.METRIC_L2)
        stub.CreateCollection(pb.CreateCollectionRequest(spec=spec))
        matrix = np.random.default_rng(5).standard_normal((20, DIM)).astype(np.float32)
        stub.Upsert(
            pb.UpsertRequest(
                collection="c",
                items=[pb.ItemMetadata(id=str(i)) for i in range(20)],
                vectors=types_pb2.Vectors(dimension=DIM, packed=matrix.tobytes()),
            )
        )
        logs = [tmp_path / "c" / f"shard-{i}.log" for i in range(2)]
        call = cluster.admin().Compact.future(admin_pb.CompactRequest(collection="c", wait=True), timeout=HOLD_S * 2)
        wait_for_lines(logs, "holding shard_compact", timeout=30)  # both shards are in the call
        assert not call.done()
        cancelled_at = time.monotonic()
        call.cancel()
        # one shard is called on the handler's thread, the other on the fan-out pool: both end
        wait_for_lines(logs, "Compact: stopped before the end of the pause at shard_compact", timeout=10)
        assert time.monotonic() - cancelled_at < 10
        with pytest.raises(grpc.FutureCancelledError):
            call.result()
        query = pb.SearchRequest(
            collection="c", queries=types_pb2.Vectors(dimension=DIM, packed=matrix[:1].tobytes()), k=1
        )
        assert stub.Search(query, timeout=10).results[0].hits[0].id == "0"  # still serving
        assert " ERROR " not in cluster.log_tail(200_000)
    finally:
        cluster.stop()
