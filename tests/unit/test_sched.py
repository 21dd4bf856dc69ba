"""shard/sched.py: the background compactor's lower CPU priority (issue #19 item 4)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from shard import blas, sched

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


T = TypeVar("T")


def _in_thread(fn: Callable[[], T]) -> T:
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


@linux_only
def test_lowers_only_the_calling_thread_and_what_it_starts() -> None:
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def background() -> tuple[int, int]:
        after = sched.lower_thread_priority(5)
        child = _in_thread(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return after, child

    after, child = _in_thread(background)
    assert after == min(sched.MAX_NICE, own + 5)
    assert child == after  # a thread started later (e.g. a native build thread) inherits it
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own  # the caller's thread is untouched
    assert os.getpriority(os.PRIO_PROCESS, 0) == own


@linux_only
def test_clamps_at_19() -> None:
    assert _in_thread(lambda: sched.lower_thread_priority(100)) == sched.MAX_NICE


def test_zero_changes_nothing() -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else None
    assert _in_thread(lambda: sched.lower_thread_priority(0)) == -1
    if own is not None:
        assert os.getpriority(os.PRIO_PROCESS, 0) == own


def test_blas_pool_limited_in_a_fresh_process() -> None:
    """shard/blas.py: one BLAS thread by default, VS_BLAS_THREADS=2 two, 0 leaves the library
    alone (run in children: the pool size is process-wide)."""
    repo = Path(__file__).resolve().parents[2]
    script = "from shard import blas\nprint(blas.limit_threads())"
    for value, expected in (("", "1"), ("2", "2"), ("0", "0")):
        env = {"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"}
        if value:
            env["VS_BLAS_THREADS"] = value
        out = subprocess.run([sys.executable, "-c", script], cwd=repo, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        if not blas.has_blas_pool():  # numpy's BLAS without a pool: nothing to limit
            assert out.stdout.strip() == "0"
        else:
            assert out.stdout.strip() == expected
