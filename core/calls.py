"""The gRPC call a thread is serving, so that work spanning several steps stops when its caller
has gone: ``core.status.handled`` runs every servicer method inside :func:`serving`, and the
engine calls :func:`check` between its steps (before each shard round trip of a widening
filtered search, before fetching what a reply needs, before a write goes to the shards).

A call the client cancelled, or whose deadline passed, raises ``Cancelled`` at the next check;
steps already under way finish (a shard call carries the caller's deadline, so it ends by then
at the latest). Outside a served call (tests, the index repair) :func:`check` does nothing.
Thread-local by construction (a ``ContextVar``): threads of the fan-out pool do not see it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from core.errors import Cancelled

_serving: ContextVar[Any] = ContextVar("vs_serving_call", default=None)


@contextlib.contextmanager
def serving(context: Any) -> Iterator[None]:
    """Marks ``context`` (a ``grpc.ServicerContext``) as the call this thread serves."""
    token = _serving.set(context)
    try:
        yield
    finally:
        _serving.reset(token)


def check(step: str) -> None:
    """Raises Cancelled when the call being served has ended on the client's side."""
    context = _serving.get()
    if context is None:
        return
    is_active = getattr(context, "is_active", None)
    if is_active is not None and not is_active():
        raise Cancelled(f"stopped before {step}: the client cancelled the call or its deadline passed")
