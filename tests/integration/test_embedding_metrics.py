"""Embedding metrics on the real processes (issue #17): a single-node server with ``--triton-url``
(a real tritonserver serving the random CLIP) and ``--metrics-listen`` counts its requests to
Triton by kind and outcome, times them, records how many items each call sends, and counts cache
lookups by cache and result, for the in-process LRU and for Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from clipmodel import triton_process
from clipmodel.identity import ModelIdentity
from testkit.clipdata import pictures
from testkit.serverproc import SingleNodeProcess
from tests.conftest import ClipRepo
from tests.integration.test_metrics import metrics_address, scrape, value
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory, clip_repo: ClipRepo) -> Iterator[triton_process.TritonProcess]:
    process = triton_process.TritonProcess(clip_repo.repo, tmp_path_factory.mktemp("triton") / "triton")
    process.start(timeout=120)
    try:
        yield process
    finally:
        process.close()


def start_server(
    workdir: Path, triton: triton_process.TritonProcess, *extra: str
) -> tuple[SingleNodeProcess, grpc.Channel, str]:
    server = SingleNodeProcess(
        workdir, "--triton-url", triton.grpc_url, "--metrics-listen", "127.0.0.1:0", "--request-timeout-s", "30", *extra
    )
    channel = grpc.insecure_channel(server.start())
    return server, channel, metrics_address(workdir / "server.ready")


def create(stub: pb_grpc.SearchServiceStub, name: str, identity: ModelIdentity) -> None:
    spec = types_pb2.CollectionSpec(name=name, dimension=identity.dim, metric=types_pb2.METRIC_COSINE)
    stub.CreateCollection(pb.CreateCollectionRequest(spec=spec, embedding_model=identity.id))


def search_text(stub: pb_grpc.SearchServiceStub, collection: str, texts: list[str]) -> None:
    results = stub.SearchByText(pb.SearchByTextRequest(collection=collection, texts=texts, k=3), timeout=60).results
    assert len(results) == len(texts)


def test_triton_requests_batches_and_memory_cache_hits_are_counted(
    tmp_path: Path, triton: triton_process.TritonProcess, clip_repo: ClipRepo
) -> None:
    server, channel, address = start_server(tmp_path / "node", triton)
    try:
        stub = pb_grpc.SearchServiceStub(channel)
        before = scrape(address)
        # the series exist, at zero, before the first call (rates and the hit ratio are defined)
        assert ("vs_embedding_triton_requests_total", (("code", "OK"), ("kind", "text"))) in before
        assert value(before, "vs_embedding_triton_requests_total") == 0
        assert value(before, "vs_embedding_batch_items_count") == 0
        assert ("vs_embedding_cache_lookups_total", (("cache", "memory"), ("result", "hit"))) in before
        assert value(before, "vs_embedding_cache_lookups_total") == 0

        create(stub, "photos", clip_repo.identity)
        images = pictures(3, seed=11)
        reply = stub.IngestImages(
            iter([pb.IngestImagesRequest(collection="photos", items=[pb.ImageItem(data=d) for d in images])]),
            timeout=60,
        )
        assert reply.ingested == 3 and reply.failed == 0
        search_text(stub, "photos", ["a red bicycle"])  # 1 item to Triton
        search_text(stub, "photos", ["a red bicycle"])  # a cache hit: nothing sent
        search_text(stub, "photos", ["a cat", "a dog"])  # 2 items to Triton in one call

        after = scrape(address)
        # requests to Triton: one per distinct item missing from the cache
        assert value(after, "vs_embedding_triton_requests_total", kind="text", code="OK") == 3
        assert value(after, "vs_embedding_triton_requests_total", kind="image", code="OK") == 3
        assert value(after, "vs_embedding_triton_requests_total") == 6  # no error outcome
        assert value(after, "vs_embedding_triton_request_duration_seconds_count", kind="text", code="OK") == 3
        assert value(after, "vs_embedding_triton_request_duration_seconds_count", kind="image", code="OK") == 3
        assert value(after, "vs_embedding_triton_request_duration_seconds_sum", kind="image") > 0
        # items per call sent to Triton: text calls of 1 and 2 items (the cached call sent none), one image call of 3
        assert value(after, "vs_embedding_batch_items_count", kind="text") == 2
        assert value(after, "vs_embedding_batch_items_sum", kind="text") == 3
        assert value(after, "vs_embedding_batch_items_bucket", kind="text", le="1.0") == 1
        assert value(after, "vs_embedding_batch_items_count", kind="image") == 1
        assert value(after, "vs_embedding_batch_items_sum", kind="image") == 3
        # cache lookups: the repeated text is the only hit
        hits = value(after, "vs_embedding_cache_lookups_total", cache="memory", result="hit")
        misses = value(after, "vs_embedding_cache_lookups_total", cache="memory", result="miss")
        assert (hits, misses) == (1, 6)
        assert value(after, "vs_embedding_cache_lookups_total", cache="redis") == 0
        # items answered, by where the answer came from
        assert value(after, "vs_embedding_items_total", kind="text", result="cached") == 1
        assert value(after, "vs_embedding_items_total", kind="text", result="embedded") == 3
        assert value(after, "vs_embedding_items_total", kind="image", result="embedded") == 3
        assert value(after, "vs_embedding_items_total", result="failed") == 0
    finally:
        channel.close()
        server.stop()


def test_redis_cache_lookups_are_counted_as_redis(
    tmp_path: Path, triton: triton_process.TritonProcess, clip_repo: ClipRepo
) -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip("no Redis on 127.0.0.1:6379")
    prefix = f"vs:test:{uuid.uuid4().hex[:12]}:"
    cache_url = f"{REDIS_URL}?prefix={prefix}"
    server, channel, address = start_server(tmp_path / "node", triton, "--embedding-cache", cache_url)
    try:
        stub = pb_grpc.SearchServiceStub(channel)
        create(stub, "c", clip_repo.identity)
        search_text(stub, "c", ["a red bicycle"])
        search_text(stub, "c", ["a red bicycle"])
        samples = scrape(address)
        assert value(samples, "vs_embedding_cache_lookups_total", cache="redis", result="hit") == 1
        assert value(samples, "vs_embedding_cache_lookups_total", cache="redis", result="miss") == 1
        assert value(samples, "vs_embedding_cache_lookups_total", cache="memory") == 0
        assert value(samples, "vs_embedding_triton_requests_total", kind="text", code="OK") == 1
    finally:
        channel.close()
        server.stop()
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
