"""The BLAS thread pool of a process that owns shards (issue #19 item 4: tail latency).

numpy's matrix products run on OpenBLAS, which by default splits even a one-query product (one
query against a delta block of 4,096 rows: the delta layers' exact search, ``shard/exact.py``)
over a pool of one thread per core, and the calling thread waits for every helper to finish its
part. While a compaction's build threads (or any other process) keep the cores busy, a helper
is not scheduled for a whole time slice: on 2 cores, one query over 16k delta rows took 0.6 ms
at the median and 31 ms at the 99th percentile with the pool, 1.1 ms and 5 ms without it
(bench/results/tail.md). The shard's own concurrency is per request (gRPC threads) and per query
batch (hnswlib's threads), so :func:`limit_threads` sets the pool to one thread, the caller's,
first thing in the processes that own shards. ``VS_BLAS_THREADS`` in the environment sets
another size (``0``: the library's default).

A no-op where numpy's BLAS is not an OpenBLAS found in this process's mappings.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable
from typing import Any

DEFAULT_THREADS = 1
# OpenBLAS builds export the setter under these names (plain, 64-bit integer interface, scipy's)
_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_", "scipy_openblas_set_num_threads64_")
_GETTERS = ("openblas_get_num_threads", "openblas_get_num_threads64_", "scipy_openblas_get_num_threads64_")


def _openblas() -> tuple[Callable[[int], Any], Callable[[], int]] | None:
    """The set/get thread-count functions of the OpenBLAS loaded by numpy, else None."""
    import numpy  # noqa: F401  (loads its BLAS)

    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        with contextlib.suppress(OSError):
            lib = ctypes.CDLL(path)
            setter = next((getattr(lib, name) for name in _SETTERS if hasattr(lib, name)), None)
            getter = next((getattr(lib, name) for name in _GETTERS if hasattr(lib, name)), None)
            if setter is not None and getter is not None:
                setter.argtypes = [ctypes.c_int]
                getter.restype = ctypes.c_int
                return setter, getter
    return None


def limit_threads(environ: dict[str, str] | None = None) -> int:
    """Sets numpy's OpenBLAS pool to ``VS_BLAS_THREADS`` threads (default 1); returns the
    size it has afterwards, or 0 when nothing was changed (``VS_BLAS_THREADS=0``, or no
    OpenBLAS)."""
    env = os.environ if environ is None else environ
    wanted = int(env.get("VS_BLAS_THREADS", str(DEFAULT_THREADS)) or 0)
    if wanted <= 0:
        return 0
    found = _openblas()
    if found is None:
        return 0
    setter, getter = found
    setter(wanted)
    return int(getter())
