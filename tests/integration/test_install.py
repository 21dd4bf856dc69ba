"""Issue #17's acceptance: a clean virtualenv outside the repository gets the SDK and the server
package with pip (as a user would, from the checkout: the builds generate the stubs and compile
``shard._vsnative``), a single-node server starts from a directory outside the checkout with the
installed console script, and the SDK README's quick start runs against it verbatim (only the
address is replaced). The installed CLI, shard and migration commands work from there too.

Dependencies come from the package index (pip's cache makes it ~20 s once set-up has run).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SDK_README = ROOT / "clients" / "python" / "README.md"
INSTALL_TIMEOUT_S = 900


def _clean_env() -> dict[str, str]:
    """The environment without anything that points into the checkout or its venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VS_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if str(ROOT) not in p)
    return env


def quick_start() -> str:
    """The first ```python block after '## Quick start' in the SDK README."""
    text = SDK_README.read_text()
    match = re.search(r"^## Quick start\n.*?^```python\n(.*?)^```", text, flags=re.M | re.S)
    assert match, "clients/python/README.md has no Quick start python block"
    return match.group(1)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv (outside the checkout) with both packages installed; its bin dir."""
    home = tmp_path_factory.mktemp("install")
    assert ROOT not in home.parents
    env_dir = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=120)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run(
        [*pip, str(ROOT / "clients" / "python"), str(ROOT)],
        cwd=home,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert done.returncode == 0, f"pip install failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return env_dir / "bin"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "elsewhere"
    d.mkdir()
    assert ROOT not in d.parents
    return d


@pytest.fixture
def single_node(installed: Path, workdir: Path) -> Iterator[str]:
    """``vsearch-server --local-shard`` on the embedded defaults (SQLite under ./data), started in
    ``workdir``; its address."""
    ready = workdir / "ready"
    log = (workdir / "server.log").open("wb")
    args = ["--local-shard", "shard0", "--listen", "127.0.0.1:0", "--ready-file", "ready"]
    proc = subprocess.Popen(
        [str(installed / "vsearch-server"), *args],
        cwd=workdir,
        env=_clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not (ready.exists() and ready.read_text().strip()):
            assert proc.poll() is None, f"server exited: {(workdir / 'server.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "server not ready in 60 s"
            time.sleep(0.1)
        yield ready.read_text().strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _run(bin_dir: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=120
    )


def test_installed_packages_import_from_site_packages(installed: Path, workdir: Path) -> None:
    probe = "import vectorsearch, vsproto.v1, vectorsearch_client, shard.hnsw as h;"
    probe += "print(vectorsearch.__file__, h.NATIVE)"
    done = _run(installed, ["python", "-c", probe], workdir)
    assert done.returncode == 0, done.stderr
    where, native = done.stdout.split()
    assert Path(where).is_relative_to(installed.parent), where
    assert native == "True", "the wheel should carry shard._vsnative (set-up built it)"


def test_quick_start_against_a_single_node_started_outside_the_checkout(
    installed: Path, workdir: Path, single_node: str
) -> None:
    script = workdir / "quick_start.py"
    script.write_text(quick_start().replace("127.0.0.1:7000", single_node))
    done = _run(installed, ["python", str(script)], workdir)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    # The filter keeps "a" (tag red, year 2020); "a" is the query vector itself.
    assert len(lines) == 1 and lines[0].startswith("a "), done.stdout
    assert "tags=['red']" in lines[0]
    assert (workdir / "data" / "meta.db").exists() and (workdir / "shard0").is_dir()

    status = _run(installed, ["vsearch", "--address", single_node, "status"], workdir)
    assert status.returncode == 0, status.stderr
    assert "docs" in status.stdout


def test_console_scripts_run_outside_the_checkout(installed: Path, workdir: Path) -> None:
    for script in ("vsearch-shard", "vsearch-cluster", "vsearch", "vsearch-healthcheck", "vsearch-certs"):
        done = _run(installed, [script, "--help"], workdir)
        assert done.returncode == 0, f"{script}: {done.stderr}"
        assert "usage" in done.stdout.lower()
    migrated = _run(installed, ["vsearch-migrate", "--database-url", "sqlite:///./m/meta.db"], workdir)
    assert migrated.returncode == 0, migrated.stderr
    assert (workdir / "m" / "meta.db").exists()
    down = _run(installed, ["vsearch-healthcheck", "127.0.0.1:1", "--timeout-s", "0.5"], workdir)
    assert down.returncode == 1
