"""What the sync and asyncio clients share: channel options (retry policy), request builders
and response parsers. The clients only send what these build and return what these parse."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from vectorsearch_client._proto import search_service_pb2 as pb
from vectorsearch_client._proto import types_pb2
from vectorsearch_client.filters import Value, attribute_value, python_value

SEARCH = "vectorsearch.v1.SearchService"
ADMIN = "vectorsearch.v1.AdminService"

# Idempotent per the proto comments: retried by gRPC itself on UNAVAILABLE.
IDEMPOTENT = {
    SEARCH: [
        "CreateCollection",
        "DropCollection",
        "ListCollections",
        "DescribeCollection",
        "Upsert",
        "Delete",
        "Get",
        "Search",
        "SearchById",
        "SearchByText",
        "SearchByImage",
        "DescribeEmbeddingModel",
    ],
    ADMIN: ["ClusterStatus", "GetRebalanceStatus"],
}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def service_config(max_attempts: int = 5) -> str:
    """gRPC's built-in retry policy for the idempotent methods (exponential backoff)."""
    names = [{"service": service, "method": method} for service, methods in IDEMPOTENT.items() for method in methods]
    policy = {
        "maxAttempts": max_attempts,
        "initialBackoff": "0.1s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


def channel_options(max_attempts: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.enable_retries", 1 if max_attempts > 1 else 0),
        ("grpc.service_config", service_config(max(2, max_attempts))),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]


def call_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


# ---------------------------------------------------------------------------------------------
# Typed results

Attributes: TypeAlias = dict[str, Value]
VectorsLike: TypeAlias = npt.ArrayLike
ImageLike: TypeAlias = bytes | str | os.PathLike[str]

METRICS = {
    "cosine": types_pb2.METRIC_COSINE,
    "inner_product": types_pb2.METRIC_INNER_PRODUCT,
    "ip": types_pb2.METRIC_INNER_PRODUCT,
    "l2": types_pb2.METRIC_L2,
}
QUANTIZATIONS = {
    "none": types_pb2.QUANTIZATION_NONE,
    "int8": types_pb2.QUANTIZATION_INT8,
}
QUANTIZATION_NAMES = {
    types_pb2.QUANTIZATION_UNSPECIFIED: "none",
    types_pb2.QUANTIZATION_NONE: "none",
    types_pb2.QUANTIZATION_INT8: "int8",
}
METRIC_NAMES = {
    types_pb2.METRIC_COSINE: "cosine",
    types_pb2.METRIC_INNER_PRODUCT: "inner_product",
    types_pb2.METRIC_L2: "l2",
}


@dataclass(frozen=True)
class Metadata:
    uri: str = ""
    tags: list[str] = field(default_factory=list)
    attributes: Attributes = field(default_factory=dict)


MetadataLike: TypeAlias = Metadata | Mapping[str, Any] | None


@dataclass(frozen=True)
class Hit:
    id: str
    distance: float
    metadata: Metadata | None = None


class Hits(list[Hit]):
    """The hits of one query, closest first; ``partial`` when some shard did not answer;
    ``explain`` how each shard searched, when the search asked for it."""

    def __init__(
        self,
        hits: list[Hit],
        partial: bool = False,
        failed_shards: Sequence[str] = (),
        explain: SearchExplain | None = None,
    ) -> None:
        super().__init__(hits)
        self.partial = partial
        self.failed_shards = list(failed_shards)
        self.explain = explain


@dataclass(frozen=True)
class ShardExplain:
    """How one shard searched: ``plan`` (graph, exact, filtered_graph, empty, acorn), items
    matching the filter (``matched``, of them ``matched_in_delta``), vectors ``scored``, the
    largest candidate list and its ``widenings``, and the time it took."""

    shard_id: str
    plan: str
    matched: int
    matched_in_delta: int
    scored: int
    candidates: int
    widenings: int
    micros: int


@dataclass(frozen=True)
class SearchExplain:
    """Items matching over every shard that answered, the one ``plan`` all shards took
    (``unspecified`` when they differ; ``legacy_sql`` when the server planned it and there are
    no shard entries) and one entry per shard."""

    matched: int
    plan: str
    shards: list[ShardExplain]


@dataclass(frozen=True)
class Item:
    id: str
    metadata: Metadata
    vector: npt.NDArray[np.float32] | None = None


@dataclass(frozen=True)
class GetResult:
    items: list[Item]
    missing_ids: list[str]


@dataclass(frozen=True)
class Collection:
    name: str
    dimension: int
    metric: str
    m: int
    ef_construction: int
    ef_search: int
    count: int | None = None
    embedding_model: str = ""
    # "none" (float32 graph) or "int8" (scalar-quantized graph, float32 re-scoring)
    quantization: str = "none"


# ---------------------------------------------------------------------------------------------
# Requests


def vectors(values: VectorsLike, rows: int | None = None) -> types_pb2.Vectors:
    """A 1-D (one vector) or 2-D (one per row) array as packed little-endian float32 bytes."""
    matrix = np.asarray(values, dtype="<f4")
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(f"vectors must be a 1-D or 2-D array with at least one column, got shape {matrix.shape}")
    if rows is not None and matrix.shape[0] != rows:
        raise ValueError(f"{rows} ids but {matrix.shape[0]} vectors")
    return types_pb2.Vectors(
        dimension=matrix.shape[1],
        packed=np.ascontiguousarray(matrix).tobytes(),
        rows=matrix.shape[0],
        element_type=types_pb2.ELEMENT_TYPE_FLOAT32,
    )


def metadata_proto(value: MetadataLike) -> pb.Metadata | None:
    if value is None:
        return None
    if isinstance(value, Metadata):
        uri, tags, attributes = value.uri, value.tags, value.attributes
    else:
        unknown = set(value) - {"uri", "tags", "attributes"}
        if unknown:
            raise ValueError(f"metadata keys are uri, tags and attributes, not {sorted(unknown)}")
        uri, tags, attributes = value.get("uri", ""), value.get("tags", ()), value.get("attributes", {})
    return pb.Metadata(
        uri=uri or "",
        tags=list(tags or ()),
        attributes={k: attribute_value(v) for k, v in (attributes or {}).items()},
    )


def upsert_request(
    collection: str, ids: Sequence[str], values: VectorsLike, metadata: Sequence[MetadataLike] | None
) -> pb.UpsertRequest:
    ids = [ids] if isinstance(ids, str) else list(ids)
    if metadata is not None and len(metadata) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(metadata)} metadata entries")
    items = [
        pb.ItemMetadata(id=item_id, metadata=metadata_proto(metadata[i]) if metadata is not None else None)
        for i, item_id in enumerate(ids)
    ]
    return pb.UpsertRequest(collection=collection, items=items, vectors=vectors(values, len(ids)))


