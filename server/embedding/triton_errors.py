"""Triton's errors (the ``grpc.RpcError`` of a call to its gRPC service, or anything with
tritonclient's ``status()``/``message()``, such as ``wire.CallFailure``) as domain errors, and
which of them are worth retrying.

UNAVAILABLE is retried (Triton down or restarting, a connection being re-established, its queue
full for a moment); nothing else is. Messages name the model and Triton's address, and quote at
most ``MAX_DETAIL_CHARS`` of what Triton said.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from core.errors import (
    Cancelled,
    DeadlineExceeded,
    DomainError,
    Internal,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

MAX_DETAIL_CHARS = 300


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts``: sends of one request at most (the first included), all within the call's
    deadline; the wait before attempt ``n + 1`` is ``min(max_backoff_s, initial_backoff_s * 2**(n-1))``
    times a random factor in [0.5, 1] (jitter, so callers that failed together do not return
    together)."""

    attempts: int = 6
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0

    def backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * 2 ** max(0, attempt - 1))
        return base * random.uniform(0.5, 1.0)


def status_of(exc: Any) -> str:
    """``"UNAVAILABLE"``, ``"INVALID_ARGUMENT"``, ... (a ``grpc.RpcError`` has ``code()``, a
    ``grpc.StatusCode``; tritonclient's exception says ``"StatusCode.X"``)."""
    if callable(getattr(exc, "code", None)):
        code = exc.code()
        return str(getattr(code, "name", code) or "UNKNOWN")
    status = exc.status() if callable(getattr(exc, "status", None)) else None
    return str(status or "UNKNOWN").removeprefix("StatusCode.")


def detail(exc: Any) -> str:
    if callable(getattr(exc, "details", None)):
        message = exc.details()
    elif callable(getattr(exc, "message", None)):
        message = exc.message()
    else:
        message = str(exc)
    text = " ".join(str(message or "").split())
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + "..."


def is_retryable(exc: Any) -> bool:
    return status_of(exc) == "UNAVAILABLE"


def is_queue_full(exc: Any) -> bool:
    text = detail(exc).lower()
    return "queue" in text and ("exceed" in text or "full" in text)


def to_domain(exc: Any, *, model: str, url: str, what: str, attempts: int, retry_after_s: float) -> DomainError:
    """The domain error of a failed call to ``model`` at ``url``; ``what`` names the input
    (``"text"``, ``"image"``, ``"config"``); ``attempts``: how many sends failed."""
    status, text = status_of(exc), detail(exc)
    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
    if status == "INVALID_ARGUMENT":
        return InvalidArgument(f"{what} refused by model {model!r}: {text}")
    if status == "UNAVAILABLE" and is_queue_full(exc):
        return ResourceExhausted(
            f"Triton at {url} is saturated: the queue of model {model!r} is full{tries}; retry later",
            retry_after_s=retry_after_s,
        )
    if status == "RESOURCE_EXHAUSTED":
        return ResourceExhausted(f"Triton at {url} refused model {model!r}: {text}", retry_after_s=retry_after_s)
    if status == "UNAVAILABLE":
        return Unavailable(f"Triton at {url} is unavailable for model {model!r}{tries}: {text}")
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(f"Triton at {url} did not answer for model {model!r} within the deadline")
    if status == "CANCELLED":
        return Cancelled(f"the call to model {model!r} at Triton {url} was cancelled")
    if status == "NOT_FOUND":
        return Unavailable(f"Triton at {url} does not serve model {model!r} (not loaded?): {text}")
    return Internal(f"model {model!r} at Triton {url} failed ({status}): {text}")
