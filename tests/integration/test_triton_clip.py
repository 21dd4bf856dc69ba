"""CLIP on a real tritonserver: the random CLIP exported into a model repository, served by
``clipmodel.triton_process``, compared with the same towers run in process by torch."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clipmodel import export, preprocess, random, triton_process
from clipmodel.identity import ModelIdentity, identity_of
from clipmodel.tokenizer import ClipTokenizer
from clipmodel.vocab import path as vocab_path
from testkit.clipdata import encode, picture, pictures

TOLERANCE = 1e-5


@dataclass
class Served:
    server: triton_process.TritonProcess
    repo: Path
    identity: ModelIdentity
    text_tower: Any
    image_tower: Any
    tokenizer: ClipTokenizer

    def client(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.server.grpc_url)


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("clip")
    weights = random.save(root / "weights", seed=0)
    repo = root / "repo"
    identity = export.export(weights, repo, export.ServingOptions(queue_delay_us=5000))
    text_tower, image_tower = export.towers(export.load(weights))
    with triton_process.TritonProcess(repo, root / "triton") as server:
        server.start(timeout=120)
        yield Served(server, repo, identity, text_tower, image_tower, ClipTokenizer(vocab_path()))


def _input(name: str, items: list[bytes]) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [len(items), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[item] for item in items], dtype=object))
    return tensor


def embed(client: grpcclient.InferenceServerClient, model: str, items: list[bytes]) -> np.ndarray:
    name = "TEXT" if model == "clip_text" else "IMAGE"
    return client.infer(model, [_input(name, items)]).as_numpy("EMBEDDING")


def torch_text(served: Served, texts: list[str]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate(
            [served.text_tower(torch.from_numpy(served.tokenizer.encode_batch([t]))).numpy() for t in texts]
        )


def torch_image(served: Served, images: list[bytes]) -> np.ndarray:
    import torch

    pixels = np.stack([preprocess.preprocess(data) for data in images])
    with torch.inference_mode():
        return served.image_tower(torch.from_numpy(pixels)).numpy()


def stats(client: grpcclient.InferenceServerClient, model: str, at_least: int = 0) -> tuple[int, int]:
    """(inference_count, execution_count) of ``model`` since the server started, once it counts
    ``at_least`` inferences (up to 10 s): Triton records statistics after it replies, so they lag."""
    deadline = time.monotonic() + 10
    while True:
        s = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        got = int(s.get("inference_count", 0)), int(s.get("execution_count", 0))
        if got[0] >= at_least or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_text_embeddings_match_in_process_model(served: Served) -> None:
    texts = ["a photo of a cat", "a red bicycle by a wall", "x", "word " * 200, "naïve café — 42 €"]
    got = embed(served.client(), "clip_text", [t.encode() for t in texts])
    assert got.shape == (len(texts), served.identity.dim) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, torch_text(served, texts), atol=TOLERANCE)


def test_image_embeddings_match_in_process_model(served: Served) -> None:
    images = [
        encode(picture(1), "JPEG"),
        encode(picture(2, (300, 500)), "PNG"),
        encode(picture(3, (224, 224)), "WEBP"),
    ]
    got = embed(served.client(), "clip_image", images)
    assert got.shape == (3, served.identity.dim) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, torch_image(served, images), atol=TOLERANCE)


def test_an_image_is_closest_to_itself(served: Served) -> None:
    client = served.client()
    images = pictures(6, seed=11)
    index = embed(client, "clip_image", images)
    for i, data in enumerate(images):
        query = embed(client, "clip_image", [data])[0]  # a separate request, alone in its batch
        assert int(np.argmax(index @ query)) == i


def test_concurrent_requests_are_batched(served: Served) -> None:
    client = served.client()
    start = stats(client, "clip_text"), stats(client, "clip_image")
    texts = [f"a photo of thing number {i}".encode() for i in range(64)]
    images = pictures(16, seed=5, size=(256, 256))
    expected = embed(client, "clip_text", texts), embed(client, "clip_image", images)
    before = stats(client, "clip_text", start[0][0] + 64), stats(client, "clip_image", start[1][0] + 16)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            own = grpcclient.InferenceServerClient(served.server.grpc_url)
            for i in range(k, len(texts), 16):
                np.testing.assert_allclose(embed(own, "clip_text", [texts[i]])[0], expected[0][i], atol=TOLERANCE)
            np.testing.assert_allclose(embed(own, "clip_image", [images[k]])[0], expected[1][k], atol=TOLERANCE)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    after = stats(client, "clip_text", before[0][0] + 64), stats(client, "clip_image", before[1][0] + 16)
    for (inf0, exe0), (inf1, exe1), n in zip(before, after, (64, 16), strict=True):
        assert inf1 - inf0 == n
        assert exe1 - exe0 < n, f"{n} requests ran in {exe1 - exe0} executions: no batch > 1"


def test_bad_image_in_a_batch_fails_alone(served: Served) -> None:
    client = served.client()
    good = pictures(4, seed=9, size=(320, 240))
    jpeg = good[0]
    bad = {1: b"not an image", 3: jpeg[: len(jpeg) // 2], 5: b""}
    batch = [bad.get(i, good[i // 2]) for i in range(7)]
    inf0, _ = stats(client, "clip_image")
    expected = embed(client, "clip_image", good)
    _, exe0 = stats(client, "clip_image", inf0 + len(good))
    results: dict[int, Any] = {}
    done = threading.Semaphore(0)

    def callback(i: int, result: Any, error: Any) -> None:
        results[i] = error if error is not None else result.as_numpy("EMBEDDING")
        done.release()

    for i, data in enumerate(batch):  # sent together, so Triton batches them
        client.async_infer(
            "clip_image", [_input("IMAGE", [data])], callback=lambda result, error, i=i: callback(i, result, error)
        )
    for _ in batch:
        assert done.acquire(timeout=30)
    for i in range(7):
        if i in bad:
            assert isinstance(results[i], InferenceServerException)
            assert results[i].status() == "StatusCode.INVALID_ARGUMENT"
            assert "image refused" in results[i].message()
        else:
            np.testing.assert_allclose(results[i][0], expected[i // 2], atol=TOLERANCE)
    time.sleep(0.5)  # statistics lag the replies
    _, exe1 = stats(client, "clip_image")
    assert exe1 - exe0 < 7, "the requests were not batched together"
    assert "truncated" in str(results[3].message()) and "empty" in str(results[5].message())


def test_bad_text_fails_alone(served: Served) -> None:
    client = served.client()
    for item, reason in ((b"\xff\xfe not utf-8", "UTF-8"), (b"   ", "empty"), (b"a" * 20_000, "limit")):
        with pytest.raises(InferenceServerException, match=reason) as info:
            embed(client, "clip_text", [item])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert embed(client, "clip_text", [b"still fine"]).shape == (1, served.identity.dim)


def test_model_identity_readable_by_clients(served: Served) -> None:
    client = served.client()
    assert served.identity.id.startswith("clip-vit/p32-i224-") and len(served.identity.weights_sha256) == 64
    for model in ("clip_text", "clip_image"):
        params = client.get_model_config(model, as_json=True)["config"]["parameters"]
        assert params["model_identity"]["string_value"] == served.identity.id
        assert params["embedding_dim"]["string_value"] == str(served.identity.dim)
        assert ModelIdentity.read(served.repo / model / "1") == served.identity
    assert ModelIdentity.read(served.repo) == served.identity
    # same weights, same identity; other weights, another
    assert identity_of(random.build(seed=0)) == served.identity
    assert identity_of(random.build(seed=1)).id != served.identity.id


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}  # v4, v4-mapped, ::1


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp and tcp6 write them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, state = fields[1], fields[3]
            if state == "0A" and int(address.rsplit(":", 1)[1], 16) == port:
                found.append(address.rsplit(":", 1)[0])
    return found


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_server_listens_on_loopback_only_and_stop_ends_its_stubs(served: Served, tmp_path: Path) -> None:
    ports = served.server.ports
    assert ports is not None
    for port in (ports.grpc, ports.http, ports.metrics):
        addresses = _listening(port)
        assert addresses and set(addresses) <= LOOPBACK, (port, addresses)
    with triton_process.TritonProcess(served.repo, tmp_path / "second") as second:
        second.start(timeout=120)
        stubs = _children(second.pid)
        options = export.ServingOptions()
        assert len(stubs) == options.text_instances + options.image_instances  # one stub per instance
        assert embed(grpcclient.InferenceServerClient(second.grpc_url), "clip_text", [b"hi"]).shape[0] == 1
        second.stop()
    assert not [pid for pid in stubs if Path(f"/proc/{pid}").exists()]


def test_dies_before_ready_is_a_clear_error(served: Served, tmp_path: Path) -> None:
    broken = tmp_path / "repo"
    (broken / "clip_text" / "1").mkdir(parents=True)
    (broken / "clip_text" / "config.pbtxt").write_text((served.repo / "clip_text" / "config.pbtxt").read_text())
    (broken / "clip_text" / "1" / "model.py").write_text(
        "class TritonPythonModel:\n    def initialize(self, args):\n        raise RuntimeError('weights are gone')\n"
    )
    with pytest.raises(triton_process.TritonStartError, match="weights are gone"):
        triton_process.start(broken, tmp_path / "work", timeout=60)


def test_missing_tritonserver_is_a_clear_error(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(triton_process.TritonNotFoundError, match="nvidia-pytriton"):
        triton_process.start(served.repo, tmp_path)
    missing = triton_process.TritonInstall(
        binary=tmp_path / "tritonserver", python_backend=tmp_path, stub=tmp_path / "stub", libs=tmp_path
    )
    with pytest.raises(triton_process.TritonNotFoundError, match="tritonserver"):
        triton_process.TritonProcess(served.repo, tmp_path, install=missing).start()
