"""The Node.js client (clients/node) against a live local cluster: `python -m server.cluster`
with 3 shards, then `node clients/node/test/e2e.js <address>` must exit 0.

Node.js and npm are project requirements, so their absence is a failure, not a skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from testkit.clusterproc import ClusterProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = REPO_ROOT / "clients" / "node"
E2E_SCRIPT = NODE_CLIENT / "test" / "e2e.js"

NPM_CI_TIMEOUT_S = 300
E2E_TIMEOUT_S = 180


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


@pytest.fixture
def node_exe() -> str:
    """The node executable, with the client's dependencies installed (npm ci) if missing."""
    node = require_tool("node")
    ensure_node_modules()
    return node


# node_exe comes first so that a missing Node.js fails before a cluster is started.
def test_node_client_e2e(node_exe: str, local_cluster: ClusterProcess) -> None:
    cluster_address = local_cluster.address
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
