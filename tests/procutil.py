"""Waiting for a test subprocess to announce its address through a ready file."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path


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
