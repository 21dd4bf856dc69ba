"""``server.embedding`` against a real tritonserver (the random CLIP exported by
``clipmodel.export``, run by ``clipmodel.triton_process``) and the real Redis on 127.0.0.1:6379:
normalised vectors of the model's width, batching across concurrent callers, a bad image failing
alone, cache hits that never reach Triton, Triton killed / hung / restarted, back-pressure.

Nothing is mocked and nothing is skipped: if Triton or Redis cannot start, the tests fail.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import redis

from clipmodel import export, random, triton_process
from clipmodel.identity import ModelIdentity
from core.errors import DeadlineExceeded, DomainError, InvalidArgument, ResourceExhausted, Unavailable
from server.embedding import IMAGE, TEXT, NullCache, RetryPolicy, TritonEmbedder, make_cache
from server.embedding.redis_cache import RedisCache
from testkit.clipdata import encode, picture, pictures
from tests.conftest import ClipRepo

REDIS_URL = "redis://127.0.0.1:6379/0"
TOLERANCE = 1e-5


@dataclass
class Triton:
    """The session's tritonserver; tests that kill it start it again on the same ports."""

    root: Path
    repo: Path
    identity: ModelIdentity
    process: triton_process.TritonProcess
    starts: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        return self.process.grpc_url

    def kill(self) -> None:
        """SIGKILL to the server and its python-backend stubs (a crash, not a shutdown)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.stop()

    def restart(self, repo: Path) -> None:
        """A new tritonserver serving ``repo`` on the same ports (the old one must be dead)."""
        ports = self.process.ports
        process = triton_process.TritonProcess(repo, self.root / f"triton-{next(self.starts)}", ports=ports)
        process.start(timeout=120)
        self.process = process


def _export(root: Path, seed: int) -> tuple[Path, ModelIdentity]:
    weights = random.save(root / f"weights-{seed}", seed=seed)
    repo = root / f"repo-{seed}"
    return repo, export.export(weights, repo)


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory, clip_repo: ClipRepo) -> Iterator[Triton]:
    root = tmp_path_factory.mktemp("embedding")
    repo, identity = clip_repo.repo, clip_repo.identity
    process = triton_process.TritonProcess(repo, root / "triton-0")
    process.start(timeout=120)
    served = Triton(root, repo, identity, process)
    yield served
    served.process.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis on 127.0.0.1:6379, started (no persistence) if it is down."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.ConnectionError:
        command = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379"]
        subprocess.run([*command, "--save", "", "--appendonly", "no"], check=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    prefix = f"vs:test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def counts(embedder: TritonEmbedder) -> tuple[int, int, int, int]:
    """(text inferences, text executions, image inferences, image executions) since Triton started."""
    t, i = embedder.model_stats(TEXT), embedder.model_stats(IMAGE)
    return t.inference_count, t.execution_count, i.inference_count, i.execution_count


def counts_after(embedder: TritonEmbedder, texts: int, images: int, timeout_s: float = 10.0) -> tuple[int, ...]:
    """:func:`counts` once Triton reports at least ``texts`` and ``images`` inferences: its
    statistics are recorded after a response is sent, so they may lag the replies briefly."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = counts(embedder)
        if (got[0] >= texts and got[2] >= images) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def vectors(results: list[np.ndarray | DomainError]) -> np.ndarray:
    bad = [r for r in results if isinstance(r, DomainError)]
    assert not bad, bad[0]
    return np.stack(results)  # type: ignore[arg-type]


