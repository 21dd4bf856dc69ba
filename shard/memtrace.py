"""Debug trace of a shard process's memory at each step of a compaction (issue #19).

With ``VS_MEMORY_TRACE=PATH`` in the environment (read at import), :func:`mark` appends one JSON
line per step to ``PATH``: the wall time, the step, the process's ``VmRSS`` / ``VmHWM`` /
``RssAnon`` / ``RssFile`` (KiB, from ``/proc/self/status``) and the caller's own figures (delta
rows, graph elements, ...). ``bench/memory.py`` sets it and lines the steps up with the RSS it
samples from outside. Unset (the default), :func:`mark` returns at once and costs nothing.
"""

from __future__ import annotations

import json
import os
import threading
import time

_PATH = os.environ.get("VS_MEMORY_TRACE", "")
_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
_lock = threading.Lock()


def enabled() -> bool:
    return bool(_PATH)


def status_kib() -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ``RssAnon`` and ``RssFile`` of this process in KiB (empty off Linux)."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in _FIELDS:
                    out[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return {}
    return out


def mark(step: str, **figures: int | str | bool) -> None:
    """Appends ``step`` with this process's RSS and ``figures`` to the trace (when enabled)."""
    if not _PATH:
        return
    line = json.dumps({"t": time.time(), "step": step, **status_kib(), **figures})
    with _lock, open(_PATH, "a") as handle:
        handle.write(line + "\n")
