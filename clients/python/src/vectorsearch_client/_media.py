"""Ingestion by image and text (IngestImages, IngestTexts) and the served embedding model:
item types, the stream's messages and the typed results."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

from vectorsearch_client import _convert as cv
from vectorsearch_client._proto import search_service_pb2 as pb
from vectorsearch_client.errors import status_code

MAX_ITEMS_PER_MESSAGE = 256
T = TypeVar("T")


@dataclass(frozen=True)
class ImageItem:
    """An image to ingest: its encoded bytes (JPEG, PNG or WebP) or a ``uri`` the server fetches
    (file:// under a root it allows, or http(s) when it allows that). ``id`` empty: the server
    names it ``sha256:<hex of the bytes>``."""

    data: bytes | None = None
    uri: str | None = None
    id: str = ""
    metadata: cv.MetadataLike = None


@dataclass(frozen=True)
class TextItem:
    """A text to ingest (1 byte..16 KiB of UTF-8); ``id`` empty: ``sha256:<hex of its UTF-8>``."""

    text: str
    id: str = ""
    metadata: cv.MetadataLike = None


ImageInput = ImageItem | cv.ImageLike
TextInput = TextItem | str


@dataclass(frozen=True)
class ItemStatus:
    """The outcome of one ingested item: ``code`` OK (``unchanged`` when it was already stored
    under its content id), else why it failed alone (INVALID_ARGUMENT: undecodable, ...;
    RESOURCE_EXHAUSTED: the embedding service was saturated, retry it later)."""

    id: str
    code: grpc.StatusCode
    message: str = ""
    unchanged: bool = False

    @property
    def ok(self) -> bool:
        return self.code == grpc.StatusCode.OK


@dataclass(frozen=True)
class IngestResult:
    """One status per item in the order sent, the counts, and the collection's model."""

    items: list[ItemStatus]
    ingested: int
    unchanged: int
    failed: int
    embedding_model: str


@dataclass(frozen=True)
class EmbeddingModel:
    """The model the server embeds with: its identity (``<arch>@sha256:<weights>``) and width."""

    embedding_model: str
    dimension: int


def _image(item: ImageInput) -> pb.ImageItem:
    if not isinstance(item, ImageItem):
        return pb.ImageItem(data=cv.image_bytes(item))
    if (item.data is None) == (item.uri is None):
        raise ValueError("an ImageItem needs exactly one of data and uri")
    meta = cv.metadata_proto(item.metadata)
    if item.data is not None:
        return pb.ImageItem(id=item.id, data=item.data, metadata=meta)
    return pb.ImageItem(id=item.id, uri=item.uri, metadata=meta)


def _text(item: TextInput) -> pb.TextItem:
    if isinstance(item, str):
        return pb.TextItem(text=item)
    return pb.TextItem(id=item.id, text=item.text, metadata=cv.metadata_proto(item.metadata))


def _chunks(items: Iterable[T], batch_size: int) -> Iterator[list[T]]:
    if not 1 <= batch_size <= MAX_ITEMS_PER_MESSAGE:
        raise ValueError(f"batch_size must be within 1..{MAX_ITEMS_PER_MESSAGE}")
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def image_requests(collection: str, items: Iterable[ImageInput], batch_size: int) -> list[pb.IngestImagesRequest]:
    """The stream's messages, built before sending (bad input raises before anything is sent)."""
    chunks = _chunks((_image(i) for i in items), batch_size)
    return [pb.IngestImagesRequest(collection=collection, items=chunk) for chunk in chunks]


def text_requests(collection: str, items: Iterable[TextInput], batch_size: int) -> list[pb.IngestTextsRequest]:
    chunks = _chunks((_text(i) for i in items), batch_size)
    return [pb.IngestTextsRequest(collection=collection, items=chunk) for chunk in chunks]


def ingest_result(response: pb.IngestResponse) -> IngestResult:
    return IngestResult(
        [ItemStatus(s.id, status_code(s.code), s.message, bool(s.unchanged)) for s in response.items],
        int(response.ingested),
        int(response.unchanged),
        int(response.failed),
        response.embedding_model,
    )


def embedding_model(response: pb.DescribeEmbeddingModelResponse) -> EmbeddingModel:
    return EmbeddingModel(response.embedding_model, int(response.dimension))