def test_text_and_image_embeddings_are_normalised_and_of_the_models_width(triton: Triton) -> None:
    with TritonEmbedder(triton.url) as embedder:
        assert embedder.identity(TEXT) == embedder.identity(IMAGE) == triton.identity.id
        assert embedder.dim(TEXT) == triton.identity.dim
        texts = ["a photo of a cat", "a red bicycle by a wall", "naïve café — 42 €", "word " * 500]
        got = embedder.embed_texts(texts, timeout=10)
        assert got.shape == (4, triton.identity.dim) and got.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        images = [encode(picture(1), "JPEG"), encode(picture(2, (300, 500)), "PNG"), encode(picture(3), "WEBP")]
        image_vectors = vectors(embedder.embed_images(images, timeout=10))
        assert image_vectors.shape == (3, triton.identity.dim) and image_vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(image_vectors, axis=1), 1.0, atol=1e-5)
        # one at a time, alone in their batches: the same vectors
        for text, vector in zip(texts, got, strict=True):
            fresh = TritonEmbedder(triton.url, cache=NullCache())
            np.testing.assert_allclose(fresh.embed_texts([text], timeout=10)[0], vector, atol=TOLERANCE)
            fresh.close()
        assert embedder.embed_texts([], timeout=10).shape == (0, triton.identity.dim)


def test_concurrent_calls_are_batched_by_triton(triton: Triton) -> None:
    with TritonEmbedder(triton.url, cache=NullCache()) as embedder:
        t0, e0, i0, x0 = counts(embedder)
        barrier = threading.Barrier(16)

        def caller(k: int) -> np.ndarray:
            barrier.wait()
            return embedder.embed_texts([f"caller {k} text {j}" for j in range(8)], timeout=30)

        with ThreadPoolExecutor(16) as pool:
            assert all(r.shape == (8, triton.identity.dim) for r in pool.map(caller, range(16)))
        results = embedder.embed_images(pictures(12, seed=4, size=(320, 240)), timeout=30)  # one call, 12 requests
        assert len(vectors(results)) == 12
        t1, e1, i1, x1 = counts_after(embedder, t0 + 128, i0 + 12)
    assert t1 - t0 == 128 and e1 - e0 < 128, f"128 texts ran in {e1 - e0} executions: no batch > 1"
    assert i1 - i0 == 12 and x1 - x0 < 12, f"12 images ran in {x1 - x0} executions"


def test_a_corrupt_image_fails_alone(triton: Triton) -> None:
    good = pictures(3, seed=7, size=(320, 240))
    truncated = good[0][: len(good[0]) // 2]
    garbled = good[1][:200] + bytes(range(256)) * 20  # a JPEG header, then noise
    batch = [good[0], truncated, good[1], garbled, b"", b"GIF89a" + b"\x00" * 64, good[2]]
    with TritonEmbedder(triton.url, cache=NullCache()) as embedder:
        alone = vectors(embedder.embed_images(good, timeout=10))
        results = embedder.embed_images(batch, timeout=10)
    assert len(results) == len(batch)
    for i, expected in ((0, alone[0]), (2, alone[1]), (6, alone[2])):
        got = results[i]
        assert isinstance(got, np.ndarray), got
        np.testing.assert_allclose(got, expected, atol=TOLERANCE)
    for i, reason in ((1, "truncated"), (3, "refused by model"), (4, "empty"), (5, "not a JPEG, PNG or WebP")):
        assert isinstance(results[i], InvalidArgument), (i, results[i])
        assert reason in str(results[i]), (i, str(results[i]))


def test_identical_inputs_in_one_call_are_sent_once(triton: Triton) -> None:
    with TritonEmbedder(triton.url, cache=NullCache()) as embedder:
        t0, _, _, _ = counts(embedder)
        got = embedder.embed_texts([f"same {uuid.uuid4()}"] * 5, timeout=10)
        counts_after(embedder, t0 + 1, 0)
        time.sleep(0.5)  # statistics lag the replies: give any further inference time to show
        t1, _, _, _ = counts(embedder)
    assert t1 - t0 == 1 and np.all(got == got[0])


@pytest.mark.parametrize("store", ["lru", "redis"])
def test_cache_hits_skip_triton(triton: Triton, store: str, redis_url: str, redis_prefix: str) -> None:
    url = None if store == "lru" else f"{redis_url}?prefix={redis_prefix}&ttl_s=300"
    texts = [f"cached text {uuid.uuid4()}" for _ in range(4)]
    images = pictures(3, seed=int(time.time()) % 10_000, size=(256, 256))
    with TritonEmbedder(triton.url, cache=make_cache(url)) as embedder:
        t0, _, i0, _ = counts(embedder)
        first_texts = embedder.embed_texts(texts, timeout=10)
        first_images = vectors(embedder.embed_images(images, timeout=10))
        before = counts_after(embedder, t0 + len(texts), i0 + len(images))
        np.testing.assert_array_equal(embedder.embed_texts(texts, timeout=10), first_texts)
        np.testing.assert_array_equal(vectors(embedder.embed_images(images, timeout=10)), first_images)
        time.sleep(0.5)  # statistics lag the replies: give a wrongly sent request time to show
        assert counts(embedder) == before, "a cache hit reached Triton"
        assert embedder.cache.stats().hits == 7
    if store == "redis":
        # another server (another process's embedder) shares the Redis cache
        with TritonEmbedder(triton.url, cache=make_cache(url)) as other:
            np.testing.assert_array_equal(other.embed_texts(texts, timeout=10), first_texts)
            time.sleep(0.5)
            assert counts(other) == before
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=redis_prefix + "*"))
        assert len(keys) == 7
        assert all(len(client.get(k) or b"") == 4 * triton.identity.dim for k in keys)
        assert all(0 < client.ttl(k) <= 300 for k in keys)
        assert any(k.decode().startswith(f"{redis_prefix}text:{triton.identity.id}:") for k in keys)


