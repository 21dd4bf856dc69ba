"""Domain errors shared by the shard, the router and the server.

Every layer raises these (never a gRPC status); the gRPC edges translate them with the one
two-way map in ``core/status.py``. ``str(err)`` is the message shown to the client, so it must
never carry SQL text, file contents or stack traces.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base class of every error a client may see."""


class InvalidArgument(DomainError):
    """The request is malformed; nothing was changed."""


class NotFound(DomainError):
    """A named collection (or item) does not exist."""


class AlreadyExists(DomainError):
    """A collection exists with a different spec."""


class Unauthenticated(DomainError):
    """The call carries no API key, or one the server does not know (or that was revoked)."""


class PermissionDenied(DomainError):
    """The caller's API key may not make this call: its role is too low, or the collection is
    not one of the key's."""


class OutOfRange(DomainError):
    """A requested position (e.g. a WAL sequence number) is outside what is kept."""


class FailedPrecondition(DomainError):
    """The system is not in a state that allows the call (e.g. a newer schema)."""


class ResourceExhausted(DomainError):
    """A limit was reached (message size, queue depth); retry later or send less.

    ``retry_after_s``, when set, is how long the caller should wait before retrying (a queue
    that is full now, not a request that is too big); the gRPC edge sends it as the trailing
    metadata ``retry-after-ms``."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(DomainError):
    """The callee cannot serve this now (closing, unreachable, its log failed); retry."""


class DeadlineExceeded(Unavailable):
    """The call's deadline passed before it finished; it may or may not have taken effect."""


class Cancelled(DomainError):
    """The caller cancelled the call (or its deadline passed) and the work stopped."""


class CorruptionError(DomainError):
    """Persistent state is damaged in a way recovery must not paper over."""


class Internal(DomainError):
    """A bug or an unexpected failure on the other side of a call."""


class ShardsUnavailable(Unavailable):
    """Some shards did not answer; ``failed`` maps shard id to the reason."""

    def __init__(self, failed: dict[str, str]) -> None:
        self.failed = dict(sorted(failed.items()))
        super().__init__("shards unavailable: " + ", ".join(f"{s} ({r})" for s, r in self.failed.items()))


class WrongRoute(DomainError):
    """The request reached a shard through a stale view of the cluster: its ring version is
    older than the shard accepts, or it writes an id the shard no longer takes (the id is
    moving or has moved). Nothing was changed; reload the topology and retry on the new ring."""


class SchemaTooNew(FailedPrecondition):
    """The database was migrated by a newer version of the service."""
