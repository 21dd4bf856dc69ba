"""CPU priority of background work (issue #19 item 4: tail latency while compaction folds).

A fold adds thousands of vectors to a private HNSW index on ``build_threads`` native threads
(hnswlib's ``add_items``, the GIL released); on a machine with as many cores as build threads
those threads take every core, and a search that arrives meanwhile waits for the scheduler to
give its thread a slice. :func:`lower_thread_priority` raises the nice value of the calling
thread only (Linux keeps a nice value per thread, and threads it starts later, such as the
native build threads, inherit it), so the kernel runs request threads first and the fold in the
time they leave. The compactor thread of ``shard.registry`` calls it once at its start.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

MAX_NICE = 19


def lower_thread_priority(nice: int) -> int:
    """Adds ``nice`` (clamped to 0..19 in total) to the calling thread's nice value; returns the
    thread's nice value afterwards, or -1 where per-thread priorities are not available (not
    Linux) or the call failed. ``nice <= 0`` changes nothing. Irreversible for the thread
    without privileges: call it only on a thread that does background work for good."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return -1
    tid = threading.get_native_id()  # on Linux, PRIO_PROCESS with a thread id sets that thread alone
    try:
        target = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, tid) + nice)
        os.setpriority(os.PRIO_PROCESS, tid, target)
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError as exc:
        log.warning("cannot lower the priority of thread %d: %s", tid, exc)
        return -1
