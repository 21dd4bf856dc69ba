"""Starting project processes from a source tree and waiting for their ready file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tree_env(root: Path) -> dict[str, str]:
    """The environment for a ``python -m ...`` child that must import the project from ``root``.

    The child also runs with ``cwd=root``; ``PYTHONPATH=root`` puts that tree ahead of any
    installed (editable) copy of the project, for the child and for whatever it starts.
    """
    path = [str(root), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    return dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(path))


def wait_for_ready_file(
    proc: subprocess.Popen[bytes], ready: Path, timeout: float, what: str, log_tail: Callable[[], str]
) -> str:
    """The ``host:port`` the process wrote to ``ready``. Raises RuntimeError if it exits first
    and TimeoutError after ``timeout`` seconds (the caller stops the process), with its log."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; log:\n{log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout}s; log:\n{log_tail()}")
        time.sleep(0.02)
    return ready.read_text()


def read_tail(path: Path, chars: int) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


PROJECT_PACKAGES = ("core", "router", "server", "shard", "vsproto", "vectorsearch")


def import_origins(root: Path) -> dict[str, str]:
    """Where a child started like the process helpers start theirs (this interpreter,
    ``cwd=root``, ``tree_env(root)``) imports each of the project's packages from.

    Raises RuntimeError when one resolves outside ``root`` (e.g. to an installed copy).
    """
    names = [name for name in PROJECT_PACKAGES if (root / name / "__init__.py").is_file()]
    script = "import importlib, sys\nfor n in sys.argv[1:]:\n    print(n, importlib.import_module(n).__file__)"
    out = subprocess.run(
        [sys.executable, "-c", script, *names],
        cwd=root,
        env=tree_env(root),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    origins = dict(line.split(" ", 1) for line in out.splitlines())
    outside = {name: path for name, path in origins.items() if not Path(path).resolve().is_relative_to(root.resolve())}
    if outside:
        raise RuntimeError(f"children started from {root} would import {outside}")
    return origins
