"""Search and ingestion by text and image: embed with the collection's model, then search or
write through the engine like vectors.

The embedding model (CLIP on Triton, ``server/embedding``) is reached through the
:class:`Embedder` protocol. Each collection records the identity of the model its vectors come
from (``MetadataStore.embedding_model``): the first ingestion records the model Triton serves,
and every later search or ingestion by text or image must use that same model, else
FailedPrecondition naming both (a model upgrade goes to a new collection).

Ingestion answers per item (:class:`ItemOutcome`): an item that cannot be read, decoded or
embedded fails alone. An item without an id takes ``sha256:<hex of its content>``, so the same
content sent twice is one item; when that item is already stored with the same metadata it is
neither embedded nor written again (``unchanged``), and with other metadata its stored vector is
written back with the new metadata, without embedding. Items are written with
``Engine.upsert``, so each is all-or-nothing with its metadata (docs/item-integrity.md); a
message's items are not atomic together.

Thread-safety: every method may be called from any thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from core import calls, limits
from core.errors import DomainError, FailedPrecondition, InvalidArgument
from core.items import ItemMeta, content_id
from core.vectors import Matrix, validate_ids
from server.fetch import UriFetcher
from server.query import ImageTarget, SearchQuery, SearchResult, TextTarget, VectorTarget

if TYPE_CHECKING:  # the engine imports server.convert, which imports this module's types
    from server.engine import Engine

MODEL_TTL_S = 5.0
NO_EMBEDDER = (
    "this server has no embedding service: start it with --triton-url HOST:PORT (Triton serving "
    "clip_text and clip_image) to search and ingest by text or image"
)
_FETCH_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fetch")


class Embedder(Protocol):
    """What search and ingestion need of the embedding service (``server.embedding.TritonEmbedder``).
    Thread-safe. ``kind`` is "text" or "image"."""

    def identity(self, kind: Any, timeout: float = 5.0) -> str:
        """``<architecture>@sha256:<weights>`` of the model served now for ``kind`` (both
        towers of one CLIP share it); Unavailable when the service does not answer in time."""
        ...

    def dim(self, kind: Any, timeout: float = 5.0) -> int:
        """The width of the vectors of the model served now for ``kind``."""
        ...

    def embed_texts(self, texts: Sequence[str], timeout: float) -> Matrix:
        """One L2-normalised row per text; InvalidArgument for a bad text, Unavailable,
        DeadlineExceeded or ResourceExhausted (with ``retry_after_s``) for the service."""
        ...

    def embed_text_items(self, texts: Sequence[object], timeout: float) -> list[Any]:
        """Per text: its L2-normalised vector, or the DomainError of that text alone."""
        ...

    def embed_images(self, images: Sequence[bytes], timeout: float) -> list[Any]:
        """Per image: its L2-normalised vector, or the DomainError of that image alone."""
        ...


@dataclass(frozen=True)
class MediaItem:
    """One item to ingest: ``data`` (image bytes or a text's UTF-8) or ``uri`` to fetch it from;
    ``error`` when the edge could not convert it (it then fails alone)."""

    id: str
    data: bytes | None
    uri: str
    meta: ItemMeta
    error: DomainError | None = None


@dataclass(frozen=True)
class ItemOutcome:
    id: str
    error: DomainError | None = None
    unchanged: bool = False


@dataclass
class _Pending:
    """An item on its way through ingestion."""

    index: int
    id: str
    data: bytes
    meta: ItemMeta
    by_content: bool  # its id is its content id
    vector: Matrix | None = None


class MediaEngine:
    def __init__(
        self, engine: Engine, embedder: Embedder | None, fetcher: UriFetcher, *, no_embedder: str = NO_EMBEDDER
    ) -> None:
        self.engine = engine
        self.embedder = embedder
        self.fetcher = fetcher
        self.no_embedder = no_embedder  # the FAILED_PRECONDITION message without an embedder
        self._models: dict[str, tuple[float, str]] = {}

    # ------------------------------------------------------------------ models
    def _embedder(self) -> Embedder:
        if self.embedder is None:
            raise FailedPrecondition(self.no_embedder)
        return self.embedder

    def _recorded_model(self, collection: str) -> str:
        now = time.monotonic()
        cached = self._models.get(collection)
        if cached is not None and now - cached[0] < MODEL_TTL_S:
            return cached[1]
        model = self.engine.metadata.embedding_model(collection)
        if model:
            self._models[collection] = (now, model)
        return model

    def check_model(self, collection: str, served: str, record: bool) -> str:
        """The collection's model, which must be ``served``; with ``record``, ``served`` is
        recorded first when the collection has none."""
        recorded = self._recorded_model(collection)
        if not recorded and record:
            recorded = self.engine.metadata.record_embedding_model(collection, served)
            self._models[collection] = (time.monotonic(), recorded)
        if not recorded:
            raise FailedPrecondition(
                f"collection {collection!r} records no embedding model: ingest images or texts into it first, "
                "or create it with embedding_model set to the model its vectors come from"
            )
        if recorded != served:
            raise FailedPrecondition(
                f"collection {collection!r} was built with embedding model {recorded}, but the embedding service "
                f"serves {served}: search it with that model, or re-ingest into a new collection"
            )
        return recorded

    def served_model(self, remaining: float | None = None) -> tuple[str, int]:
        """(identity, dimension) of the model the embedding service serves now."""
        embedder = self._embedder()
        timeout = self.engine.timeout_for(remaining)
        return embedder.identity("image", timeout), embedder.dim("image", timeout)

    def embedding_model(self, collection: str) -> str:
        return self._recorded_model(collection)

    def forget(self, collection: str) -> None:
        """Drops the cached model of a dropped collection."""
        self._models.pop(collection, None)

    # ------------------------------------------------------------------ search
    def search(self, query: SearchQuery, remaining: float | None = None) -> SearchResult:
        """A search whose target is texts or images: embedded, then ``Engine.search``."""
        target = query.target
        if not 1 <= query.k <= limits.MAX_K:  # before the cost of embedding
            raise InvalidArgument(f"k must be in 1..{limits.MAX_K}, got {query.k}")
        started = time.monotonic()
        timeout = self.engine.timeout_for(remaining)
        spec = self.engine.spec(query.collection)
        embedder = self._embedder()
        if isinstance(target, TextTarget):
            _count(len(target.texts), limits.MAX_SEARCH_TEXTS, "texts")
            self.check_model(query.collection, embedder.identity("text", timeout), record=False)
            vectors = embedder.embed_texts(target.texts, _left(started, timeout))
        elif isinstance(target, ImageTarget):
            _count(len(target.images), limits.MAX_SEARCH_IMAGES, "images")
            self.check_model(query.collection, embedder.identity("image", timeout), record=False)
            found: list[Matrix] = []
            for i, row in enumerate(embedder.embed_images(target.images, _left(started, timeout))):
                if isinstance(row, DomainError):
                    row.args = (f"image {i}: {row}",)  # the same error (and retry hint), naming the image
                    raise row
                found.append(np.asarray(row, dtype=np.float32).reshape(-1))
            vectors = np.stack(found)
        else:
            return self.engine.search(query, remaining)
        _check_dimension(vectors.shape[1], spec.dimension, query.collection)
        calls.check("the search")
        remaining_now = None if remaining is None else remaining - (time.monotonic() - started)
        return self.engine.search(replace(query, target=VectorTarget(vectors)), remaining_now)

    # ------------------------------------------------------------------ ingestion
    def ingest(
        self, collection: str, kind: str, items: Sequence[MediaItem], remaining: float | None = None
    ) -> list[ItemOutcome]:
        """Embeds and writes ``items`` (``kind``: "image" or "text"); one outcome per item, in
        order. Raises only for the whole call: unknown collection (NotFound), no embedding
        service or another model (FailedPrecondition), too many items (InvalidArgument)."""
        if len(items) > limits.MAX_INGEST_ITEMS:
            raise InvalidArgument(f"at most {limits.MAX_INGEST_ITEMS} items per message, got {len(items)}")
        started = time.monotonic()
        timeout = self.engine.timeout_for(remaining)
        spec = self.engine.spec(collection)
        embedder = self._embedder()
        outcomes: list[ItemOutcome | None] = [None] * len(items)
        try:
            served = embedder.identity(kind, timeout)
        except DomainError as exc:  # the service is down: every item fails with its status
            return [ItemOutcome(item.id, item.error or exc) for item in items]
        self.check_model(collection, served, record=True)
        pending = self._read(items, outcomes, kind, _left(started, timeout))
        pending = self._skip_stored(collection, pending, outcomes, started, timeout)
        to_embed = [p for p in pending if p.vector is None]
        if to_embed:
            calls.check("embedding")
            try:
                rows: list[Matrix | DomainError]
                if kind == "text":
                    texts = [p.data.decode("utf-8") for p in to_embed]
                    rows = embedder.embed_text_items(texts, _left(started, timeout))
                else:
                    rows = embedder.embed_images([p.data for p in to_embed], _left(started, timeout))
            except DomainError as exc:  # the whole call to the service failed: each item says why
                rows = [exc] * len(to_embed)
            for p, row in zip(to_embed, rows, strict=True):
                if isinstance(row, DomainError):
                    outcomes[p.index] = ItemOutcome(p.id, row)
                else:
                    p.vector = np.asarray(row, dtype=np.float32).reshape(-1)
        ready = [p for p in pending if p.vector is not None]
        if ready:
            _check_dimension(len(ready[0].vector), spec.dimension, collection)  # type: ignore[arg-type]
            self._write(collection, ready, outcomes, remaining, started)
        return [o if o is not None else ItemOutcome(items[i].id) for i, o in enumerate(outcomes)]

    def _read(
        self, items: Sequence[MediaItem], outcomes: list[ItemOutcome | None], kind: str, timeout: float
    ) -> list[_Pending]:
        """Each item's content (fetched when it came as a URI) and id; failures go to ``outcomes``."""
        fetches = {
            i: _FETCH_POOL.submit(self.fetcher.fetch, item.uri, timeout)
            for i, item in enumerate(items)
            if item.error is None and item.data is None and item.uri
        }
        pending: list[_Pending] = []
        for i, item in enumerate(items):
            if item.error is not None:
                outcomes[i] = ItemOutcome(item.id, item.error)
                continue
            try:
                if i in fetches:
                    data = fetches[i].result()
                elif item.data:
                    data = item.data
                else:
                    raise InvalidArgument(f"item {i}: neither {'text' if kind == 'text' else 'data'} nor uri is set")
                item_id = item.id or content_id(data)
                validate_ids([item_id])
            except DomainError as exc:
                outcomes[i] = ItemOutcome(item.id, exc)
                continue
            meta = item.meta if item.meta.uri or not item.uri else replace(item.meta, uri=item.uri)
            pending.append(_Pending(i, item_id, data, meta, by_content=not item.id))
        return pending

    def _skip_stored(
        self,
        collection: str,
        pending: list[_Pending],
        outcomes: list[ItemOutcome | None],
        started: float,
        timeout: float,
    ) -> list[_Pending]:
        """Items under a content id that are stored already: unchanged when their metadata is
        the same (dropped from ``pending``), else given their stored vector (no embedding)."""
        content_ids = list(dict.fromkeys(p.id for p in pending if p.by_content))
        if not content_ids:
            return pending
        vectors, metas = self.engine.get(collection, content_ids, _left(started, timeout), include_vectors=False)
        left: list[_Pending] = []
        for p in pending:
            if p.by_content and p.id in vectors:
                if metas.get(p.id) == p.meta:
                    outcomes[p.index] = ItemOutcome(p.id, unchanged=True)
                    continue
                p.vector = np.asarray(vectors[p.id], dtype=np.float32).reshape(-1)
            left.append(p)
        return left

    def _write(
        self,
        collection: str,
        ready: list[_Pending],
        outcomes: list[ItemOutcome | None],
        remaining: float | None,
        started: float,
    ) -> None:
        """Upserts the embedded items in one call; when that call refuses the batch as invalid,
        item by item, so only the items at fault fail."""
        calls.check("the shard write")
        left = None if remaining is None else remaining - (time.monotonic() - started)
        try:
            self._upsert(collection, ready, left)
        except InvalidArgument:
            for p in ready:
                try:
                    self._upsert(collection, [p], left)
                except DomainError as exc:
                    outcomes[p.index] = ItemOutcome(p.id, exc)
        except DomainError as exc:
            for p in ready:
                outcomes[p.index] = ItemOutcome(p.id, exc)
        else:
            for p in ready:
                outcomes[p.index] = ItemOutcome(p.id)

    def _upsert(self, collection: str, items: list[_Pending], remaining: float | None) -> None:
        vectors = np.stack([p.vector for p in items if p.vector is not None])
        self.engine.upsert(collection, [p.id for p in items], vectors, [p.meta for p in items], remaining)


def _count(count: int, most: int, what: str) -> None:
    if not 1 <= count <= most:
        raise InvalidArgument(f"a search takes 1..{most} {what}, got {count}")


def _left(started: float, timeout: float) -> float:
    return max(0.05, timeout - (time.monotonic() - started))


def _check_dimension(width: int, dimension: int, collection: str) -> None:
    if width != dimension:
        raise FailedPrecondition(
            f"the embedding model gives {width}-dimensional vectors but collection {collection!r} "
            f"holds {dimension}-dimensional ones; create the collection with dimension {width}"
        )
