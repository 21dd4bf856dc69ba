"""The embedded shape: the single-node server's engine in the caller's process, without gRPC.

``vectorsearch_client.open(path)`` (clients/python) builds an :class:`EmbeddedServer` and sends
the SDK's requests through :meth:`EmbeddedServer.stubs`: objects with the generated stubs'
methods, each calling the servicer method of ``server/service.py`` directly with the request
message (no serialisation, no socket, no thread hop) and an in-process :class:`LocalContext`.

What runs is what ``python -m server --local-shard DIR/shard --database-url sqlite:///DIR/meta.db``
assembles (``server/main.py``): the shard registry in ``DIR/shard`` (WAL fsync'ed before a write
is acknowledged, background compaction, snapshots, recovery on open), the metadata database in
``DIR/meta.db``, the engine, the media engine (text and image search and ingestion when a
``triton_url`` is given) and the SearchService and AdminService servicers. So the same
directory can later be served by that command (after ``close``), and every call answers as the
server would, errors included: a servicer's ``context.abort`` raises :class:`LocalRpcError`, a
``grpc.RpcError`` with the status code and details the SDK maps to its exceptions. Not
assembled: the gRPC server and its interceptors (request ids, rate limits, metrics), health,
the topology refresher and the rebalancer (one process owns the only shard: the topology calls
are FAILED_PRECONDITION).

One process owns a directory at a time: ``DIR/shard/LOCK`` is held with ``flock`` from open to
``close`` (``core/dirlock.py``; released by the kernel when the process dies), and a second open,
from this process or another, or a server started with ``--local-shard DIR/shard``, is
:class:`DirectoryLocked`. ``close`` stops the background threads (compaction, index
repair), fsyncs and closes the logs, then releases the lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from core.dirlock import DirectoryLock
from core.dirlock import DirectoryLocked as DirectoryLocked  # what a second open raises
from core.errors import FailedPrecondition
from router.fanout import LOCAL_PREFIX, Router
from router.topology import TopologyStore, make_engine
from server.engine import Engine, EngineOptions
from server.fetch import FetchPolicy, UriFetcher
from server.media import MediaEngine
from server.metadata import MetadataStore
from server.service import AdminServicer, SearchServicer
from shard.collection import CollectionOptions
from shard.local import LocalShard
from shard.registry import Registry
from vsproto.v1 import admin_service_pb2, search_service_pb2

log = logging.getLogger(__name__)

SHARD_ID = "local-0"  # the single-node server's default --local-shard-id
SHARD_DIR = "shard"
META_DB = "meta.db"
REPAIR_AFTER_S = 60.0  # as the server's --repair-after-s and --repair-interval-s defaults
REPAIR_INTERVAL_S = 10.0

NO_EMBEDDER = (
    "this embedded database has no embedding service: open it with triton_url='HOST:PORT' (Triton serving "
    "clip_text and clip_image) to search and ingest by text or image"
)

SEARCH_SERVICE = search_service_pb2.DESCRIPTOR.services_by_name["SearchService"]
ADMIN_SERVICE = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"]


class LocalRpcError(grpc.RpcError):
    """A call that ended with a status other than OK: what ``grpc.RpcError`` offers a client."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details
        self._trailing = trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:  # (key, value) pairs, as grpc's (grpc-stubs say otherwise)
        return self._trailing


class LocalContext:
    """The ``grpc.ServicerContext`` of one in-process call: its deadline (``timeout`` seconds
    from the call; None: none), its metadata and trailing metadata, and ``abort``, which raises
    :class:`LocalRpcError`. Callbacks registered with ``add_callback`` run when the call ends."""

    __slots__ = ("_callbacks", "_deadline", "_metadata", "_trailing")

    def __init__(self, timeout: float | None, metadata: Any = None) -> None:
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._metadata = tuple(metadata or ())
        self._trailing: tuple[tuple[str, str], ...] = ()
        self._callbacks: list[Callable[[], Any]] | None = None

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def is_active(self) -> bool:
        return self._deadline is None or time.monotonic() < self._deadline

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._trailing = tuple(metadata)

    def add_callback(self, callback: Callable[[], Any]) -> bool:
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(callback)
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise LocalRpcError(code, details, self._trailing)

    def peer(self) -> str:
        return "in-process"

    def end(self) -> None:
        for callback in self._callbacks or ():
            with contextlib.suppress(Exception):
                callback()


def _call(handler: Callable[[Any, Any], Any], request_type: type[Any], streaming: bool) -> Callable[..., Any]:
    """A stub method over ``handler`` (a servicer's bound method). Requests of the server's own
    message classes go as they are; one of another class of the same message (stubs generated
    separately and not shared through the descriptor pool) is copied through its bytes. The
    response is the server's message: the caller reads its fields, whatever its own classes."""

    def convert(message: Any) -> Any:
        if type(message) is request_type:
            return message
        return request_type.FromString(message.SerializeToString())

    def method(request: Any, timeout: float | None = None, metadata: Any = None, **_: Any) -> Any:
        context = LocalContext(timeout, metadata)
        try:
            if streaming:
                return handler(map(convert, request), context)
            return handler(convert(request), context)
        finally:
            context.end()

    method.__name__ = getattr(handler, "__name__", "method")
    return method


