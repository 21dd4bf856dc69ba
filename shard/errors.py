"""Domain errors of the shard. The gRPC layer maps each class to one status code."""

from __future__ import annotations


class ShardError(Exception):
    """Base class; ``str(err)`` is the message shown to the client."""


class InvalidArgument(ShardError):
    """The request is malformed; nothing was changed."""


class NotFound(ShardError):
    """A named collection does not exist."""


class AlreadyExists(ShardError):
    """A collection exists with a different spec."""


class OutOfRange(ShardError):
    """A requested position (e.g. a WAL sequence number) is outside what is kept."""


class Unavailable(ShardError):
    """The shard cannot serve this now (closing, or its log failed); the caller may retry."""


class CorruptionError(ShardError):
    """Persistent state is damaged in a way recovery must not paper over."""
