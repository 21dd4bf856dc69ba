"""In-process shards behind the same interface as remote ones (the single-node shape).

A ``LocalShardClient`` looks like a ``ShardClient`` to the router: its ``stub`` has one
attribute per ShardService method, each with ``__call__`` and ``future`` like a gRPC
multicallable, and failures raise ``grpc.RpcError`` with the same status codes. Calls run
the shard's own servicer (shard/service.py) directly in the calling thread: no
serialisation, no second hop, no thread hand-off. The router cannot tell local from remote.

Thread-safety: as the shard servicer (any thread).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, NoReturn

import grpc
import numpy as np
import numpy.typing as npt

from shard.collection import QueryHits
from shard.registry import Registry
from shard.service import ShardServicer

LOCAL_PREFIX = "local:"
Matrix = npt.NDArray[np.float32]


class LocalRpcError(grpc.RpcError):
    """What a local call raises instead of the gRPC channel's error; same code and details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class _Context:
    """The part of grpc.ServicerContext the shard servicer uses."""

    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise LocalRpcError(code, details)

    def time_remaining(self) -> float | None:
        return None


class _Method:
    def __init__(self, handler: Callable[[Any, Any], Any]) -> None:
        self._handler = handler

    def __call__(self, request: Any, timeout: float | None = None) -> Any:
        return self._handler(request, _Context())

    def future(self, request: Any, timeout: float | None = None) -> Future[Any]:
        """Runs the call now, in this thread, and returns its (finished) future."""
        done: Future[Any] = Future()
        try:
            done.set_result(self._handler(request, _Context()))
        except grpc.RpcError as exc:
            done.set_exception(exc)
        return done


class _LocalStub:
    def __init__(self, servicer: ShardServicer) -> None:
        for name in (
            "CreateCollection",
            "DropCollection",
            "ListCollections",
            "Upsert",
            "Delete",
            "Get",
            "Search",
            "Stats",
            "Compact",
        ):
            setattr(self, name, _Method(getattr(servicer, name)))


class LocalShardClient:
    """A shard registry owned by this process, reachable as if it were remote."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.stub: Any = _LocalStub(ShardServicer(registry))

    def search(
        self, collection: str, queries: Matrix, k: int, ef: int, allow_ids: Sequence[str] | None
    ) -> list[QueryHits]:
        """The shard's search without the request/response messages (the router's fast path
        for a single in-process shard). Raises the shard's domain errors (NotFound,
        InvalidArgument), which the server maps to the same status codes."""
        return self.registry.get(collection).search(queries, k, ef, allow_ids)

    def close(self) -> None:
        """Nothing to release: the owner of the registry closes it."""
