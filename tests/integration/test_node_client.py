"""The Node.js client (clients/node) against a live local cluster: `python -m server.cluster`
with 3 shards, then `node clients/node/test/e2e.js <address>` must exit 0.

Node.js and npm are project requirements, so their absence is a failure, not a skip."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = REPO_ROOT / "clients" / "node"
E2E_SCRIPT = NODE_CLIENT / "test" / "e2e.js"

NPM_CI_TIMEOUT_S = 300
READY_TIMEOUT_S = 90
E2E_TIMEOUT_S = 180
TERM_GRACE_S = 20


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name!r} not found on PATH: Node.js 20 and npm are required by this project")
    return path


def ensure_node_modules() -> None:
    if (NODE_CLIENT / "node_modules").is_dir():
        return
    npm = require_tool("npm")
    try:
        proc = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_CLIENT,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"npm ci timed out after {NPM_CI_TIMEOUT_S} s\n{describe_output(exc.stdout, exc.stderr)}")
    if proc.returncode != 0:
        pytest.fail(f"npm ci failed with exit code {proc.returncode}\n{describe_output(proc.stdout, proc.stderr)}")


def describe_output(stdout: str | bytes | None, stderr: str | bytes | None) -> str:
    def text(value: str | bytes | None) -> str:
        if value is None:
            return ""
        return value.decode(errors="replace") if isinstance(value, bytes) else value

    return f"--- stdout ---\n{text(stdout)}\n--- stderr ---\n{text(stderr)}"


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited after TERM_GRACE_S."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=TERM_GRACE_S)


def wait_ready(proc: subprocess.Popen[bytes], ready_file: Path, log_file: Path) -> str:
    """The server's host:port once the ready file holds it; fails if the cluster exits first."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready_file.is_file():
            address = ready_file.read_text().strip()
            time.sleep(0.1)  # the file may be written in more than one step: wait until it is stable
            if address and address == ready_file.read_text().strip():
                return address
        if proc.poll() is not None:
            pytest.fail(
                f"server.cluster exited with code {proc.returncode} before it was ready\n"
                f"--- cluster output ---\n{log_file.read_text(errors='replace')}"
            )
        time.sleep(0.2)
    pytest.fail(
        f"server.cluster wrote no address to {ready_file} within {READY_TIMEOUT_S} s\n"
        f"--- cluster output ---\n{log_file.read_text(errors='replace')}"
    )


@pytest.fixture
def cluster_address(tmp_path: Path) -> Iterator[str]:
    data_dir = tmp_path / "data"
    ready_file = tmp_path / "ready"
    log_file = tmp_path / "cluster.log"
    cmd = [
        sys.executable,
        "-m",
        "server.cluster",
        "--shards",
        "3",
        "--data-dir",
        str(data_dir),
        "--listen",
        "127.0.0.1:0",
        "--ready-file",
        str(ready_file),
    ]
    with log_file.open("wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        yield wait_ready(proc, ready_file, log_file)
    finally:
        stop(proc)


@pytest.fixture
def node_exe() -> str:
    """The node executable, with the client's dependencies installed (npm ci) if missing."""
    node = require_tool("node")
    ensure_node_modules()
    return node


# node_exe comes first so that a missing Node.js fails before a cluster is started.
def test_node_client_e2e(node_exe: str, cluster_address: str) -> None:
    try:
        proc = subprocess.run(
            [node_exe, str(E2E_SCRIPT), cluster_address],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=E2E_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"node e2e timed out after {E2E_TIMEOUT_S} s\n{describe_output(exc.stdout, exc.stderr)}")
    assert proc.returncode == 0, (
        f"node e2e exited with code {proc.returncode}\n{describe_output(proc.stdout, proc.stderr)}"
    )
    assert "node e2e: OK" in proc.stdout, describe_output(proc.stdout, proc.stderr)
