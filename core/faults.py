"""Fault-injection points for crash tests: ``VS_FAULTS="name:probability,..."`` in a process's
environment makes :func:`point` kill the process (``os._exit``, as abrupt as SIGKILL: no
cleanup, no flush) with that probability each time the named point is reached. Unset in
production, where every point costs one dictionary lookup.

Points: ``after_shard_write`` (server/engine.py: a write is durable on its shards and its SQL
index rows are not yet committed) and ``after_shard_delete`` (the same for deletes).

``VS_DELAYS="name:seconds,..."`` makes :func:`pause` hold a served call that long at the named
point, ending early (``Cancelled``) when its caller goes away: how tests make a shard call slow
enough to watch its cancellation travel. Points: ``shard_compact`` (shard/service.py, before a
compaction).
"""

from __future__ import annotations

import logging
import os
import random
import time

from core import calls

log = logging.getLogger(__name__)

EXIT_CODE = 137  # what a SIGKILLed process reports


def _parse(spec: str) -> dict[str, float]:
    points: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, probability = part.partition(":")
        points[name] = float(probability or "1")
    return points


_POINTS = _parse(os.environ.get("VS_FAULTS", ""))
_DELAYS = _parse(os.environ.get("VS_DELAYS", ""))
_RANDOM = random.Random()


def point(name: str) -> None:
    """Kills the process here with the configured probability (see the module docstring)."""
    probability = _POINTS.get(name)
    if probability and _RANDOM.random() < probability:
        log.warning("fault injection: dying at %s", name)
        logging.shutdown()
        os._exit(EXIT_CODE)


def pause(name: str) -> None:
    """Holds the served call at ``name`` for the configured seconds (see the module docstring);
    raises Cancelled as soon as its caller has gone."""
    seconds = _DELAYS.get(name)
    if not seconds:
        return
    log.warning("fault injection: holding %s for %.1f s", name, seconds)
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        calls.check(f"the end of the pause at {name}")
        time.sleep(0.02)
