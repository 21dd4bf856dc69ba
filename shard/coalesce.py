"""Coalescing of concurrent searches bound for one shard into one batched call.

A ``Coalescer`` sits in front of one shard handle's Search RPC. Searches are grouped by key
(collection, k, ef: searches that could share one request). A search goes out at once, alone,
while fewer than ``max_in_flight`` calls of its key are running (a single caller never waits:
its path is the plain call; searches of other keys, e.g. another collection, never wait for
this key's calls). When that many are in flight, later searches of the key queue; the thread of
a call that returns hands its slot to the oldest queued search of its key, which sends it
together with every queued search of that key as one multi-row request, up to ``max_rows``
query rows, and gives each caller its own rows of the reply. So under load one round trip (and one
request's fixed cost on both sides of the hop) serves several callers, and without load nothing
changes.

Contract:

* Each caller gets exactly the hits its own rows would have had alone (the shard searches rows
  independently); ``SearchReply.stats`` is never coalesced (explain calls go alone).
* Deadlines: the batched call carries the latest deadline of its members (None when one has
  none); each caller still waits no longer than its own ``timeout`` (then ``DeadlineExceeded``;
  a queued search that times out is withdrawn and never sent).
* Errors: a transport or shard-state error (``Unavailable``, ``NotFound``, ``WrongRoute``...) of
  the batched call is every member's error. ``InvalidArgument`` / ``FailedPrecondition`` may
  belong to one member's rows, so on those each member of a batch of several retries alone.
* Thread-safety: every method may be called from any thread; one lock guards the queue and the
  per-key counts, each caller waits on its own event. Order: within a key, searches are sent in
  arrival order (oldest queued first).
* Tracing: the batched call carries the trace context of the thread that sends it; the other
  members' traces show the router's span but not the shard's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from core.errors import DeadlineExceeded, DomainError, FailedPrecondition, InvalidArgument
from core.vectors import Queries
from shard.types import SearchReply

Send = Callable[[Queries, float | None], SearchReply]
"""Sends one search of the given rows with a timeout (None: no deadline) and returns its reply."""


@dataclass(eq=False)
class _Pending:
    key: Hashable
    queries: Queries
    send: Send
    deadline: float | None  # time.monotonic(); None: no deadline
    done: threading.Event = field(default_factory=threading.Event)
    batch: list[_Pending] | None = None  # set when this search is to send a batch (it leads)
    reply: SearchReply | None = None
    error: BaseException | None = None


class Coalescer:
    """Batches concurrent searches to one shard (see the module docstring)."""

    def __init__(self, max_in_flight: int = 2, max_rows: int = 64) -> None:
        if max_in_flight < 1 or max_rows < 1:
            raise ValueError("max_in_flight and max_rows must be >= 1")
        self.max_in_flight = max_in_flight
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._in_flight: dict[Hashable, int] = {}  # calls running per key (keys at 0 removed)
        self._queue: list[_Pending] = []
        self.batches = 0  # calls that carried more than one search (for tests and benchmarks)

    def search(self, key: Hashable, queries: Queries, timeout: float | None, send: Send) -> SearchReply:
        """``send(queries, timeout)``'s reply, possibly answered by a batched call with others of
        the same ``key`` (callers with equal keys must mean the same search but for the rows)."""
        me = _Pending(key, queries, send, None if timeout is None else time.monotonic() + timeout)
        with self._lock:
            running = self._in_flight.get(key, 0)
            if running < self.max_in_flight:
                self._in_flight[key] = running + 1
                me.batch = [me]
            else:
                self._queue.append(me)
        if me.batch is None:
            wait = None if me.deadline is None else max(0.0, me.deadline - time.monotonic())
            if not me.done.wait(wait):
                with self._lock:
                    if me in self._queue:  # never sent: withdraw it
                        self._queue.remove(me)
                        raise DeadlineExceeded("the shard search did not start before the deadline")
                me.done.wait(None if me.batch is not None else 1.0)
                if not me.done.is_set():
                    raise DeadlineExceeded("no answer from the shard before the deadline")
            if me.batch is None:  # answered by another search's call
                if me.error is not None:
                    raise me.error
                assert me.reply is not None
                return me.reply
            me.done.clear()
        try:
            self._send(me.batch)
        finally:
            self._hand_over(key)
        if me.error is not None:
            raise me.error
        assert me.reply is not None
        return me.reply

    def _send(self, batch: list[_Pending]) -> None:
        """Sends ``batch`` as one call and answers each member (its ``reply`` or ``error``); the
        others' events are set, the leader's (``batch[0]``) is not."""
        if len(batch) == 1:
            only = batch[0]
            try:
                only.reply = only.send(only.queries, _timeout([only.deadline]))
            except BaseException as exc:
                only.error = exc
            return
        self.batches += 1
        rows = [len(p.queries) for p in batch]
        try:
            merged = Queries(np.concatenate([p.queries.vectors for p in batch]))
            reply = batch[0].send(merged, _timeout([p.deadline for p in batch]))
            start = 0
            for pending, count in zip(batch, rows, strict=True):
                pending.reply = SearchReply(reply.hits[start : start + count])
                start += count
        except (InvalidArgument, FailedPrecondition):
            for pending in batch:  # maybe one member's rows: each alone, on the leader's thread
                try:
                    pending.reply = pending.send(pending.queries, _timeout([pending.deadline]))
                except BaseException as exc:
                    pending.error = exc
        except DomainError as exc:
            for pending in batch:
                pending.error = exc
        except BaseException as exc:
            for pending in batch:
                pending.error = exc
            raise
        finally:
            for pending in batch[1:]:
                pending.done.set()

    def _hand_over(self, key: Hashable) -> None:
        """Gives this call's slot (of ``key``) to the oldest queued search of ``key``, with every
        queued search of the key that fits in ``max_rows``; frees the slot when none is queued."""
        with self._lock:
            leader = next((pending for pending in self._queue if pending.key == key), None)
            if leader is None:
                running = self._in_flight[key] - 1
                if running:
                    self._in_flight[key] = running
                else:
                    del self._in_flight[key]
                return
            self._queue.remove(leader)
            batch, rows, rest = [leader], len(leader.queries), []
            for pending in self._queue:
                if pending.key == key and rows + len(pending.queries) <= self.max_rows:
                    batch.append(pending)
                    rows += len(pending.queries)
                else:
                    rest.append(pending)
            self._queue = rest
            leader.batch = batch
        leader.done.set()


def _timeout(deadlines: list[float | None]) -> float | None:
    """Seconds to the latest of ``deadlines`` (None when one of them is None)."""
    if any(d is None for d in deadlines):
        return None
    return max(0.0, max(d for d in deadlines if d is not None) - time.monotonic())
