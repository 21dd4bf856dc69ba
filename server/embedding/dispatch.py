"""One call's items sent to Triton as concurrent requests (one request per item), so Triton's
dynamic batcher can put them, and other callers' items, into one model execution.

Contract of :func:`dispatch`:

- Each request takes a slot of the shared ``InFlightLimiter`` before it is sent and gives it back
  when its answer or error arrives (in the gRPC callback). A call with requests of its own in
  flight waits for them to free slots; a call with none waits at most ``admission_wait_s`` for a
  slot, then its unsent items are ``ResourceExhausted`` with a retry hint.
- The deadline holds: every request carries what is left of it (``client_timeout``, and Triton's
  own queue timeout), and the function returns by ``deadline + GRACE_S`` whatever Triton does,
  cancelling what is still in flight.
- UNAVAILABLE answers are retried with backoff (``RetryPolicy``) while the deadline leaves room.
- The result has one entry per payload: its vector (float32 ``[D]``) or the domain error of that
  item alone. Nothing is raised for a Triton failure.

How: requests are bytes built by ``wire.RequestTemplate`` and sent on the embedder's one gRPC
channel (``rpc``: its raw ``ModelInfer`` method). A call of one item (a search, most text calls)
sends it blocking in the caller's thread, which is the cheapest way gRPC has (no channel thread,
no callback, no hand-over between threads); a call of several puts them all in flight with
``rpc.future`` and collects the answers from the futures' callbacks.

Thread-safe: every call has its own state; only the limiter and the channel (both thread-safe)
are shared.
"""

from __future__ import annotations

import heapq
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from core.errors import DeadlineExceeded, DomainError, ResourceExhausted
from server.embedding import metrics
from server.embedding.cache import Vector
from server.embedding.limiter import InFlightLimiter
from server.embedding.model_info import ModelInfo
from server.embedding.triton_errors import RetryPolicy, is_retryable, to_domain
from server.embedding.wire import RequestTemplate, outcome, template_for, vector_of

GRACE_S = 0.25  # how long past the deadline a call waits for gRPC to report its own timeouts
MIN_ATTEMPT_S = 0.02  # no retry is sent with less than this left of the deadline
POLL_S = 0.01  # how often a call whose slots are all taken by others looks for a free one


@dataclass(frozen=True)
class Sender:
    """What every call of one embedder sends with: ``rpc``, Triton's ``ModelInfer`` as a
    bytes-to-bytes ``grpc.UnaryUnaryMultiCallable`` (``wire.MODEL_INFER``) on the embedder's
    channel; the shared ``limiter``; the ``retry`` policy; how long a call with nothing in flight
    waits for a slot; Triton's ``url`` (for messages); ``on_unavailable``, called for each
    UNAVAILABLE answer."""

    rpc: Any
    limiter: InFlightLimiter
    retry: RetryPolicy
    admission_wait_s: float
    url: str
    on_unavailable: Callable[[], None]


