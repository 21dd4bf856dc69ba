"""The C heap of a server or shard process (glibc malloc), held to what it uses (issue #19).

- :func:`limit_arenas`: glibc gives each thread that finds the others' arenas busy an arena of
  its own, up to 8 per core, and memory freed in one arena is reused only by the threads on it.
  The gRPC threads of an ingest leave tens of MiB free but resident in their arenas. Called
  first thing in ``main`` (before any thread), it caps them at ``VS_MALLOC_ARENAS`` (default 2;
  ``0`` keeps glibc's default). ``MALLOC_ARENA_MAX`` in the environment, which glibc reads
  itself, takes precedence.
- :func:`release_free_memory`: ``malloc_trim(0)``, which hands the heaps' free pages back to
  the system. A compaction calls it after the fold: the sealed delta's 4096-row blocks (6 MiB
  at 384-d) come from glibc's heaps once its dynamic mmap threshold has risen past them, and
  stay resident after they are freed.

Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

_M_ARENA_MAX = -8  # glibc malloc.h
DEFAULT_ARENAS = 2


def _libc() -> Any | None:
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim  # noqa: B018 (glibc only)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def limit_arenas(environ: dict[str, str] | None = None) -> int:
    """Caps glibc's malloc arenas (see the module docstring); returns the cap set (0: none)."""
    env = os.environ if environ is None else environ
    if _LIBC is None or env.get("MALLOC_ARENA_MAX"):
        return 0
    arenas = int(env.get("VS_MALLOC_ARENAS", str(DEFAULT_ARENAS)) or 0)
    if arenas <= 0:
        return 0
    _LIBC.mallopt(_M_ARENA_MAX, arenas)
    return arenas


def release_free_memory() -> None:
    """Hands the C heap's free pages back to the system (glibc ``malloc_trim(0)``)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