class LocalStub:
    """The methods of one service's generated stub, over a servicer in this process."""

    def __init__(self, servicer: Any, service: Any) -> None:
        from google.protobuf import symbol_database

        db = symbol_database.Default()
        for m in service.methods:
            if m.server_streaming:
                continue  # (none in the public API)
            request_type = db.GetSymbol(m.input_type.full_name)
            setattr(self, m.name, _call(getattr(servicer, m.name), request_type, m.client_streaming))

    def __getattr__(self, name: str) -> Any:  # (only for names the loop above did not set)
        raise AttributeError(f"the service has no method {name!r}")


class EmbeddedServer:
    """The single-node server's engine and servicers over ``path`` in this process (see the
    module docstring). ``triton_url``: Triton's gRPC host:port serving clip_text and clip_image
    (text and image search and ingestion; without it those calls are FAILED_PRECONDITION).
    ``request_timeout_s``: the engine's deadline for calls made without one.
    ``allow_file_roots``: directories whose files ingestion may read by ``file://`` URI.
    ``collection_options``: the shard's (tests); by default the server's, every acknowledged
    write fsync'ed in the collection's log."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        triton_url: str | None = None,
        request_timeout_s: float = 10.0,
        allow_file_roots: tuple[str | os.PathLike[str], ...] = (),
        collection_options: CollectionOptions | None = None,
    ) -> None:
        self.path = Path(path).expanduser().resolve()
        (self.path / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        self._lock = DirectoryLock(self.path / SHARD_DIR, self.path)  # the server's --local-shard takes it too
        self._stop = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()
        self.registry: Registry | None = None
        self.embedder: Any = None
        self._sql: Any = None
        try:
            self._assemble(triton_url, request_timeout_s, allow_file_roots, collection_options)
        except BaseException:
            self._teardown()
            raise

    def _assemble(
        self,
        triton_url: str | None,
        request_timeout_s: float,
        allow_file_roots: tuple[str | os.PathLike[str], ...],
        collection_options: CollectionOptions | None,
    ) -> None:
        self._sql = make_engine(f"sqlite:///{self.path / META_DB}")
        topology = TopologyStore(self._sql)
        topology.migrate()
        metadata = MetadataStore(self._sql)
        metadata.migrate()
        shard_dir = self.path / SHARD_DIR
        registry = Registry(shard_dir, collection_options or CollectionOptions())
        registry.open()  # recovers every collection from its snapshot and log
        self.registry = registry
        local = {SHARD_ID: LocalShard(registry)}
        current = topology.put_shard(SHARD_ID, f"{LOCAL_PREFIX}{shard_dir}")
        if len(current.shards) != 1:
            raise FailedPrecondition(
                f"{self.path / META_DB} names {len(current.shards)} shards: it is a cluster's metadata database, "
                "not an embedded directory"
            )
        self.engine = Engine(metadata, Router.connect(current, local), EngineOptions(timeout_s=request_timeout_s))
        if triton_url:
            from server.embedding import TritonEmbedder, make_cache

            self.embedder = TritonEmbedder(triton_url, cache=make_cache(None))
        fetcher = UriFetcher(FetchPolicy(tuple(Path(d) for d in allow_file_roots), False))
        self.media = MediaEngine(self.engine, self.embedder, fetcher, no_embedder=NO_EMBEDDER)
        self.search_servicer = SearchServicer(self.engine, media=self.media)
        self.admin_servicer = AdminServicer(topology, self.engine)
        self.engine.repair_index_logged(REPAIR_AFTER_S)
        self._repairer = threading.Thread(
            target=self.engine.repair_index_until,
            args=(self._stop, REPAIR_AFTER_S, REPAIR_INTERVAL_S, False),
            name="index-repair",
            daemon=True,
        )
        self._repairer.start()

    def stubs(self) -> dict[str, Any]:
        """Stub-like objects of SearchService and AdminService by full service name (what
        ``vectorsearch_client.Client.from_stubs`` takes)."""
        return {
            SEARCH_SERVICE.full_name: LocalStub(self.search_servicer, SEARCH_SERVICE),
            ADMIN_SERVICE.full_name: LocalStub(self.admin_servicer, ADMIN_SERVICE),
        }

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stops the background threads, fsyncs and closes the shard's logs, closes the
        metadata database and releases the directory. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._teardown()

    def _teardown(self) -> None:
        self._stop.set()
        repairer = getattr(self, "_repairer", None)
        if repairer is not None:
            repairer.join()
        try:
            if self.registry is not None:
                self.registry.close()
            if self.embedder is not None:
                self.embedder.close()
            if self._sql is not None:
                self._sql.dispose()
        finally:
            self._lock.release()

    def __enter__(self) -> EmbeddedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
