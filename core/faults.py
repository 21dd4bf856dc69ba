"""Fault-injection points for crash tests: ``VS_FAULTS="name:probability,..."`` in a process's
environment makes :func:`point` kill the process (``os._exit``, as abrupt as SIGKILL: no
cleanup, no flush) with that probability each time the named point is reached. Unset in
production, where every point costs one dictionary lookup.

Points: ``after_shard_write`` (server/engine.py: a write is durable on its shards and its SQL
index rows are not yet committed) and ``after_shard_delete`` (the same for deletes).
"""

from __future__ import annotations

import logging
import os
import random

log = logging.getLogger(__name__)

EXIT_CODE = 137  # what a SIGKILLed process reports


def _parse(spec: str) -> dict[str, float]:
    points: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, probability = part.partition(":")
        points[name] = float(probability or "1")
    return points


_POINTS = _parse(os.environ.get("VS_FAULTS", ""))
_RANDOM = random.Random()


def point(name: str) -> None:
    """Kills the process here with the configured probability (see the module docstring)."""
    probability = _POINTS.get(name)
    if probability and _RANDOM.random() < probability:
        log.warning("fault injection: dying at %s", name)
        logging.shutdown()
        os._exit(EXIT_CODE)
