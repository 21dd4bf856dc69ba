from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import vsproto.v1  # noqa: F401  fail fast, with a hint, when the stubs are missing or stale
from testkit.clusterproc import ClusterProcess
from testkit.shardproc import ShardProcess


@pytest.fixture
def shard_proc(tmp_path: Path) -> Iterator[ShardProcess]:
    proc = ShardProcess(tmp_path / "shard")
    proc.start()
    yield proc
    proc.kill()


@pytest.fixture
def local_cluster(tmp_path: Path) -> Iterator[ClusterProcess]:
    """``python -m server.cluster`` with 3 shards on the embedded defaults (SQLite)."""
    cluster = ClusterProcess(tmp_path / "cluster", shards=3)
    cluster.start()
    yield cluster
    cluster.stop()