def test_redis_down_is_a_miss_with_one_warning(triton: Triton, caplog: pytest.LogCaptureFixture) -> None:
    cache = make_cache(f"redis://127.0.0.1:{closed_port()}/0")
    assert isinstance(cache, RedisCache)
    cache.cooldown_s = 0.0  # ask it every time: still one warning
    with (
        caplog.at_level(logging.INFO, logger="server.embedding.redis_cache"),
        TritonEmbedder(triton.url, cache=cache) as embedder,
    ):
        for _ in range(3):
            assert embedder.embed_texts(["redis is down"], timeout=10).shape == (1, triton.identity.dim)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Redis at 127.0.0.1:" in warnings[0].getMessage()


def test_back_pressure_is_resource_exhausted_with_a_retry_hint(triton: Triton) -> None:
    with TritonEmbedder(triton.url, cache=NullCache(), max_in_flight=2, admission_wait_s=0.05) as embedder:
        embedder.embed_texts(["warm up"], timeout=10)
        assert embedder.limiter.acquire(0) and embedder.limiter.acquire(0)  # other callers hold every slot
        try:
            started = time.monotonic()
            with pytest.raises(ResourceExhausted, match="in flight to Triton at") as err:
                embedder.embed_texts(["no room"], timeout=10)
            assert time.monotonic() - started < 1.0
            assert err.value.retry_after_s is not None and 0 < err.value.retry_after_s <= 5
            results = embedder.embed_images(pictures(2, seed=3, size=(64, 64)), timeout=10)
            assert all(isinstance(r, ResourceExhausted) for r in results)
        finally:
            embedder.limiter.release()
            embedder.limiter.release()
        assert embedder.embed_texts(["room again"], timeout=10).shape == (1, triton.identity.dim)


def test_many_callers_over_one_slot_are_refused_not_queued(triton: Triton) -> None:
    with TritonEmbedder(triton.url, cache=NullCache(), max_in_flight=1, admission_wait_s=0.0) as embedder:
        embedder.embed_texts(["warm up"], timeout=10)
        outcomes: list[str] = []
        for attempt in range(5):  # until both outcomes were seen (a refusal needs a collision)
            barrier = threading.Barrier(16)

            def caller(k: int, attempt: int = attempt, barrier: threading.Barrier = barrier) -> str:
                barrier.wait()
                try:
                    embedder.embed_texts([f"round {attempt} caller {k}"], timeout=10)
                    return "ok"
                except ResourceExhausted as e:
                    assert e.retry_after_s is not None and e.retry_after_s > 0
                    return "refused"

            with ThreadPoolExecutor(16) as pool:
                outcomes += list(pool.map(caller, range(16)))
            if "ok" in outcomes and "refused" in outcomes:
                break
        assert "ok" in outcomes and "refused" in outcomes, outcomes
        assert embedder.limiter.in_flight == 0


