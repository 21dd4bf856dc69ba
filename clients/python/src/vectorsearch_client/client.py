"""The synchronous client."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from vectorsearch_client import _admin as adm
from vectorsearch_client import _convert as cv
from vectorsearch_client import _media as media
from vectorsearch_client import _ops
from vectorsearch_client._channels import channel_credentials, close_channel, tls_options
from vectorsearch_client._proto import admin_service_pb2_grpc as admin_grpc
from vectorsearch_client._proto import search_service_pb2 as pb
from vectorsearch_client._proto import search_service_pb2_grpc as pb_grpc
from vectorsearch_client.errors import from_rpc_error, not_ready
from vectorsearch_client.filters import Filter

T = TypeVar("T")


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar when tqdm is installed and ``enabled``, else None."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="item", desc=desc)


def counted(batches: Iterator[pb.UpsertRequest], bar: Any) -> Iterator[pb.UpsertRequest]:
    for batch in batches:
        yield batch
        if bar is not None:
            bar.update(len(batch.items))


class Client:
    """A connection to a vectorsearch server.

    ``timeout`` is the deadline, in seconds, of every call (each method takes ``timeout=`` to
    override it); idempotent calls are retried by gRPC on UNAVAILABLE, up to ``max_attempts``, and by
    the client on RESOURCE_EXHAUSTED with the server's retry hint, after it (within the deadline).
    ``api_key`` is sent as ``authorization: Bearer <key>``. TLS: ``tls_ca`` (a PEM CA file) or
    ``root_certificates`` (its bytes) to trust, ``tls_cert``/``tls_key`` (PEM files) when the
    server requires a client certificate, ``tls_server_name`` when its certificate names another
    host than ``address``'s; or any grpc ``credentials``. None of them: plain text.
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
        tls_ca: str | os.PathLike[str] | None = None,
        root_certificates: bytes | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        options = cv.channel_options(max_attempts) + tls_options(tls_server_name)
        credentials = channel_credentials(credentials, tls_ca, root_certificates, tls_cert, tls_key)
        if credentials is None:
            channel = grpc.insecure_channel(address, options=options)
        else:
            channel = grpc.secure_channel(address, credentials, options=options)
        stubs = {cv.SEARCH: pb_grpc.SearchServiceStub(channel), cv.ADMIN: admin_grpc.AdminServiceStub(channel)}
        self._setup(channel, stubs, timeout, api_key, max_attempts)

    def _setup(
        self,
        channel: grpc.Channel | None,
        stubs: dict[str, Any],
        timeout: float,
        api_key: str | None,
        max_attempts: int = 5,
    ) -> None:
        self._channel = channel
        self._stubs = stubs
        self.timeout = timeout
        self._metadata = cv.call_metadata(api_key)
        self._max_attempts = max_attempts

    @classmethod
    def from_stubs(
        cls,
        *,
        search: Any = None,
        admin: Any = None,
        timeout: float = 10.0,
        api_key: str | None = None,
        max_attempts: int = 5,
    ) -> Client:
        """A client that sends through the given stubs of SearchService and AdminService: generated
        ones on a channel you manage (grpc), or test doubles with the same methods. ``close()``
        closes nothing then; ``wait_ready`` returns at once."""
        client = cls.__new__(cls)
        client._setup(None, {cv.SEARCH: search, cv.ADMIN: admin}, timeout, api_key, max_attempts)
        return client

    def close(self) -> None:
        if self._channel is not None:
            close_channel(self._channel)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Waits until the channel is connected (up to ``timeout``, default the client's);
        Unavailable when no server answered in time."""
        if self._channel is None:
            return
        limit = self.timeout if timeout is None else timeout
        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=limit)
        except grpc.FutureTimeoutError:
            ready.cancel()
            raise not_ready(limit) from None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self, op: _ops.Op[T], timeout: float | None) -> T:
        """Sends ``op``; an idempotent call refused with a retry hint is sent again after it
        (``_ops.Attempts``: within its deadline and ``max_attempts``)."""
        method = getattr(self._stubs[op.service], op.method)
        attempts = _ops.Attempts.of(op.service, op.method, self._max_attempts, timeout or self.timeout)
        while True:
            try:
                response = method(op.request, **self._options(attempts.remaining()))
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
                delay = attempts.backoff(error)
                if delay is None:
                    raise error from None
                time.sleep(delay)
                continue
            return op.parse(response)

    def _run_stream(self, op: _ops.StreamOp[T], timeout: float | None) -> T:
        method = getattr(self._stubs[op.service], op.method)
        deadline = timeout or self.timeout * max(1, len(op.requests))
        try:
            response = method(iter(op.requests), **self._options(deadline))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return op.parse(response)

    def _options(self, timeout: float | None) -> dict[str, Any]:
        """The call's deadline, and its metadata when there is any (test doubles take none)."""
        options: dict[str, Any] = {"timeout": timeout or self.timeout}
        if self._metadata:
            options["metadata"] = self._metadata
        return options

    # Collections

    def create_collection(
        self,
        name: str,
        dimension: int,
        metric: str = "cosine",
        *,
        m: int = 0,
        ef_construction: int = 0,
        ef_search: int = 0,
        embedding_model: str = "",
        quantization: str = "none",
        timeout: float | None = None,
    ) -> bool:
        """Creates a collection (metric: cosine, inner_product or l2; HNSW parameters 0 = server
        default; quantization: "none" or "int8", docs/quantization.md). True if created, False if an
        identical one exists (AlreadyExists if different)."""
        op = _ops.create_collection(
            name, dimension, metric, m, ef_construction, ef_search, embedding_model, quantization
        )
        return self._run(op, timeout)

    def drop_collection(self, name: str, *, timeout: float | None = None) -> bool:
        return self._run(_ops.drop_collection(name), timeout)

    def list_collections(self, *, timeout: float | None = None) -> list[cv.Collection]:
        return self._run(_ops.list_collections(), timeout)

    def describe_collection(self, name: str, *, timeout: float | None = None) -> cv.Collection:
        return self._run(_ops.describe_collection(name), timeout)

    # Items

    def upsert(
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
        return self._run(_ops.upsert(collection, ids, vectors, metadata), timeout)

    def bulk_upsert(
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
            response = self._stubs[cv.SEARCH].UpsertStream(counted(batches, bar), **self._options(deadline))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            if bar is not None:
                bar.close()
        return int(response.upserted)

    def get(
        self, collection: str, ids: Sequence[str], include_vectors: bool = False, *, timeout: float | None = None
    ) -> cv.GetResult:
        return self._run(_ops.get(collection, ids, include_vectors), timeout)

    def delete(self, collection: str, ids: Sequence[str], *, timeout: float | None = None) -> int:
        return self._run(_ops.delete(collection, ids), timeout)

    # Search

    def search(
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
        explain: bool = False,
        timeout: float | None = None,
    ) -> cv.Hits:
        """The k nearest items to one query: a vector, a text (embedded by the server's text
        tower) or an image (encoded bytes or a path; its image tower). ``explain``: ``Hits.explain``
        says how each shard searched. Text and image need a server with an embedding model:
        FailedPrecondition otherwise, or when the collection records another model;
        InvalidArgument for an empty text or one the server refuses, or an undecodable image."""
        op = _ops.search(collection, vector, text, image, k, ef, filter, include_metadata, require_all_shards, explain)
        return self._run(op, timeout)

    def search_batch(
        self,
        collection: str,
        vectors: cv.VectorsLike,
        *,
        k: int = 10,
        ef: int = 0,
        filter: Filter | None = None,
        include_metadata: bool = True,
        require_all_shards: bool = False,
        timeout: float | None = None,
    ) -> list[cv.Hits]:
        """The k nearest items to each row of ``vectors`` (a 2-D array, or one vector), in one
        Search call: one ``Hits`` per query, in their order, all with the same ``partial``. Cheaper
        than one call per query; same errors as ``search``."""
        op = _ops.search_batch(collection, vectors, k, ef, filter, include_metadata, require_all_shards)
        return self._run(op, timeout)

    def search_by_id(
        self,
        collection: str,
        id: str,
        *,
        k: int = 10,
        ef: int = 0,
        filter: Filter | None = None,
        include_metadata: bool = True,
        explain: bool = False,
        timeout: float | None = None,
    ) -> cv.Hits:
        """The k nearest items to a stored item's vector (the item itself left out)."""
        return self._run(_ops.search_by_id(collection, id, k, ef, filter, include_metadata, explain), timeout)

    # Ingestion by content, and the embedding model

    def describe_embedding_model(self, *, timeout: float | None = None) -> media.EmbeddingModel:
        """The model the server embeds texts and images with, and its width (FailedPrecondition:
        the server has none; Unimplemented: a server older than the call)."""
        return self._run(_ops.describe_embedding_model(), timeout)

    def ingest_images(
        self,
        collection: str,
        items: Iterable[media.ImageInput],
        *,
        batch_size: int = 32,
        timeout: float | None = None,
    ) -> media.IngestResult:
        """Streams images (``ImageItem``, or encoded bytes or a path) over IngestImages in
        messages of ``batch_size`` (at most 256); the server embeds and upserts them. An item that
        fails, fails alone (its ``ItemStatus``); one already stored under its content id is
        ``unchanged``. The deadline defaults to ``timeout`` per message. Not retried."""
        return self._run_stream(_ops.ingest_images(collection, items, batch_size), timeout)

    def ingest_texts(
        self,
        collection: str,
        items: Iterable[media.TextInput],
        *,
        batch_size: int = 32,
        timeout: float | None = None,
    ) -> media.IngestResult:
        """As ``ingest_images``, for texts (``TextItem`` or str) over IngestTexts."""
        return self._run_stream(_ops.ingest_texts(collection, items, batch_size), timeout)

    # Admin

    def cluster_status(self, *, timeout: float | None = None) -> adm.ClusterStatus:
        """The ring version, each shard's membership, health and item counts, and the running
        rebalance."""
        return self._run(_ops.cluster_status(), timeout)

    def compact(
        self, collection: str, *, wait: bool = True, timeout: float | None = None
    ) -> list[adm.ShardIndexStatus]:
        return self._run(_ops.compact(collection, wait), timeout)

    def add_shard(
        self,
        shard_id: str,
        address: str,
        *,
        weight: float = 1.0,
        no_rebalance: bool = False,
        timeout: float | None = None,
    ) -> adm.RebalanceStatus | None:
        """Registers a shard and starts moving its share of the ring to it (None with
        ``no_rebalance``: it stays joining until ``rebalance``)."""
        return self._run(_ops.add_shard(shard_id, address, weight, no_rebalance), timeout)

    def drain_shard(self, shard_id: str, *, timeout: float | None = None) -> adm.RebalanceStatus | None:
        """Starts moving everything off a shard; it leaves the ring."""
        return self._run(_ops.drain_shard(shard_id), timeout)

    def remove_shard(self, shard_id: str, *, timeout: float | None = None) -> None:
        """Forgets a shard that holds nothing (drained, or never switched in)."""
        self._run(_ops.remove_shard(shard_id), timeout)

    def rebalance(self, *, dry_run: bool = False, timeout: float | None = None) -> adm.RebalanceResult:
        """Plans the moves the ring implies and starts them (``dry_run``: only plans)."""
        return self._run(_ops.rebalance(dry_run), timeout)

    def rebalance_status(self, rebalance_id: int = 0, *, timeout: float | None = None) -> adm.RebalanceStatus | None:
        """A rebalance's status (0: the running one, else the latest); None if there never was one."""
        return self._run(_ops.rebalance_status(rebalance_id), timeout)

    def abort_rebalance(self, *, timeout: float | None = None) -> adm.RebalanceStatus | None:
        """Aborts the running rebalance (it rolls forward when past the switch)."""
        return self._run(_ops.abort_rebalance(), timeout)

    # API keys (docs/api-keys.md)

    def create_api_key(
        self,
        name: str,
        role: str,
        *,
        collections: Sequence[str] | None = None,
        requests_per_s: float | None = None,
        items_per_s: float | None = None,
        timeout: float | None = None,
    ) -> adm.CreatedApiKey:
        """Creates an API key (role: read, write or admin; ``collections``: the only ones it may
        use, None for all; rate limits None: the server's defaults). ``CreatedApiKey.api_key`` is
        the whole key, returned only this once. Needs an admin key (or a server without keys)."""
        return self._run(_ops.create_api_key(name, role, collections, requests_per_s, items_per_s), timeout)

    def list_api_keys(self, *, include_revoked: bool = False, timeout: float | None = None) -> list[adm.ApiKey]:
        """The server's API keys by creation time, never their secrets."""
        return self._run(_ops.list_api_keys(include_revoked), timeout)

    def revoke_api_key(self, key_id: str, *, timeout: float | None = None) -> bool:
        """Revokes a key on every server sharing the database (within 2 s); False when it already
        was revoked; NotFound for an unknown id."""
        return self._run(_ops.revoke_api_key(key_id), timeout)
