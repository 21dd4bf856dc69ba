"""The asyncio client: ``Client``'s methods as coroutines over grpc.aio. Requests and results
are built by the same code as the sync client's (``_ops``, ``_convert``)."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from vectorsearch_client import _convert as cv
from vectorsearch_client import _ops
from vectorsearch_client._proto import admin_service_pb2 as admin_pb
from vectorsearch_client._proto import admin_service_pb2_grpc as admin_grpc
from vectorsearch_client._proto import search_service_pb2_grpc as pb_grpc
from vectorsearch_client.client import counted, progress_bar
from vectorsearch_client.errors import from_rpc_error
from vectorsearch_client.filters import Filter

T = TypeVar("T")


class AsyncClient:
    """The asyncio variant of ``Client`` (grpc.aio), with the same methods as coroutines.

    ``timeout`` is the deadline, in seconds, of every call (each method takes ``timeout=`` to
    override it); idempotent calls are retried by gRPC on UNAVAILABLE, up to ``max_attempts``.
    ``api_key`` is sent as ``authorization: Bearer <key>``; ``credentials`` makes a TLS channel.
    Failed calls raise ``VectorSearchError`` subclasses (``vectorsearch_client.errors``).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 10.0,
        api_key: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        max_attempts: int = 5,
    ) -> None:
        options = cv.channel_options(max_attempts)
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        else:
            self._channel = grpc.aio.secure_channel(address, credentials, options=options)
        self.timeout = timeout
        self._metadata = cv.call_metadata(api_key)
        self._stubs: dict[str, Any] = {
            cv.SEARCH: pb_grpc.SearchServiceStub(self._channel),
            cv.ADMIN: admin_grpc.AdminServiceStub(self._channel),
        }

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _run(self, op: _ops.Op[T], timeout: float | None) -> T:
        method = getattr(self._stubs[op.service], op.method)
        try:
            response = await method(op.request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return op.parse(response)

    # Collections

    async def create_collection(
        self,
        name: str,
        dimension: int,
        metric: str = "cosine",
        *,
        m: int = 0,
        ef_construction: int = 0,
        ef_search: int = 0,
        embedding_model: str = "",
        timeout: float | None = None,
    ) -> bool:
        """Creates a collection (metric: cosine, inner_product or l2; HNSW parameters 0 = server
        default). True if created, False if an identical one exists (AlreadyExists if different)."""
        op = _ops.create_collection(name, dimension, metric, m, ef_construction, ef_search, embedding_model)
        return await self._run(op, timeout)

    async def drop_collection(self, name: str, *, timeout: float | None = None) -> bool:
        return await self._run(_ops.drop_collection(name), timeout)

    async def list_collections(self, *, timeout: float | None = None) -> list[cv.Collection]:
        return await self._run(_ops.list_collections(), timeout)

    async def describe_collection(self, name: str, *, timeout: float | None = None) -> cv.Collection:
        return await self._run(_ops.describe_collection(name), timeout)

    # Items

    async def upsert(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: cv.VectorsLike,
        metadata: Sequence[cv.MetadataLike] | None = None,
        *,
        timeout: float | None = None,
    ) -> int:
        """Inserts or replaces items: row i of ``vectors`` (2-D, or 1-D for one id) and
        ``metadata[i]`` (a ``Metadata`` or a dict with uri, tags, attributes) are ``ids[i]``."""
        return await self._run(_ops.upsert(collection, ids, vectors, metadata), timeout)

    async def bulk_upsert(
        self,
        collection: str,
        ids: Sequence[str],
        vectors: cv.VectorsLike,
        metadata: Sequence[cv.MetadataLike] | None = None,
        *,
        batch_size: int = 1000,
        progress: bool = True,
        timeout: float | None = None,
    ) -> int:
        """Streams the items in batches of ``batch_size`` over UpsertStream (a tqdm progress bar
        if tqdm is installed and ``progress``). The deadline defaults to ``timeout`` per batch.
        Returns how many items were upserted."""
        batches = cv.upsert_batches(collection, ids, vectors, metadata, batch_size)
        deadline = timeout or self.timeout * max(1, -(-len(ids) // batch_size))
        bar = progress_bar(len(ids), progress, collection)
        try:
            response = await self._stubs[cv.SEARCH].UpsertStream(
                counted(batches, bar), timeout=deadline, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            if bar is not None:
                bar.close()
        return int(response.upserted)

    async def get(
        self, collection: str, ids: Sequence[str], include_vectors: bool = False, *, timeout: float | None = None
    ) -> cv.GetResult:
        return await self._run(_ops.get(collection, ids, include_vectors), timeout)

    async def delete(self, collection: str, ids: Sequence[str], *, timeout: float | None = None) -> int:
        return await self._run(_ops.delete(collection, ids), timeout)

    # Search

    async def search(
        self,
        collection: str,
        vector: cv.VectorsLike | None = None,
        *,
        text: str | None = None,
        image: cv.ImageLike | None = None,
        k: int = 10,
        ef: int = 0,
        filter: Filter | None = None,
        include_metadata: bool = True,
        require_all_shards: bool = False,
        timeout: float | None = None,
    ) -> cv.Hits:
        """The k nearest items to one query: a vector, a text or an image (bytes or a path)."""
        op = _ops.search(collection, vector, text, image, k, ef, filter, include_metadata, require_all_shards)
        return await self._run(op, timeout)

    async def search_by_id(
        self,
        collection: str,
        id: str,
        *,
        k: int = 10,
        ef: int = 0,
        filter: Filter | None = None,
        include_metadata: bool = True,
        timeout: float | None = None,
    ) -> cv.Hits:
        """The k nearest items to a stored item's vector (the item itself left out)."""
        return await self._run(_ops.search_by_id(collection, id, k, ef, filter, include_metadata), timeout)

    # Admin (results are the generated protobuf messages of admin_service.proto)

    async def cluster_status(self, *, timeout: float | None = None) -> admin_pb.ClusterStatusResponse:
        return await self._run(_ops.cluster_status(), timeout)

    async def compact(
        self, collection: str, *, wait: bool = True, timeout: float | None = None
    ) -> list[admin_pb.ShardIndexStatus]:
        return await self._run(_ops.compact(collection, wait), timeout)

    async def add_shard(
        self,
        shard_id: str,
        address: str,
        *,
        weight: float = 1.0,
        no_rebalance: bool = False,
        timeout: float | None = None,
    ) -> admin_pb.RebalanceStatus | None:
        return await self._run(_ops.add_shard(shard_id, address, weight, no_rebalance), timeout)

    async def drain_shard(self, shard_id: str, *, timeout: float | None = None) -> admin_pb.RebalanceStatus | None:
        return await self._run(_ops.drain_shard(shard_id), timeout)

    async def rebalance_status(
        self, rebalance_id: int = 0, *, timeout: float | None = None
    ) -> admin_pb.RebalanceStatus | None:
        """A rebalance's status (0: the running one, else the latest); None if there never was one."""
        return await self._run(_ops.rebalance_status(rebalance_id), timeout)
