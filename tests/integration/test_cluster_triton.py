"""``python -m server.cluster`` with Triton (``--clip random`` / ``--triton-repo``), real
processes: it serves search by text, a tritonserver killed with SIGKILL is logged with its log
tail and restarted by the cluster, and a missing or broken tritonserver ends the start with exit
code 1, a clear message and no process left behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from server.cluster import MODEL_FILE
from testkit.clusterproc import ClusterProcess
from testkit.procutil import REPO, tree_env
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import types_pb2


def pids_with(marker: str) -> list[int]:
    """Processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def run_cluster(data_dir: Path, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = tree_env(REPO)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env["PYTHONPATH"]])
    command = [sys.executable, "-m", "server.cluster", "--shards", "1", "--data-dir", str(data_dir)]
    return subprocess.run(
        [*command, "--listen", "127.0.0.1:0", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_cluster_with_triton_serves_text_and_restarts_a_dead_triton(tmp_path: Path) -> None:
    cluster = ClusterProcess(tmp_path / "c", "--clip", "random", shards=2)
    stub = cluster.start(timeout=300)
    try:
        identity = json.loads((cluster.data_dir / MODEL_FILE).read_text())
        spec = types_pb2.CollectionSpec(name="t", dimension=identity["dim"], metric=types_pb2.METRIC_COSINE)
        stub.CreateCollection(pb.CreateCollectionRequest(spec=spec))
        texts = ["a red bicycle", "a cat on a sofa", "rockets at dawn"]
        reply = stub.IngestTexts(
            iter([pb.IngestTextsRequest(collection="t", items=[pb.TextItem(text=t) for t in texts])])
        )
        assert reply.ingested == 3 and reply.embedding_model == identity["id"]

        (triton,) = pids_with(f"--backend-directory={cluster.data_dir / 'triton'}")
        os.kill(triton, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while True:  # the cluster restarts it on the same port; the server reconnects by itself
            try:
                hits = stub.SearchByText(pb.SearchByTextRequest(collection="t", texts=["new text"], k=3), timeout=5)
                assert len(hits.results[0].hits) == 3
                break
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
                assert time.monotonic() < deadline, cluster.log_tail()
                time.sleep(0.5)
        # the server's retries may get through before the cluster logs the restart
        while "tritonserver restarted" not in cluster.log_tail(20000) and time.monotonic() < deadline:
            time.sleep(0.1)
        log = cluster.log_tail(20000)
        assert "tritonserver exited with -9" in log, log
        assert "tritonserver restarted" in log, log
    finally:
        cluster.stop()
    assert not pids_with(str(cluster.data_dir))  # Triton and the shards are gone


def test_a_missing_tritonserver_is_one_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "site"
    (fake / "pytriton").mkdir(parents=True)
    (fake / "pytriton" / "__init__.py").write_text("")  # a pytriton without its tritonserver
    done = run_cluster(tmp_path / "c", "--clip", "random", pythonpath=fake)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "tritonserver install incomplete" in done.stdout and "scripts/setup.sh" in done.stdout
    assert not pids_with(str(tmp_path / "c"))


def test_a_tritonserver_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    # a repository whose model config does not parse: tritonserver exits during start
    ok = ClusterProcess(tmp_path / "ok", "--clip", "random", shards=1)
    ok.start(timeout=300)
    ok.stop()
    repo = tmp_path / "repo"
    (repo / "clip_text" / "1").mkdir(parents=True)
    shutil.copy(ok.data_dir / MODEL_FILE, repo / "identity.json")
    (repo / "clip_text" / "config.pbtxt").write_text("this is { not a model config")
    done = run_cluster(tmp_path / "c", "--triton-repo", str(repo), "--triton-timeout-s", "60")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "tritonserver did not start" in done.stdout and "tritonserver exited" in done.stdout
    assert "config.pbtxt" in done.stdout or "clip_text" in done.stdout  # the log tail says which
    assert not pids_with(str(tmp_path / "c"))
