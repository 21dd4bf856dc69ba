"""Our systems, as plug-ins of the harness (bench/harness.py), for bench/compare.py.

    .venv/bin/python bench/ours.py --worker SYSTEM --data DIR --result OUT.json [--n N] [--ef ...]

Not run by hand: compare.py starts one child per system with this hidden worker mode (in
``.venv``, where the project lives). Systems, all with default flags (fsync on every acknowledged
write, group commit; metadata and topology in SQLite; vectors on the wire as packed float32):

* ``ours-single-node``: ``python -m server --local-shard DIR``: the public server owns its shard
  in-process (1 gRPC hop from the client);
* ``ours-1-shard`` / ``ours-3-shards``: ``python -m server.cluster --shards N``: the public server
  in front of N shard processes (2 hops);
* ``ours-shard-direct``: one bare ``python -m shard`` process, driven through its internal
  ShardService with testkit's ShardClient (1 hop; no metadata, no router);
* ``transport-*``: the bare transport limit (bench/transport.py).

The client side is always this checkout. The servers run from ``$VS_BENCH_SERVER_ROOT`` when set
(compare.py's ``--ab`` points it at a git worktree of another commit), else from this checkout;
each result records where their packages were imported from and checks that every server process
runs in that tree.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from google.protobuf import text_format

from bench.datasets import FIELD_NAMES, TAG, FilterSpec, K, RowFields
from bench.harness import HNSW_EF_CONSTRUCTION, HNSW_M, Labels, Matrix, PreparedQuerySystem, System, worker_main
from bench.machine import git_commit, pkg_version
from bench.rss import descendants, proc_name
from bench.transport import TRANSPORT
from testkit.clusterproc import ClusterProcess
from testkit.procutil import REPO, import_origins
from testkit.serverproc import SingleNodeProcess
from testkit.shard_client import ShardClient, pack
from testkit.shardproc import ShardProcess
from vsproto.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
    shard_service_pb2,
    types_pb2,
)

COLLECTION = "bench"
INGEST_BATCH = 1000
INGEST_THREADS = 4
MAX_MESSAGE = 256 << 20
GRPC_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]


def server_root() -> Path:
    return Path(os.environ.get("VS_BENCH_SERVER_ROOT") or REPO).resolve()


def process_cwds() -> dict[str, list[str]]:
    """The working directory of every project process below this one, by program."""
    out: dict[str, list[str]] = {}
    for pid in descendants({os.getpid()}) - {os.getpid()}:
        name = proc_name(pid)
        if name.startswith("python -m "):
            with contextlib.suppress(OSError):
                out.setdefault(name, []).append(os.readlink(f"/proc/{pid}/cwd"))
    return out


class Ours(PreparedQuerySystem):
    """One of our shapes; subclasses start the processes (from ``self.root``) and ingest."""

    shape = "?"

    def __init__(self, workdir: Path, sampler: Any) -> None:
        super().__init__(workdir, sampler)
        self.root = server_root()
        self.origins: dict[str, str] = {}

    def check_tree(self) -> None:
        """Fails unless children started from ``self.root`` import the project from there."""
        self.origins = import_origins(self.root)

    def check_processes(self) -> dict[str, list[str]]:
        """Every server process must run in ``self.root`` (the tree ``import_origins`` checked)."""
        cwds = process_cwds()
        stray = {name: dirs for name, dirs in cwds.items() if any(Path(d) != self.root for d in dirs)}
        if not cwds or stray:
            raise RuntimeError(f"server processes not running in {self.root}: {cwds}")
        return cwds

    def describe(self, **extra: Any) -> dict[str, Any]:
        return {
            "code": {
                "root": str(self.root),
                "commit": git_commit(self.root),
                "imports": self.origins,
                "process_cwds": self.check_processes(),
            },
            "version": f"grpcio {pkg_version('grpcio')}, hnswlib {pkg_version('hnswlib')}",
            "shape": self.shape,
            "index": f"HNSW (hnswlib) per shard, M={HNSW_M}, ef_construction={HNSW_EF_CONSTRUCTION}, metric ip",
            "ingest": f"{INGEST_BATCH} items per Upsert request (ids only, no metadata), "
            f"{INGEST_THREADS} client threads on one channel",
            "ef_setting": "SearchRequest.ef per request",
            "batch": "all queries packed in one Search request",
            "concurrent": "each client thread calls the same stub (one channel)",
            **extra,
        }


class PublicApi(Ours):
    """The public SearchService; subclasses start the server."""

    filtered = True
    filter_proto: search_service_pb2.Filter | None = None  # set_filter's, sent with every Search

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def load(self, base: Matrix) -> dict[str, float]:
        return self.ingest(base, None)

    def load_fields(self, base: Matrix, fields: RowFields) -> dict[str, float]:
        return self.ingest(base, fields)

    def ingest(self, base: Matrix, fields: RowFields | None) -> dict[str, float]:
        self.check_tree()
        self.channel = grpc.insecure_channel(self.start(), options=GRPC_OPTIONS)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        self.stub = search_service_pb2_grpc.SearchServiceStub(self.channel)
        admin = admin_service_pb2_grpc.AdminServiceStub(self.channel)
        n, dim = base.shape
        spec = types_pb2.CollectionSpec(
            name=COLLECTION,
            dimension=dim,
            metric=types_pb2.METRIC_INNER_PRODUCT,
            hnsw=types_pb2.HnswParams(m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION),
        )
        self.stub.CreateCollection(search_service_pb2.CreateCollectionRequest(spec=spec))
        requests = []
        for lo in range(0, n, INGEST_BATCH):
            rows = pack(base[lo : lo + INGEST_BATCH])
            request = search_service_pb2.UpsertRequest(collection=COLLECTION, vectors=rows)
            for i in range(lo, min(n, lo + INGEST_BATCH)):
                item = request.items.add(id=str(i))
                if fields is not None:
                    item.metadata.CopyFrom(item_metadata(fields, i))
            requests.append(request)
        start = time.perf_counter()
        with ThreadPoolExecutor(INGEST_THREADS) as pool:
            acked = sum(reply.upserted for reply in pool.map(self.stub.Upsert, requests))
        ack = time.perf_counter() - start
        compacted = admin.Compact(admin_service_pb2.CompactRequest(collection=COLLECTION, wait=True))
        indexed = time.perf_counter() - start
        in_graphs = sum(s.graph_elements for s in compacted.shards)
        pending = sum(s.delta_size for s in compacted.shards)
        count = self.stub.DescribeCollection(search_service_pb2.DescribeCollectionRequest(collection=COLLECTION)).count
        if acked != n or count != n or in_graphs != n or pending:
            raise RuntimeError(f"after ingest: acked {acked}, count {count}, in graphs {in_graphs}, delta {pending}")
        self.info = self.describe(
            consistency="an Upsert is acknowledged once the vectors are fsync'ed in every owning shard's WAL "
            "(group commit) and searchable (exact delta layer); indexed = AdminService.Compact(wait=true) returned "
            "with every item in a graph",
            items_per_shard={s.shard_id: s.count for s in compacted.shards},
            query="SearchService.Search, one packed float32 query, k=10",
        )
        if fields is not None:
            self.info["ingest"] = (
                f"{INGEST_BATCH} items per Upsert request, each with Metadata (int attributes "
                f"{', '.join(FIELD_NAMES)}; tags [{TAG!r}] on the tagged rows, else none), "
                f"{INGEST_THREADS} client threads on one channel"
            )
            self.info["filter"] = (
                "SearchRequest.filter (vectorsearch.v1.Filter): attributes.<name> eq / range lt, tags eq, all_of"
            )
        return {"ack_s": ack, "indexed_s": indexed}

    def request(self, queries: Matrix, ef: int) -> Any:
        request = search_service_pb2.SearchRequest(collection=COLLECTION, queries=pack(queries), k=K, ef=ef)
        if self.filter_proto is not None:
            request.filter.CopyFrom(self.filter_proto)
        return request

    def set_filter(self, name: str, spec: FilterSpec) -> None:
        self.filter_proto = None if spec is None else to_filter_proto(spec)
        self.set_ef(self.ef)  # rebuilds the prepared requests with the filter
        if self.filter_proto is not None:
            self.info.setdefault("filters", {})[name] = text_format.MessageToString(self.filter_proto, as_one_line=True)

    def explain(self, prepared: list[Any]) -> dict[str, Any] | None:
        """``SearchResponse.explain`` over ``prepared`` (requested with ``explain=true``) when the
        stubs have it; None otherwise."""
        if "explain" not in search_service_pb2.SearchResponse.DESCRIPTOR.fields_by_name:
            return None
        replies = []
        for i in prepared:
            request = search_service_pb2.SearchRequest()
            request.CopyFrom(self.requests[i])
            if "explain" in request.DESCRIPTOR.fields_by_name:
                setattr(request, "explain", True)  # noqa: B010 (not in every generation of the stubs)
            replies.append(self.stub.Search(request))
        return summarize_explain(replies)

    def search_one(self, query: Any) -> list[int]:
        reply = self.stub.Search(self.requests[query])
        if reply.partial:
            raise RuntimeError(f"partial result: {list(reply.failed_shards)}")
        return [int(h.id) for h in reply.results[0].hits]

    def search_batch(self, queries: Matrix) -> Labels:
        reply = self.stub.Search(self.request(queries, self.ef))
        if reply.partial:
            raise RuntimeError(f"partial result: {list(reply.failed_shards)}")
        out = np.full((len(queries), K), -1, dtype=np.int64)
        for i, result in enumerate(reply.results):
            ids = [int(h.id) for h in result.hits]
            out[i, : len(ids)] = ids
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.close()
        self.stop()


class SingleNode(PublicApi):
    name = "ours-single-node"
    shape = "single node: python -m server --local-shard (the shard in the server process, 1 hop)"

    def start(self) -> str:
        self.proc = SingleNodeProcess(self.workdir / "single", root=self.root)
        return self.proc.start()

    def stop(self) -> None:
        if hasattr(self, "proc"):
            self.proc.stop()


class Cluster(PublicApi):
    shards = 1

    def start(self) -> str:
        self.cluster = ClusterProcess(self.workdir / "cluster", shards=self.shards, root=self.root)
        self.cluster.start()
        return self.cluster.address

    def stop(self) -> None:
        if hasattr(self, "cluster"):
            self.cluster.stop()


class OneShard(Cluster):
    name = "ours-1-shard"
    shape = "python -m server.cluster --shards 1: the public server in front of 1 shard process (2 hops)"


class ThreeShards(Cluster):
    name = "ours-3-shards"
    shards = 3
    shape = "python -m server.cluster --shards 3: the public server fanning out to 3 shard processes (2 hops)"


class ShardDirect(Ours):
    """One bare shard process through its internal ShardService (testkit's ShardClient)."""

    name = "ours-shard-direct"
    shape = "python -m shard, driven directly through ShardService (1 hop, no server, no metadata)"

    def load(self, base: Matrix) -> dict[str, float]:
        self.check_tree()
        self.shard = ShardProcess(self.workdir / "shard", root=self.root)
        self.client: ShardClient = self.shard.start()
        self.client.create_collection(COLLECTION, base.shape[1], "ip", m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
        requests = [
            shard_service_pb2.UpsertRequest(
                collection=COLLECTION,
                ids=[str(i) for i in range(lo, min(len(base), lo + INGEST_BATCH))],
                vectors=pack(base[lo : lo + INGEST_BATCH]),
            )
            for lo in range(0, len(base), INGEST_BATCH)
        ]
        stub = self.client.stub
        start = time.perf_counter()
        with ThreadPoolExecutor(INGEST_THREADS) as pool:
            acked = sum(reply.upserted for reply in pool.map(stub.Upsert, requests))
        ack = time.perf_counter() - start
        self.client.compact(COLLECTION, wait=True)
        indexed = time.perf_counter() - start
        stats = self.client.stats(COLLECTION)
        if acked != len(base) or stats.count != len(base) or stats.graph_elements != len(base) or stats.delta_size:
            raise RuntimeError(f"after ingest: acked {acked}, stats {stats}")
        self.info = self.describe(
            consistency="an Upsert is acknowledged once fsync'ed in the WAL (group commit) and searchable "
            "(exact delta layer); indexed = ShardService.Compact(wait=true) returned with every item in the graph",
            query="ShardService.Search, one packed float32 query, k=10",
        )
        return {"ack_s": ack, "indexed_s": indexed}

    def request(self, queries: Matrix, ef: int) -> Any:
        return shard_service_pb2.SearchRequest(collection=COLLECTION, queries=pack(queries), k=K, ef=ef)

    def search_one(self, query: Any) -> list[int]:
        reply = self.client.stub.Search(self.requests[query])
        return [int(x) for x in reply.results[0].ids]

    def search_batch(self, queries: Matrix) -> Labels:
        reply = self.client.stub.Search(self.request(queries, self.ef))
        out = np.full((len(queries), K), -1, dtype=np.int64)
        for i, result in enumerate(reply.results):
            out[i, : len(result.ids)] = [int(x) for x in result.ids]
        return out

    def close(self) -> None:
        if hasattr(self, "shard"):
            self.shard.stop()


def item_metadata(fields: RowFields, row: int) -> search_service_pb2.Metadata:
    """Row ``row``'s fields as public Metadata: an int attribute per field, its tags."""
    meta = search_service_pb2.Metadata(tags=fields.tags(row))
    for name in FIELD_NAMES:
        meta.attributes[name].int_value = int(fields.ints[name][row])
    return meta


def to_filter_proto(spec: dict[str, Any]) -> search_service_pb2.Filter:
    """A bench/datasets.py filter tree as the public ``vectorsearch.v1.Filter``."""
    (op, arg), *_ = spec.items()
    pb = search_service_pb2
    if op == "eq":
        return pb.Filter(condition=pb.Condition(field=f"attributes.{arg[0]}", eq=pb.AttributeValue(int_value=arg[1])))
    if op == "lt":
        bound = pb.Range(lt=pb.AttributeValue(int_value=arg[1]))
        return pb.Filter(condition=pb.Condition(field=f"attributes.{arg[0]}", range=bound))
    if op == "tag":
        return pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value=arg)))
    if op == "and":
        return pb.Filter(all_of=pb.FilterList(filters=[to_filter_proto(child) for child in arg]))
    raise ValueError(f"unknown filter node {op!r}")