def upsert_batches(
    collection: str,
    ids: Sequence[str],
    values: VectorsLike,
    metadata: Sequence[MetadataLike] | None,
    batch_size: int,
) -> Iterator[pb.UpsertRequest]:
    """The UpsertStream messages of a bulk upsert (the collection named in each)."""
    if not 1 <= batch_size <= 10_000:
        raise ValueError("batch_size must be within 1..10000")
    matrix = np.asarray(values, dtype="<f4")
    if matrix.ndim != 2 or matrix.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids need a 2-D array of {len(ids)} rows, got shape {matrix.shape}")
    if metadata is not None and len(metadata) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(metadata)} metadata entries")
    for start in range(0, len(ids), batch_size):
        end = start + batch_size
        part = None if metadata is None else metadata[start:end]
        yield upsert_request(collection, ids[start:end], matrix[start:end], part)


def image_bytes(image: ImageLike) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def create_collection_request(
    name: str,
    dimension: int,
    metric: str,
    m: int,
    ef_construction: int,
    ef_search: int,
    embedding_model: str,
    quantization: str = "none",
) -> pb.CreateCollectionRequest:
    if metric.lower() not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, not {metric!r}")
    if quantization.lower() not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {sorted(QUANTIZATIONS)}, not {quantization!r}")
    spec = types_pb2.CollectionSpec(
        name=name,
        dimension=dimension,
        metric=METRICS[metric.lower()],
        hnsw=types_pb2.HnswParams(m=m, ef_construction=ef_construction, ef_search=ef_search),
        quantization=QUANTIZATIONS[quantization.lower()],
    )
    return pb.CreateCollectionRequest(spec=spec, embedding_model=embedding_model)


# ---------------------------------------------------------------------------------------------
# Responses


def metadata(message: pb.Metadata) -> Metadata:
    attributes = {k: v for k, v in ((k, python_value(v)) for k, v in message.attributes.items()) if v is not None}
    return Metadata(uri=message.uri, tags=list(message.tags), attributes=attributes)


def collection(spec: types_pb2.CollectionSpec, count: int | None = None, embedding_model: str = "") -> Collection:
    return Collection(
        name=spec.name,
        dimension=spec.dimension,
        metric=METRIC_NAMES.get(spec.metric, "unspecified"),
        m=spec.hnsw.m,
        ef_construction=spec.hnsw.ef_construction,
        ef_search=spec.hnsw.ef_search,
        count=count,
        embedding_model=embedding_model,
        quantization=QUANTIZATION_NAMES.get(spec.quantization, f"quantization_{spec.quantization}"),
    )


def plan_name(value: int) -> str:
    """``SEARCH_PLAN_FILTERED_GRAPH`` -> ``filtered_graph`` (``plan_<n>`` for one this client
    does not know)."""
    if value not in pb.SearchPlan.values():
        return f"plan_{value}"
    return str(pb.SearchPlan.Name(value)).removeprefix("SEARCH_PLAN_").lower()


def search_explain(message: pb.SearchExplain) -> SearchExplain:
    shards = [
        ShardExplain(
            s.shard_id,
            plan_name(s.plan),
            int(s.matched),
            int(s.matched_in_delta),
            int(s.scored),
            int(s.candidates),
            int(s.widenings),
            int(s.micros),
        )
        for s in message.shards
    ]
    return SearchExplain(int(message.matched), plan_name(message.plan), shards)


def _hit_list(found: Iterable[pb.Hit], include_metadata: bool) -> list[Hit]:
    return [Hit(h.id, h.distance, metadata(h.metadata) if include_metadata else None) for h in found]


def hits(response: pb.SearchResponse, include_metadata: bool, explain: bool = False) -> Hits:
    found = response.results[0].hits if response.results else []
    return Hits(
        _hit_list(found, include_metadata),
        partial=response.partial,
        failed_shards=response.failed_shards,
        explain=search_explain(response.explain) if explain else None,
    )


def hits_per_query(response: pb.SearchResponse, include_metadata: bool) -> list[Hits]:
    """One ``Hits`` per query of a batched search, in the order of the queries; each carries the
    response's ``partial`` and ``failed_shards``."""
    return [
        Hits(
            _hit_list(result.hits, include_metadata),
            partial=response.partial,
            failed_shards=response.failed_shards,
        )
        for result in response.results
    ]


def get_result(response: pb.GetResponse) -> GetResult:
    items = [
        Item(i.id, metadata(i.metadata), np.asarray(i.vector, dtype=np.float32) if len(i.vector) else None)
        for i in response.items
    ]
    return GetResult(items, list(response.missing_ids))
