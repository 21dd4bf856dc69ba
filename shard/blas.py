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

The pool is found and set by threadpoolctl (OpenBLAS, MKL, BLIS); a no-op where numpy's BLAS
has no pool it knows.
"""

from __future__ import annotations

import os
from typing import Any

DEFAULT_THREADS = 1


def _blas_pools() -> Any:
    """threadpoolctl's controller of the BLAS pools loaded in this process (numpy's)."""
    import numpy  # noqa: F401  (loads its BLAS)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def has_blas_pool() -> bool:
    """Whether numpy's BLAS has a thread pool this module can size."""
    return bool(_blas_pools().lib_controllers)


def limit_threads(environ: dict[str, str] | None = None) -> int:
    """Sets numpy's BLAS pool to ``VS_BLAS_THREADS`` threads (default 1); returns the size it
    has afterwards, or 0 when nothing was changed (``VS_BLAS_THREADS=0``, or no pool)."""
    env = os.environ if environ is None else environ
    wanted = int(env.get("VS_BLAS_THREADS", str(DEFAULT_THREADS)) or 0)
    if wanted <= 0:
        return 0
    pools = _blas_pools()
    if not pools.lib_controllers:
        return 0
    pools.limit(limits=wanted)  # kept: the limiter is not used as a context manager
    return max(int(lib.num_threads) for lib in pools.lib_controllers)