class _Dispatch:
    def __init__(self, sender: Sender, info: ModelInfo, payloads: Sequence[bytes], deadline: float, what: str) -> None:
        self.rpc = sender.rpc
        self.info = info
        self.template: RequestTemplate = template_for(info.name, info.input_name, info.output_name)
        self.blocking = len(payloads) == 1
        self.payloads = payloads
        self.deadline = deadline
        self.limiter = sender.limiter
        self.retry = sender.retry
        self.admission_wait_s = sender.admission_wait_s
        self.url = sender.url
        self.what = what
        self.on_unavailable = sender.on_unavailable
        n = len(payloads)
        self.out: list[Vector | DomainError | None] = [None] * n
        self.attempts = [0] * n
        self.last_error: dict[int, Any] = {}
        self.todo: deque[int] = deque(range(n))
        self.retries: list[tuple[float, int]] = []
        self.calls: dict[int, Any] = {}
        self.done: queue.SimpleQueue[tuple[int, Any, Any]] = queue.SimpleQueue()

    def error(self, exc: Any, i: int) -> DomainError:
        return to_domain(
            exc,
            model=self.info.name,
            url=self.url,
            what=self.what,
            attempts=self.attempts[i],
            retry_after_s=self.limiter.retry_after_s(),
        )

    def run(self) -> list[Vector | DomainError]:
        while self.todo or self.retries or self.calls:
            now = time.monotonic()
            while self.retries and self.retries[0][0] <= now:
                self.todo.append(heapq.heappop(self.retries)[1])
            if now >= self.deadline and not self.calls:
                self.expire_unsent()
                break
            self.send_ready()
            if self.calls or self.retries or self.todo:
                self.wait_one()
        return [self.finished(i, v) for i, v in enumerate(self.out)]

    def finished(self, i: int, value: Vector | DomainError | None) -> Vector | DomainError:
        if value is None:  # not reachable by construction; never hand back a hole
            return DeadlineExceeded(f"model {self.info.name!r} at Triton {self.url}: no answer within the deadline")
        return value

    def expire_unsent(self) -> None:
        for i in [*self.todo, *(i for _, i in self.retries)]:
            last = self.last_error.get(i)
            self.out[i] = (
                self.error(last, i)
                if last is not None
                else DeadlineExceeded(
                    f"{self.what} not sent to model {self.info.name!r} at Triton {self.url}: deadline passed"
                )
            )
        self.todo.clear()
        self.retries.clear()

    def send_ready(self) -> None:
        while self.todo and time.monotonic() < self.deadline:
            if not self.limiter.acquire(0):
                if self.calls:
                    return  # our own requests will free slots: wait for them
                wait = min(self.admission_wait_s, self.deadline - time.monotonic())
                if wait <= 0 or not self.limiter.acquire(wait):
                    self.refuse_unsent()
                    return
            self.send(self.todo.popleft())

    def refuse_unsent(self) -> None:
        refused = ResourceExhausted(
            f"embedding back-pressure: {self.limiter.capacity} requests already in flight to Triton at {self.url} "
            f"(model {self.info.name!r}); retry later",
            retry_after_s=self.limiter.retry_after_s(),
        )
        for i in self.todo:
            self.out[i] = refused
        self.todo.clear()

    def send(self, i: int) -> None:
        """Sends item ``i``; its slot is already taken and goes back when the answer is in (the
        future's callback when several are in flight)."""
        started = time.monotonic()
        remaining = max(0.001, self.deadline - started)
        self.attempts[i] += 1
        request = self.template.request(self.payloads[i], int(remaining * 1e6))
        limiter = self.limiter
        kind = self.what
        if self.blocking:
            try:
                response = self.rpc(request, timeout=remaining)
            except grpc.RpcError as e:
                limiter.release()
                metrics.triton_request(kind, e, time.monotonic() - started)
                self.settle(i, None, e)
                return
            elapsed = time.monotonic() - started
            limiter.release(elapsed)
            metrics.triton_request(kind, None, elapsed)
            self.settle(i, response, None)
            return
        done = self.done

        def callback(future: grpc.Future[Any]) -> None:
            response, error = outcome(future)
            elapsed = time.monotonic() - started
            limiter.release(elapsed if error is None else None)
            metrics.triton_request(kind, error, elapsed)
            done.put((i, response, error))

        try:
            future = self.rpc.future(request, timeout=remaining)
        except grpc.RpcError as e:
            limiter.release()
            metrics.triton_request(kind, e, time.monotonic() - started)
            self.out[i] = self.error(e, i)
            return
        self.calls[i] = future
        future.add_done_callback(callback)

    def wait_one(self) -> None:
        now = time.monotonic()
        wake = self.deadline + GRACE_S if self.calls else self.deadline
        if self.retries:
            wake = min(wake, self.retries[0][0])
        if self.todo and self.calls:
            wake = min(wake, now + POLL_S)
        try:
            i, result, error = self.done.get(timeout=max(0.0, wake - now))
        except queue.Empty:
            if self.calls and time.monotonic() >= self.deadline + GRACE_S:
                self.abandon_in_flight()
            return
        if self.calls.pop(i, None) is None:
            return  # answered after this call gave up on it
        self.settle(i, result, error)

    def abandon_in_flight(self) -> None:
        for i, call in self.calls.items():
            call.cancel()  # its callback still comes, and gives the slot back
            self.out[i] = DeadlineExceeded(
                f"Triton at {self.url} did not answer for model {self.info.name!r} within the deadline"
            )
        self.calls.clear()

    def settle(self, i: int, response: Any, error: Any) -> None:
        if error is None:
            self.out[i] = vector_of(response, self.info.name, self.info.dim)
            return
        if is_retryable(error):
            self.on_unavailable()
            self.last_error[i] = error
            if self.attempts[i] < self.retry.attempts:
                due = time.monotonic() + self.retry.backoff(self.attempts[i])
                if due + MIN_ATTEMPT_S < self.deadline:
                    heapq.heappush(self.retries, (due, i))
                    return
        self.out[i] = self.error(error, i)


def dispatch(
    sender: Sender, info: ModelInfo, payloads: Sequence[bytes], deadline: float, what: str
) -> list[Vector | DomainError]:
    """Embeds ``payloads`` with model ``info`` (see the module doc); ``deadline`` is a
    ``time.monotonic()`` instant; ``what`` names the items in messages ("text", "image") and is
    the ``kind`` of their metrics (``server.embedding.metrics``)."""
    if not payloads:
        return []
    metrics.batch(what, len(payloads))
    return _Dispatch(sender, info, payloads, deadline, what).run()
