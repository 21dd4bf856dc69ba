"""Process-level recovery: automatic compaction, corrupt snapshots, refusal to start."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from testkit.datasets import clustered
from testkit.shardproc import ShardProcess


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_compaction_runs_by_itself_on_size_and_on_age(tmp_path: Path) -> None:
    proc = ShardProcess(tmp_path / "s", "--compact-delta-items", "500", "--compact-age-s", "1")
    client = proc.start()
    try:
        client.create_collection("c", 8, "l2")
        data = clustered(700, 8, seed=1)
        client.upsert("c", [f"a{i}" for i in range(600)], data[:600])  # over the size threshold
        deadline = time.monotonic() + 20
        while client.stats("c").compactions < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.stats("c").graph_elements == 600
        client.upsert("c", [f"a{i}" for i in range(600, 700)], data[600:])  # small: waits for age
        while client.stats("c").compactions < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = client.stats("c")
        assert (stats.compactions, stats.graph_elements, stats.delta_size) == (2, 700, 0)
    finally:
        proc.kill()


def _three_snapshots(proc: ShardProcess) -> np.ndarray:
    client = proc.start()
    client.create_collection("c", 8, "l2")
    data = clustered(300, 8, seed=2)
    for part in range(3):
        lo = part * 100
        client.upsert("c", [f"s{i}" for i in range(lo, lo + 100)], data[lo : lo + 100])
        client.compact("c", wait=True)
    client.upsert("c", ["tail"], data[:1] + 50)  # only in the log
    assert proc.stop() == 0
    return data


def test_corrupt_newest_snapshot_falls_back_and_serves_everything(tmp_path: Path) -> None:
    proc = ShardProcess(tmp_path / "s")
    data = _three_snapshots(proc)
    snapshots = sorted((tmp_path / "s" / "collections" / "c" / "snapshots").glob("snap-*"))
    assert len(snapshots) == 2
    corrupt(snapshots[-1] / "graph.hnsw")
    client = proc.start()
    try:
        stats = client.stats("c")
        assert stats.count == 301 and stats.snapshot_seq == 2
        for i in (0, 150, 299):
            assert client.search("c", data[i], 1)[0][0][0] == f"s{i}"
        assert "ignoring damaged snapshot" in proc.log_tail(20_000)
    finally:
        proc.kill()


def test_every_snapshot_corrupt_and_log_truncated_refuses_to_start(tmp_path: Path) -> None:
    proc = ShardProcess(tmp_path / "s")
    _three_snapshots(proc)
    for snap in (tmp_path / "s" / "collections" / "c" / "snapshots").glob("snap-*"):
        corrupt(snap / "ids.bin")
    try:
        proc.start(timeout=30)
    except RuntimeError as exc:
        assert "exited with 2" in str(exc)
    else:
        raise AssertionError("the shard started on corrupt snapshots without the log to rebuild them")
    assert "refusing to start" in proc.log_tail(20_000).lower()