def test_a_full_triton_queue_is_resource_exhausted_with_a_retry_hint(triton: Triton) -> None:
    # More requests at once than Triton queues (max_queue_size 256), and no retries: Triton
    # refuses the excess at once, and those items (only those) are ResourceExhausted.
    # Pictures big enough that decoding them in the model is slower than sending them, so the
    # queue fills even when other processes load the machine (at 32x32 it drained as fast as a
    # contended client could send).
    images = pictures(800, seed=12, size=(192, 192))
    with TritonEmbedder(triton.url, cache=NullCache(), max_in_flight=800, retry=RetryPolicy(attempts=1)) as embedder:
        started = time.monotonic()
        results = embedder.embed_images(images, timeout=30)
        assert time.monotonic() - started < 30
        assert embedder.limiter.in_flight == 0
    refused = [r for r in results if isinstance(r, ResourceExhausted)]
    assert refused and len(refused) < len(images), "expected some items queued and some refused"
    assert all(isinstance(r, (np.ndarray, ResourceExhausted)) for r in results)
    assert "queue of model 'clip_image' is full" in str(refused[0])
    assert all(r.retry_after_s is not None and r.retry_after_s > 0 for r in refused)


def test_a_hung_triton_is_deadline_exceeded_in_time(triton: Triton) -> None:
    with TritonEmbedder(triton.url, cache=NullCache()) as embedder:
        embedder.embed_texts(["warm up"], timeout=10)  # identity read and cached
        os.kill(triton.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(DeadlineExceeded, match="did not answer for model 'clip_text'"):
                embedder.embed_texts(["anyone there?"], timeout=1.0)
            assert time.monotonic() - started < 2.0
        finally:
            os.kill(triton.process.pid, signal.SIGCONT)
        assert embedder.limiter.in_flight == 0
        assert embedder.embed_texts(["awake again"], timeout=10).shape == (1, triton.identity.dim)


def test_triton_killed_is_unavailable_in_time_and_restarted_works_again(triton: Triton) -> None:
    deadline = 2.0
    other_repo, other_identity = _export(triton.root, seed=1)  # other weights: another identity
    with TritonEmbedder(triton.url) as embedder:  # default LRU cache
        before = embedder.embed_texts(["a photo of a cat"], timeout=10)[0]
        triton.kill()
        try:
            started = time.monotonic()
            with pytest.raises(Unavailable) as err:
                embedder.embed_texts(["a photo of a dog"], timeout=deadline)
            assert time.monotonic() - started < deadline + 1
            assert "clip_text" in str(err.value) and triton.url in str(err.value)
            started = time.monotonic()
            results = embedder.embed_images(pictures(2, seed=8, size=(64, 64)), timeout=deadline)
            assert time.monotonic() - started < deadline + 1
            assert all(isinstance(r, Unavailable) and "clip_image" in str(r) for r in results)
            with TritonEmbedder(triton.url) as cold:  # never reached Triton: the identity read fails
                started = time.monotonic()
                with pytest.raises(Unavailable, match=f"Triton at {triton.url} .*'clip_text'"):
                    cold.embed_texts(["hello"], timeout=deadline)
                assert time.monotonic() - started < deadline + 1
            assert embedder.limiter.in_flight == 0

            triton.restart(other_repo)  # same port, other weights
            after = embedder.embed_texts(["a photo of a cat"], timeout=10)[0]
            assert embedder.identity(TEXT) == other_identity.id != triton.identity.id
            assert not np.allclose(after, before, atol=1e-3), "served a vector of the old model from the cache"
        finally:
            if triton.process.proc is not None:
                triton.kill()
            triton.restart(triton.repo)
        # and back: the same embedder, the first model, its cached vector again
        np.testing.assert_array_equal(embedder.embed_texts(["a photo of a cat"], timeout=10)[0], before)
        assert embedder.identity(TEXT) == triton.identity.id
