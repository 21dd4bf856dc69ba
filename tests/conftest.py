from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import vsproto.v1  # noqa: F401  fail fast, with a hint, when the stubs are missing or stale
from testkit.clusterproc import ClusterProcess
from testkit.shardproc import ShardProcess

if TYPE_CHECKING:
    from clipmodel.identity import ModelIdentity


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


@dataclass(frozen=True)
class ClipRepo:
    repo: Path
    identity: ModelIdentity


@pytest.fixture(scope="session")
def clip_repo() -> ClipRepo:
    """The seeded random CLIP exported with the default serving options, from the model cache
    ``python -m server.cluster --clip random`` uses (``clipmodel.repository``): the suite exports
    it once. Read-only: each test starts its own tritonserver on it."""
    from clipmodel.identity import FILENAME, ModelIdentity
    from clipmodel.repository import RANDOM, prepare_model_repo

    repo = prepare_model_repo(RANDOM)
    return ClipRepo(repo, ModelIdentity.from_json((repo / FILENAME).read_text()))
