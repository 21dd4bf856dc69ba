"""shard/heap.py and shard/memtrace.py: the C heap controls and the debug trace (issue #19)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shard import heap

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(heap._LIBC is None, reason="not glibc")
def test_limit_arenas_honours_the_environment() -> None:
    assert heap.limit_arenas({"MALLOC_ARENA_MAX": "4"}) == 0  # glibc's own setting wins
    assert heap.limit_arenas({"VS_MALLOC_ARENAS": "0"}) == 0
    assert heap.limit_arenas({"VS_MALLOC_ARENAS": "3"}) == 3
    assert heap.limit_arenas({}) == heap.DEFAULT_ARENAS
    heap.release_free_memory()


def test_memtrace_logs_each_step_with_rss(tmp_path: Path) -> None:
    trace = tmp_path / "trace.jsonl"
    script = "from shard import memtrace\nassert memtrace.enabled()\nmemtrace.mark('a', rows=3)\nmemtrace.mark('b')"
    env = {"VS_MEMORY_TRACE": str(trace), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, check=True)
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [line["step"] for line in lines] == ["a", "b"]
    assert lines[0]["rows"] == 3
    if sys.platform == "linux":
        assert lines[0]["VmRSS"] > 0 and lines[1]["VmHWM"] >= lines[1]["VmRSS"]
