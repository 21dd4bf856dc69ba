"""Python client for the vectorsearch gRPC service.

from vectorsearch_client import Client, F
with Client("127.0.0.1:7000") as client:
    client.create_collection("docs", 384)
    client.upsert("docs", ["a", "b"], vectors, [{"tags": ["x"]}, None])
    hits = client.search("docs", query, k=5, filter=F.tag("x"))

Embedded, no server (needs the server package): ``with vectorsearch_client.open("./db") as client:``,
the same methods.
"""

from vectorsearch_client._admin import (
    ApiKey,
    ClusterStatus,
    CreatedApiKey,
    MovePlan,
    MoveStatus,
    RebalanceResult,
    RebalanceStatus,
    ShardIndexStatus,
    ShardStatus,
)
from vectorsearch_client._convert import (
    Collection,
    GetResult,
    Hit,
    Hits,
    Item,
    Metadata,
    SearchExplain,
    ShardExplain,
)
from vectorsearch_client._media import EmbeddingModel, ImageItem, IngestResult, ItemStatus, TextItem
from vectorsearch_client.aio import AsyncClient
from vectorsearch_client.client import Client
from vectorsearch_client.embedded import AsyncEmbeddedClient, DirectoryLocked, EmbeddedClient, open_async
from vectorsearch_client.embedded import open as open  # (a re-export, not in __all__: see there)
from vectorsearch_client.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    UnreadableReply,
    VectorSearchError,
)
from vectorsearch_client.filters import F, Field, Filter

# vectorsearch_client.open(path) is left out: a star import keeps the builtin open.
__all__ = [
    "Aborted",
    "AlreadyExists",
    "ApiKey",
    "AsyncClient",
    "AsyncEmbeddedClient",
    "Client",
    "ClusterStatus",
    "Collection",
    "CreatedApiKey",
    "DeadlineExceeded",
    "DirectoryLocked",
    "EmbeddedClient",
    "EmbeddingModel",
    "F",
    "FailedPrecondition",
    "Field",
    "Filter",
    "GetResult",
    "Hit",
    "Hits",
    "ImageItem",
    "IngestResult",
    "InvalidArgument",
    "Item",
    "ItemStatus",
    "Metadata",
    "MovePlan",
    "MoveStatus",
    "NotFound",
    "PermissionDenied",
    "RebalanceResult",
    "RebalanceStatus",
    "ResourceExhausted",
    "SearchExplain",
    "ShardExplain",
    "ShardIndexStatus",
    "ShardStatus",
    "TextItem",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "UnreadableReply",
    "VectorSearchError",
    "open_async",
]
