"""Generated protobuf and gRPC stubs of ``proto/`` (public ``vectorsearch.v1`` and internal
``vectorsearch.shard.v1``), checked on import.

The stubs are built by ``python -m vsproto.build`` into the git-ignored package
``vectorsearch/`` at the repository root; they are never committed. Importing this module
fails with a hint when they are missing or were built from other .proto files.
"""

from vsproto.freshness import ensure_fresh

ensure_fresh()

from vectorsearch.shard.v1 import (  # type: ignore[import-untyped,unused-ignore]  # noqa: E402
    shard_service_pb2,
    shard_service_pb2_grpc,
    wal_pb2,
)
from vectorsearch.v1 import (  # type: ignore[import-untyped,unused-ignore]  # noqa: E402
    admin_service_pb2,
    admin_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
    types_pb2,
)

__all__ = [
    "admin_service_pb2",
    "admin_service_pb2_grpc",
    "search_service_pb2",
    "search_service_pb2_grpc",
    "shard_service_pb2",
    "shard_service_pb2_grpc",
    "types_pb2",
    "wal_pb2",
]
