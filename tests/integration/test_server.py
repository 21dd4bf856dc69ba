"""The public server over real sockets: 3 shard processes, metadata in the real Postgres.

Search and filtered search are checked against brute force over all items (recall@10 >= 0.95
at 1%, 10% and 50% selectivity, planned by each shard, with explain); a killed shard gives partial
results naming it; a hung shard cannot hold a search past the caller's deadline; bad input
gets precise status codes.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from testkit.clusterproc import ClusterProcess
from testkit.datasets import data_and_queries
from testkit.truth import exact_top_k
from tests.pg import fresh_schema_url
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

DIM = 24
N = 4_000
SELECTIVITY_TAGS = {"p1": 100, "p10": 10, "p50": 2}  # tag -> every n-th item carries it


def tags_of(i: int) -> list[str]:
    return [tag for tag, every in SELECTIVITY_TAGS.items() if i % every == 0]


def vectors(matrix: np.ndarray) -> types_pb2.Vectors:
    return types_pb2.Vectors(dimension=matrix.shape[1], packed=np.ascontiguousarray(matrix, dtype="<f4").tobytes())


def tag_filter(tag: str) -> pb.Filter:
    return pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value=tag)))


@pytest.fixture(scope="module")
def dataset() -> tuple[np.ndarray, np.ndarray]:
    return data_and_queries(N, 50, DIM, seed=23)


def start_loaded(tmp: Path, data: np.ndarray, *args: str) -> tuple[ClusterProcess, pb_grpc.SearchServiceStub]:
    cluster = ClusterProcess(tmp, *args, database_url=fresh_schema_url())
    stub = cluster.start()
    try:
        load_items(stub, data)
    except BaseException:
        cluster.stop()  # never leave a cluster behind when loading fails
        raise
    return cluster, stub


def load_items(stub: pb_grpc.SearchServiceStub, data: np.ndarray) -> None:
    spec = types_pb2.CollectionSpec(name="imgs", dimension=DIM, metric=types_pb2.METRIC_L2)
    assert stub.CreateCollection(pb.CreateCollectionRequest(spec=spec)).created
    assert not stub.CreateCollection(pb.CreateCollectionRequest(spec=spec)).created

    def batches() -> Iterator[pb.UpsertRequest]:
        for lo in range(0, N, 500):
            request = pb.UpsertRequest(collection="imgs" if lo == 0 else "", vectors=vectors(data[lo : lo + 500]))
            for i in range(lo, lo + 500):
                item = request.items.add(id=f"img-{i}")
                item.metadata.uri = f"s3://bucket/{i}.jpg"
                item.metadata.tags.extend(tags_of(i))
                item.metadata.attributes["n"].int_value = i
                item.metadata.attributes["score"].double_value = i / N
                item.metadata.attributes["kind"].string_value = "photo" if i % 3 else "drawing"
            yield request

    assert stub.UpsertStream(batches()).upserted == N


@pytest.fixture(scope="module")
def loaded(
    tmp_path_factory: pytest.TempPathFactory, dataset: tuple[np.ndarray, np.ndarray]
) -> Iterator[tuple[ClusterProcess, pb_grpc.SearchServiceStub]]:
    cluster, stub = start_loaded(tmp_path_factory.mktemp("cluster") / "c", dataset[0])
    yield cluster, stub
    cluster.stop()


def recall(
    stub: pb_grpc.SearchServiceStub, data: np.ndarray, queries: np.ndarray, subset: list[int], flt: pb.Filter | None
) -> float:
    request = pb.SearchRequest(collection="imgs", queries=vectors(queries), k=10)
    if flt is not None:
        request.filter.CopyFrom(flt)
    reply = stub.Search(request)
    assert not reply.partial
    truth = exact_top_k(data[subset], queries, 10, "l2")
    allowed = {f"img-{i}" for i in subset}
    hits = 0
    for q, result in enumerate(reply.results):
        ids = [h.id for h in result.hits]
        assert set(ids) <= allowed, "a result does not match the filter"
        assert len(ids) == min(10, len(subset))
        hits += len({f"img-{subset[j]}" for j in truth[q]} & set(ids))
    return hits / (10 * len(queries))


def test_search_matches_brute_force_over_all_shards(loaded, dataset) -> None:
    cluster, stub = loaded
    data, queries = dataset
    assert recall(stub, data, queries, list(range(N)), None) >= 0.95
    described = stub.DescribeCollection(pb.DescribeCollectionRequest(collection="imgs"))
    assert described.count == N and described.spec.dimension == DIM
    counts = [
        s.collection_counts["imgs"] for s in cluster.admin().ClusterStatus(admin_pb.ClusterStatusRequest()).shards
    ]
    assert sum(counts) == N and all(c > N / 5 for c in counts)


def test_admin_compact_folds_every_shard(loaded, dataset) -> None:
    cluster, stub = loaded
    data, queries = dataset
    reply = cluster.admin().Compact(admin_pb.CompactRequest(collection="imgs", wait=True))
    assert [s.shard_id for s in reply.shards] == ["shard-0", "shard-1", "shard-2"]
    assert sum(s.count for s in reply.shards) == N
    assert all(s.delta_size == 0 and s.graph_elements == s.count for s in reply.shards)
    assert recall(stub, data, queries, list(range(N)), None) >= 0.95  # searches the graphs now
    unknown = admin_pb.CompactRequest(collection="nope", wait=True)
    assert code_of(lambda: cluster.admin().Compact(unknown)) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("tag", ["p1", "p10", "p50"])
def test_filtered_recall(loaded, dataset, tag: str) -> None:
    _, stub = loaded
    data, queries = dataset
    subset = [i for i in range(N) if tag in tags_of(i)]
    assert recall(stub, data, queries, subset, tag_filter(tag)) >= 0.95


def test_filtered_recall_with_small_messages(tmp_path: Path, dataset) -> None:
    data, queries = dataset
    # the allow-list flags only steer collections planned in SQL (legacy items): shards ignore
    # them; --max-message-mb 1 checks the size limit
    flags = ("--allow-list-small", "10", "--allow-list-selectivity", "0", "--max-message-mb", "1")
    cluster, stub = start_loaded(tmp_path / "c", data, *flags)
    try:
        for tag in SELECTIVITY_TAGS:
            subset = [i for i in range(N) if tag in tags_of(i)]
            assert recall(stub, data, queries, subset, tag_filter(tag)) >= 0.95, tag
        big = pb.UpsertRequest(collection="imgs", vectors=vectors(np.ones((20_000, DIM), dtype=np.float32)))
        for i in range(20_000):
            big.items.add(id=f"big-{i}")
        assert code_of(lambda: stub.Upsert(big)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Get(pb.GetRequest(collection="imgs", ids=["img-1"])).items[0].id == "img-1"  # still serving
    finally:
        cluster.stop()


def test_explain_reports_each_shards_plan(loaded, dataset) -> None:
    _, stub = loaded
    _, queries = dataset
    request = pb.SearchRequest(collection="imgs", queries=vectors(queries[:2]), k=10, filter=tag_filter("p1"))
    assert not stub.Search(request).HasField("explain")  # only when asked
    request.explain = True
    explain = stub.Search(request).explain
    assert explain.matched == N // 100
    assert [s.shard_id for s in explain.shards] == ["shard-0", "shard-1", "shard-2"]
    assert sum(s.matched for s in explain.shards) == explain.matched
    assert all(s.plan == pb.SEARCH_PLAN_EXACT and s.scored >= s.matched for s in explain.shards)  # 40 items: exact
    assert explain.plan == pb.SEARCH_PLAN_EXACT
    request.filter.condition.field = "tags"
    request.filter.condition.eq.string_value = "no-such-tag"
    empty = stub.Search(request)
    assert all(len(r.hits) == 0 for r in empty.results) and empty.explain.plan == pb.SEARCH_PLAN_EMPTY
    unfiltered = stub.Search(pb.SearchRequest(collection="imgs", queries=vectors(queries[:1]), k=5, explain=True))
    assert unfiltered.explain.matched == N and {s.plan for s in unfiltered.explain.shards} <= {
        pb.SEARCH_PLAN_GRAPH,
        pb.SEARCH_PLAN_EXACT,  # a shard whose items are all still in its delta
    }


def test_compound_filters_match_a_python_model(loaded, dataset) -> None:
    _, stub = loaded
    data, queries = dataset
    value = pb.AttributeValue
    flt = pb.Filter(
        all_of=pb.FilterList(
            filters=[
                pb.Filter(
                    condition=pb.Condition(
                        field="attributes.n", range=pb.Range(gte=value(int_value=1000), lt=value(int_value=3000))
                    )
                ),
                pb.Filter(
                    any_of=pb.FilterList(
                        filters=[
                            pb.Filter(condition=pb.Condition(field="tags", eq=value(string_value="p10"))),
                            pb.Filter(
                                condition=pb.Condition(field="attributes.kind", eq=value(string_value="drawing"))
                            ),
                        ]
                    )
                ),
            ]
        )
    )
    negated = pb.Filter()
    negated.__getattribute__("not").CopyFrom(
        pb.Filter(condition=pb.Condition(field="attributes.score", range=pb.Range(gt=value(double_value=0.5))))
    )
    subset = [i for i in range(N) if 1000 <= i < 3000 and (i % 10 == 0 or i % 3 == 0)]
    assert recall(stub, data, queries[:20], subset, flt) >= 0.95
    assert recall(stub, data, queries[:20], [i for i in range(N) if i / N <= 0.5], negated) >= 0.95


def test_get_delete_search_by_id_and_metadata(loaded, dataset) -> None:
    _, stub = loaded
    data, _ = dataset
    got = stub.Get(pb.GetRequest(collection="imgs", ids=["img-7", "nope"], include_vectors=True))
    assert [i.id for i in got.items] == ["img-7"] and list(got.missing_ids) == ["nope"]
    item = got.items[0]
    assert item.metadata.uri == "s3://bucket/7.jpg" and item.metadata.attributes["n"].int_value == 7
    np.testing.assert_allclose(item.vector, data[7], rtol=1e-6)
    similar = stub.SearchById(pb.SearchByIdRequest(collection="imgs", id="img-7", k=5, include_metadata=True))
    hits = similar.results[0].hits
    assert len(hits) == 5 and all(h.id != "img-7" for h in hits)
    assert all(h.metadata.uri.startswith("s3://bucket/") for h in hits)
    assert stub.Delete(pb.DeleteRequest(collection="imgs", ids=["img-3999", "nope"])).deleted == 1
    reply = stub.Search(pb.SearchRequest(collection="imgs", queries=vectors(data[3999:4000]), k=3))
    assert all(h.id != "img-3999" for h in reply.results[0].hits)
    with pytest.raises(grpc.RpcError) as info:
        stub.SearchById(pb.SearchByIdRequest(collection="imgs", id="img-3999", k=5))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_bad_input_gets_precise_codes(loaded, dataset) -> None:
    _, stub = loaded
    data, queries = dataset
    bad = grpc.StatusCode.INVALID_ARGUMENT
    q = vectors(queries[:1])
    value = pb.AttributeValue

    def search(**kwargs):
        return lambda: stub.Search(pb.SearchRequest(**{"collection": "imgs", "queries": q, "k": 5, **kwargs}))

    assert code_of(search(collection="missing")) == grpc.StatusCode.NOT_FOUND
    assert code_of(search(queries=vectors(queries[:1, :5]))) == bad
    assert code_of(search(k=0)) == bad
    assert code_of(search(k=1001)) == bad
    assert code_of(search(filter=pb.Filter(condition=pb.Condition(field="color", eq=value(string_value="x"))))) == bad
    assert (
        code_of(search(filter=pb.Filter(condition=pb.Condition(field="attributes.nope", eq=value(int_value=1))))) == bad
    )
    assert (
        code_of(search(filter=pb.Filter(condition=pb.Condition(field="attributes.n", eq=value(string_value="1")))))
        == bad
    )
    assert (
        code_of(
            search(
                filter=pb.Filter(
                    condition=pb.Condition(field="attributes.kind", range=pb.Range(gt=value(string_value="a")))
                )
            )
        )
        == bad
    )
    assert code_of(search(filter=pb.Filter(condition=pb.Condition(field="tags", eq=value(int_value=3))))) == bad
    assert code_of(search(filter=pb.Filter(condition=pb.Condition(field="tags")))) == bad
    assert code_of(search(filter=pb.Filter(all_of=pb.FilterList(filters=[pb.Filter()])))) == bad
    nan = data[:1].copy()
    nan[0, 0] = np.nan
    upsert = pb.UpsertRequest(collection="imgs", vectors=vectors(nan))
    upsert.items.add(id="nan-item")
    assert code_of(lambda: stub.Upsert(upsert)) == bad
    assert code_of(lambda: stub.Upsert(pb.UpsertRequest(collection="imgs"))) == bad
    conflict = pb.UpsertRequest(collection="imgs", vectors=vectors(data[:1]))
    conflict.items.add(id="typed").metadata.attributes["n"].string_value = "not an int"
    assert code_of(lambda: stub.Upsert(conflict)) == bad
    got = stub.Get(pb.GetRequest(collection="imgs", ids=["nan-item", "typed"]))
    assert sorted(got.missing_ids) == ["nan-item", "typed"], "rejected writes must change nothing"
    spec = types_pb2.CollectionSpec(name="imgs", dimension=DIM + 1, metric=types_pb2.METRIC_L2)
    assert (
        code_of(lambda: stub.CreateCollection(pb.CreateCollectionRequest(spec=spec))) == grpc.StatusCode.ALREADY_EXISTS
    )


def test_dead_shard_partial_results_and_hung_shard_deadline(tmp_path: Path, dataset) -> None:
    data, queries = dataset
    cluster, stub = start_loaded(tmp_path / "c", data)
    try:
        request = pb.SearchRequest(collection="imgs", queries=vectors(queries[:3]), k=10)
        hung = cluster.shard_pid(2)
        os.kill(hung, signal.SIGSTOP)
        try:
            started = time.monotonic()
            reply = stub.Search(request, timeout=1.0)
            took = time.monotonic() - started
            assert reply.partial and list(reply.failed_shards) == ["shard-2"]
            assert took < 1.5 and all(len(r.hits) == 10 for r in reply.results)
        finally:
            os.kill(hung, signal.SIGCONT)
        os.kill(cluster.shard_pid(1), signal.SIGKILL)
        time.sleep(0.2)
        reply = stub.Search(request)
        assert reply.partial and list(reply.failed_shards) == ["shard-1"]
        request.require_all_shards = True
        assert code_of(lambda: stub.Search(request)) == grpc.StatusCode.UNAVAILABLE
        status = cluster.admin().ClusterStatus(admin_pb.ClusterStatusRequest())
        health = {s.shard_id: s.healthy for s in status.shards}
        assert health == {"shard-0": True, "shard-1": False, "shard-2": True}
    finally:
        cluster.stop()


def test_health_and_reflection(loaded) -> None:
    cluster, _ = loaded
    assert cluster.channel is not None
    health = health_pb2_grpc.HealthStub(cluster.channel)
    for service in ("", "vectorsearch.v1.SearchService", "vectorsearch.v1.AdminService"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service)).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    stub = reflection_pb2_grpc.ServerReflectionStub(cluster.channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"vectorsearch.v1.SearchService", "vectorsearch.v1.AdminService"} <= names
