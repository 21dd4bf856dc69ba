"""Embeddings for search and ingestion: CLIP text and image towers served by Triton.

- ``triton.TritonEmbedder``: the client (deadlines, retries, concurrent requests so Triton
  batches them, back-pressure, model identity).
- ``cache``: ``make_cache(url)`` -> in-process LRU (default), Redis (``redis://``) or none.
- ``checks``: the input limits (``MAX_TEXT_BYTES``, ``MAX_IMAGE_BYTES``) checked before any call.

Nothing here imports protobuf of our API; errors are ``core.errors`` domain errors.
"""

from server.embedding.cache import CacheKey, EmbeddingCache, LruCache, NullCache, make_cache
from server.embedding.checks import MAX_IMAGE_BYTES, MAX_TEXT_BYTES
from server.embedding.model_info import ModelInfo, ModelStats
from server.embedding.triton import IMAGE, TEXT, Kind, TritonEmbedder
from server.embedding.triton_errors import RetryPolicy

__all__ = [
    "IMAGE",
    "MAX_IMAGE_BYTES",
    "MAX_TEXT_BYTES",
    "TEXT",
    "CacheKey",
    "EmbeddingCache",
    "Kind",
    "LruCache",
    "ModelInfo",
    "ModelStats",
    "NullCache",
    "RetryPolicy",
    "TritonEmbedder",
    "make_cache",
]
