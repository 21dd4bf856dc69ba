"""The C++ client (clients/cpp) end to end: build it, start a 3-shard local cluster, run vs_e2e."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from testkit.clusterproc import ClusterProcess

REPO = Path(__file__).resolve().parents[2]
CPP_DIR = REPO / "clients" / "cpp"
VS_E2E = CPP_DIR / "build" / "vs_e2e"

BUILD_TIMEOUT_S = 900
READY_TIMEOUT_S = 120
E2E_TIMEOUT_S = 180


def tail(text: str, chars: int = 8000) -> str:
    return text if len(text) <= chars else "...\n" + text[-chars:]


@pytest.fixture(scope="module")
def vs_e2e() -> Path:
    """Builds the client (installing the Debian packages if missing); fails with the build log."""
    try:
        result = subprocess.run(
            ["bash", str(CPP_DIR / "build.sh")],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        pytest.fail(f"clients/cpp/build.sh timed out after {BUILD_TIMEOUT_S}s:\n{tail(output)}")
    output = result.stdout.decode(errors="replace")
    if result.returncode != 0:
        pytest.fail(f"clients/cpp/build.sh failed with exit code {result.returncode}:\n{tail(output)}")
    if not os.access(VS_E2E, os.X_OK):
        pytest.fail(f"clients/cpp/build.sh succeeded but {VS_E2E} is missing:\n{tail(output)}")
    return VS_E2E


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + READY_TIMEOUT_S + E2E_TIMEOUT_S + 120)
def test_cpp_client_end_to_end(vs_e2e: Path, local_cluster: ClusterProcess) -> None:
    cluster = local_cluster
    try:
        result = subprocess.run(
            [str(vs_e2e), cluster.address],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=E2E_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        pytest.fail(
            f"vs_e2e {cluster.address} timed out after {E2E_TIMEOUT_S}s:\n{tail(output)}\n"
            f"--- cluster log ---\n{cluster.log_tail(4000)}"
        )
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, (
        f"vs_e2e {cluster.address} exited with {result.returncode}:\n{tail(output)}\n"
        f"--- cluster log ---\n{cluster.log_tail(4000)}"
    )
