"""What a benchmark result records about the machine and the code: CPU, load, versions, commit."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def pkg_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def git_commit(root: Path) -> str:
    """The short commit of the tree at ``root``, with ``+dirty`` when it has uncommitted changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return f"{sha}+dirty" if dirty else sha
