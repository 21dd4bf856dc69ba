"""The embedded shape: ``vectorsearch_client.open(path)``, the engine in this process.

    import vectorsearch_client as vs
    with vs.open("./vectors") as client:      # no server, no network
        client.create_collection("docs", 384)
        client.upsert("docs", ids, vectors)
        hits = client.search("docs", query, k=10)

An :class:`EmbeddedClient` is a :class:`~vectorsearch_client.Client`: the same methods, results
and exceptions; ``open_async(path)`` gives an :class:`AsyncEmbeddedClient`, an
:class:`~vectorsearch_client.AsyncClient` whose calls run in a worker thread
(``asyncio.to_thread``), so the event loop is never blocked by a search or an fsync. The calls
go to the single-node server's own servicers, assembled in this process over the directory by
the server package (``server.embedded``), with the request messages passed as they are: no
serialisation, no socket. Durability is the server's: an acknowledged
write is fsync'ed in the shard's log. One process owns a directory at a time (a file lock); a
second ``open`` of it fails with :class:`DirectoryLocked` until ``close``.

The SDK does not depend on the server package; ``open`` imports it when called and raises
ImportError saying what to install when it is missing.
"""

from __future__ import annotations

import asyncio
import os
from types import TracebackType
from typing import Any

from vectorsearch_client import _convert as cv
from vectorsearch_client.aio import AsyncClient
from vectorsearch_client.client import Client

INSTALL_HINT = (
    "vectorsearch_client.open() runs the vectorsearch engine in this process and needs the server "
    "package: install it next to the SDK, from a checkout `pip install ./clients/python .` "
    "(the `vectorsearch` distribution), or connect to a running server with Client(address)"
)


class DirectoryLocked(RuntimeError):
    """The directory is open in another process, or by another client of this one."""


class _Closed:
    """What the stubs become on ``close``: every call is a ValueError, as on a closed channel."""

    def __getattr__(self, name: str) -> Any:
        def closed(*args: Any, **kwargs: Any) -> Any:
            raise ValueError("the embedded client is closed")

        return closed


def _server(path: str | os.PathLike[str], timeout: float, triton_url: str | None, allow_file_roots: Any) -> Any:
    """The server package's ``EmbeddedServer`` over ``path`` (ImportError with the hint when
    the package is missing; DirectoryLocked when another has the directory open)."""
    try:
        from server import embedded
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        raise ImportError(f"{INSTALL_HINT} (cannot import {missing})", name=getattr(exc, "name", None)) from exc
    try:
        return embedded.EmbeddedServer(
            path, triton_url=triton_url, request_timeout_s=timeout, allow_file_roots=allow_file_roots
        )
    except embedded.DirectoryLocked as exc:
        raise DirectoryLocked(str(exc)) from None


class EmbeddedClient(Client):
    """A :class:`Client` over the engine in this process, opened on ``path`` (see :func:`open`)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 10.0,
        triton_url: str | None = None,
        allow_file_roots: tuple[str | os.PathLike[str], ...] = (),
        max_attempts: int = 5,
    ) -> None:
        self._server = _server(path, timeout, triton_url, allow_file_roots)
        stubs = self._server.stubs()
        self._setup(None, {cv.SEARCH: stubs[cv.SEARCH], cv.ADMIN: stubs[cv.ADMIN]}, timeout, None, max_attempts)

    @property
    def path(self) -> str:
        """The directory this client owns (absolute)."""
        return str(self._server.path)

    @property
    def closed(self) -> bool:
        return bool(self._server.closed)

    def close(self) -> None:
        """Stops the background compaction, fsyncs and closes the logs and releases the
        directory; later calls raise ValueError. Idempotent."""
        self._stubs = {cv.SEARCH: _Closed(), cv.ADMIN: _Closed()}
        self._server.close()

    def __enter__(self) -> EmbeddedClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddedClient({self.path!r}{', closed' if self.closed else ''})"


def open(
    path: str | os.PathLike[str],
    *,
    timeout: float = 10.0,
    triton_url: str | None = None,
    allow_file_roots: tuple[str | os.PathLike[str], ...] = (),
    max_attempts: int = 5,
) -> EmbeddedClient:
    """Opens (creating it if missing) the database directory ``path`` in this process and
    returns a client over it: the same methods, results and exceptions as ``Client``, no server.

    ``timeout``: the default deadline of every call. ``triton_url``: host:port of a Triton serving
    the CLIP models (``clip_text``, ``clip_image``), for search and ingestion by text and image;
    without it those calls raise FailedPrecondition. ``allow_file_roots``: directories whose
    files ``ingest_images`` may read by ``file://`` URI. Raises DirectoryLocked when another
    process (or client) has the directory open, ImportError when the server package is missing.
    Close the client (or use it as a context manager) to release the directory.
    """
    return EmbeddedClient(
        path, timeout=timeout, triton_url=triton_url, allow_file_roots=allow_file_roots, max_attempts=max_attempts
    )


class _ThreadedStub:
    """A stub's methods as coroutines: each call runs the in-process method in a worker thread."""

    def __init__(self, stub: Any) -> None:
        self._stub = stub

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        async def call(request: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(method, request, **kwargs)

        return call


class AsyncEmbeddedClient(AsyncClient):
    """An :class:`AsyncClient` over the engine in this process, opened on ``path`` (see
    :func:`open_async`): each call runs in a worker thread, as the engine's calls block."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 10.0,
        triton_url: str | None = None,
        allow_file_roots: tuple[str | os.PathLike[str], ...] = (),
        max_attempts: int = 5,
    ) -> None:
        self._server = _server(path, timeout, triton_url, allow_file_roots)
        stubs = self._server.stubs()
        threaded = {cv.SEARCH: _ThreadedStub(stubs[cv.SEARCH]), cv.ADMIN: _ThreadedStub(stubs[cv.ADMIN])}
        self._setup(None, threaded, timeout, None, max_attempts)

    @property
    def path(self) -> str:
        return str(self._server.path)

    @property
    def closed(self) -> bool:
        return bool(self._server.closed)

    async def close(self) -> None:
        """As ``EmbeddedClient.close`` (in a worker thread)."""
        self._stubs = {cv.SEARCH: _Closed(), cv.ADMIN: _Closed()}
        await asyncio.to_thread(self._server.close)

    async def __aenter__(self) -> AsyncEmbeddedClient:
        return self

    def __repr__(self) -> str:
        return f"AsyncEmbeddedClient({self.path!r}{', closed' if self.closed else ''})"


def open_async(
    path: str | os.PathLike[str],
    *,
    timeout: float = 10.0,
    triton_url: str | None = None,
    allow_file_roots: tuple[str | os.PathLike[str], ...] = (),
    max_attempts: int = 5,
) -> AsyncEmbeddedClient:
    """As :func:`open`, for asyncio: ``async with vectorsearch_client.open_async(path) as client``,
    the methods of ``AsyncClient``. Opening (recovery from disk) runs in the calling thread."""
    return AsyncEmbeddedClient(
        path, timeout=timeout, triton_url=triton_url, allow_file_roots=allow_file_roots, max_attempts=max_attempts
    )
