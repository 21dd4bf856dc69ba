"""A small typed client for the internal ShardService, speaking the raw protos.

A test and benchmark tool for exercising the shard's wire contract directly (the product talks to
remote shards through its own client). Vectors travel packed (little-endian float32 bytes).
Thread-safe: one channel, shared stubs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc
import numpy as np
import numpy.typing as npt

from core.channels import close_channel
from vsproto.v1 import shard_service_pb2 as pb
from vsproto.v1 import shard_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

METRICS = {"cosine": 1, "ip": 2, "l2": 3}


def pack(matrix: npt.ArrayLike) -> types_pb2.Vectors:
    array = np.ascontiguousarray(matrix, dtype="<f4")
    if array.ndim == 1:
        array = array[None, :]
    return types_pb2.Vectors(dimension=array.shape[1], packed=array.tobytes())


def unpack(vectors: types_pb2.Vectors) -> npt.NDArray[np.float32]:
    if vectors.packed:
        return np.frombuffer(vectors.packed, dtype="<f4").reshape(-1, vectors.dimension)
    return np.asarray(vectors.values, dtype=np.float32).reshape(-1, max(1, vectors.dimension))


class ShardClient:
    def __init__(
        self,
        address: str,
        timeout: float = 30.0,
        max_message_mb: int = 64,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """``credentials``: TLS (a shard with ``--tls-*`` needs the cluster client certificate)."""
        limit = max_message_mb << 20
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        if credentials is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            self.channel = grpc.secure_channel(address, credentials, options=options)
        self.stub = pb_grpc.ShardServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        close_channel(self.channel)

    def wait_ready(self, timeout: float = 30.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def create_collection(
        self,
        name: str,
        dimension: int,
        metric: str = "cosine",
        m: int = 0,
        ef_construction: int = 0,
        ef_search: int = 0,
        quantization: int = 0,
    ) -> pb.CreateCollectionResponse:
        """``quantization``: the raw ``Quantization`` enum number (0 unset, 2 int8; others are
        sent as given, for bad-input tests)."""
        spec = types_pb2.CollectionSpec(
            name=name,
            dimension=dimension,
            metric=types_pb2.Metric.Name(METRICS[metric]),
            hnsw=types_pb2.HnswParams(m=m, ef_construction=ef_construction, ef_search=ef_search),
            quantization=quantization,  # type: ignore[arg-type]
        )
        return self.stub.CreateCollection(pb.CreateCollectionRequest(spec=spec), timeout=self.timeout)

    def drop_collection(self, name: str) -> bool:
        return bool(self.stub.DropCollection(pb.DropCollectionRequest(collection=name), timeout=self.timeout).dropped)

    def upsert(self, collection: str, ids: Sequence[str], vectors: npt.ArrayLike) -> pb.UpsertResponse:
        request = pb.UpsertRequest(collection=collection, ids=ids, vectors=pack(vectors))
        return self.stub.Upsert(request, timeout=self.timeout)

    def delete(self, collection: str, ids: Sequence[str]) -> pb.DeleteResponse:
        return self.stub.Delete(pb.DeleteRequest(collection=collection, ids=ids), timeout=self.timeout)

    def get(self, collection: str, ids: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        reply = self.stub.Get(pb.GetRequest(collection=collection, ids=ids), timeout=self.timeout)
        matrix = unpack(reply.vectors) if reply.ids else np.empty((0, 0), dtype=np.float32)
        return {item: matrix[i] for i, item in enumerate(reply.ids)}

    def search(
        self,
        collection: str,
        queries: npt.ArrayLike,
        k: int,
        ef: int = 0,
        allow_ids: Sequence[str] = (),
    ) -> list[list[tuple[str, float]]]:
        request = pb.SearchRequest(collection=collection, queries=pack(queries), k=k, ef=ef, allow_ids=allow_ids)
        reply = self.stub.Search(request, timeout=self.timeout)
        return [list(zip(r.ids, r.distances, strict=True)) for r in reply.results]

    def stats(self, collection: str) -> pb.CollectionStats:
        return self.stub.Stats(pb.StatsRequest(collection=collection), timeout=self.timeout).stats

    def compact(self, collection: str, wait: bool = True) -> pb.CompactResponse:
        return self.stub.Compact(pb.CompactRequest(collection=collection, wait=wait), timeout=max(self.timeout, 600))

    def read_wal(self, collection: str, from_seq: int = 1) -> Iterator[pb.ReadWalResponse]:
        request = pb.ReadWalRequest(collection=collection, from_seq=from_seq)
        return iter(self.stub.ReadWal(request, timeout=self.timeout))