def summarize_explain(replies: list[Any]) -> dict[str, Any]:
    """What ``SearchResponse.explain`` (``SearchExplain``: ``matched``, ``shards`` each with
    ``plan``, ``matched``, ``scored``, ``micros``) said over some replies: plan counts, means.
    Reads the fields it finds; never fails on a field the stubs lack."""
    plans: dict[str, int] = {}
    sums: dict[str, float] = {}
    shard_answers = 0
    with_explain = 0
    for reply in replies:
        if not reply.HasField("explain"):
            continue
        with_explain += 1
        explain = reply.explain
        sums["matched"] = sums.get("matched", 0.0) + float(getattr(explain, "matched", 0))
        for shard in getattr(explain, "shards", []):
            shard_answers += 1
            plan_field = shard.DESCRIPTOR.fields_by_name.get("plan")
            if plan_field is not None:
                value = shard.plan
                enum = plan_field.enum_type
                label = enum.values_by_number[value].name if enum and value in enum.values_by_number else str(value)
                plans[label] = plans.get(label, 0) + 1
            for key in ("matched", "scored", "micros"):
                if key in shard.DESCRIPTOR.fields_by_name:
                    sums[f"shard_{key}"] = sums.get(f"shard_{key}", 0.0) + float(getattr(shard, key))
    out: dict[str, Any] = {"queries": len(replies), "with_explain": with_explain, "plans": plans}
    if with_explain:
        out["mean_matched"] = round(sums.get("matched", 0.0) / with_explain, 1)
    if shard_answers:
        for key in ("matched", "scored", "micros"):
            if f"shard_{key}" in sums:
                out[f"mean_shard_{key}"] = round(sums[f"shard_{key}"] / shard_answers, 1)
    return out


OURS: dict[str, type[System]] = {
    "ours-single-node": SingleNode,
    "ours-1-shard": OneShard,
    "ours-3-shards": ThreeShards,
    "ours-shard-direct": ShardDirect,
    **TRANSPORT,
}

if __name__ == "__main__":
    sys.exit(worker_main(OURS))
