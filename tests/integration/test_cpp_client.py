"""The C++ client (clients/cpp) end to end: build it, start a 3-shard local cluster, run vs_e2e."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CPP_DIR = REPO / "clients" / "cpp"
VS_E2E = CPP_DIR / "build" / "vs_e2e"

BUILD_TIMEOUT_S = 900
READY_TIMEOUT_S = 90
E2E_TIMEOUT_S = 180
STOP_GRACE_S = 20


def tail(text: str, chars: int = 8000) -> str:
    return text if len(text) <= chars else "...\n" + text[-chars:]


def read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


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


def stop_cluster(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE_S; then sweeps the process group (its shards)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    # The cluster runs in its own session (pgid == its pid): after a SIGKILL its shard
    # processes would be orphaned, so end whatever of that group is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass(frozen=True)
class Cluster:
    address: str
    log_path: Path


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A ``python -m server.cluster --shards 3`` on a free loopback port; yields its address."""
    data_dir = tmp_path / "cluster"
    ready = tmp_path / "ready"
    log_path = tmp_path / "cluster.log"
    command = [
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
        str(ready),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        address = ""
        while not address:
            if ready.exists():
                address = ready.read_text().strip()
                if address:
                    break
            if proc.poll() is not None:
                pytest.fail(f"server.cluster exited with {proc.returncode} before ready:\n{tail(read_log(log_path))}")
            if time.monotonic() > deadline:
                pytest.fail(f"server.cluster not ready after {READY_TIMEOUT_S}s:\n{tail(read_log(log_path))}")
            time.sleep(0.1)
        yield Cluster(address, log_path)
    finally:
        stop_cluster(proc)


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + READY_TIMEOUT_S + E2E_TIMEOUT_S + 120)
def test_cpp_client_end_to_end(vs_e2e: Path, cluster: Cluster) -> None:
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
            f"--- cluster log ---\n{tail(read_log(cluster.log_path), 4000)}"
        )
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, (
        f"vs_e2e {cluster.address} exited with {result.returncode}:\n{tail(output)}\n"
        f"--- cluster log ---\n{tail(read_log(cluster.log_path), 4000)}"
    )
