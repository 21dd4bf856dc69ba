"""The gRPC call a thread is serving, so that work spanning several steps stops when its caller
has gone: ``core.status.handled`` runs every servicer method inside :func:`serving`, and the
engine calls :func:`check` between its steps (before each shard round trip of a widening
filtered search, before fetching what a reply needs, before a write goes to the shards).

A call the client cancelled, or whose deadline passed, raises ``Cancelled`` at the next check.
Long shard calls made for it (a compaction waited for, a scan or log stream) register their
cancellation with :func:`on_end`, so they end on the shard as soon as the caller has gone.
Short unary shard calls (search, get, upsert, delete) run to completion: they carry the
caller's deadline and are bounded by the shard's own work, and grpcio makes a call cancellable
only through ``.future()``, which starts a thread per call and costs more than a search (see
shard/remote.py). Outside a served call (tests, the index repair) both functions do nothing.
Thread-local by construction (a ``ContextVar``): the fan-out pool runs its tasks in a copy of
the submitting thread's context (router/fanout.py), so they see the call too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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


def on_end(cancel: Callable[[], Any]) -> None:
    """Runs ``cancel`` when the call being served ends (at once when it already has): how a
    shard call made for it stops when the caller goes away. Also runs when the call ends
    normally, by which time the shard call is done and cancelling it does nothing."""
    context = _serving.get()
    if context is None:
        return
    add_callback = getattr(context, "add_callback", None)
    if (add_callback is None or not add_callback(cancel)) and not context.is_active():
        cancel()
