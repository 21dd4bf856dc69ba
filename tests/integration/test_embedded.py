"""The embedded shape (issue #19 item 5): ``vectorsearch_client.open(path)``, the engine in the
caller's process. The SDK quick start's operations answer as a real single-node server over the
same data (id for id); recall@10 against brute force; every acknowledged write survives a SIGKILL
of the process that made it; one process owns a directory at a time; bad input raises the
exceptions the gRPC client raises; close stops the background threads and releases the
directory; the asyncio variant (open_async); with a Triton serving the seeded random CLIP,
ingestion (client streams) and search by text and image. All data seeded."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import vectorsearch_client as vs
from vectorsearch_client import Client, EmbeddedClient, F

from clipmodel import triton_process
from testkit.clipdata import pictures
from testkit.datasets import data_and_queries, unit_rows
from testkit.serverproc import SingleNodeProcess
from testkit.truth import exact_top_k, recall_at_k
from tests.conftest import ClipRepo

REPO = Path(__file__).resolve().parents[2]
DIM = 16
N = 300


def dataset(seed: int = 7) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = [f"item-{i}" for i in range(N)]
    metadata: list[dict[str, Any]] = [
        {
            "uri": f"file:///data/{i}.jpg",
            "tags": ["even" if i % 2 == 0 else "odd", *(["red"] if i % 3 == 0 else [])],
            "attributes": {"n": i, "kind": "photo" if i % 5 else "drawing", "score": i / 10},
        }
        for i in range(N)
    ]
    return ids, vectors, metadata


FILTERS = [
    None,
    F.tag("even") & F.attr("n").range(10, 200),
    F.tag("red") | ~F.attr("kind").eq("photo"),
    F.attr("score").lt(5.0) & F.attr("n").isin([1, 2, 3, 4, 5, 40, 41]),
]


def child_env() -> dict[str, str]:
    """The environment of a child Python that imports this checkout's server and SDK."""
    paths = [str(REPO), str(REPO / "clients" / "python" / "src"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


@pytest.fixture(scope="module")
def server_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = SingleNodeProcess(tmp_path_factory.mktemp("embedded-vs-server"))
    try:
        yield server.start(timeout=60)
    finally:
        server.stop()


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedClient]:
    with vs.open(tmp_path / "db", timeout=20.0) as client:
        yield client


def quick_start(client: Client, name: str) -> list[Any]:
    """The SDK quick start and README operations, recording every answer."""
    ids, vectors, metadata = dataset()
    out: list[Any] = []
    out.append(client.create_collection(name, DIM, metric="l2", m=16, ef_construction=100))
    out.append(client.create_collection(name, DIM, metric="l2", m=16, ef_construction=100))
    out.append(client.upsert(name, ids[:200], vectors[:200], metadata[:200]))
    out.append(client.bulk_upsert(name, ids[200:], vectors[200:], metadata[200:], batch_size=40, progress=False))
    info = client.describe_collection(name)
    out.append((info.name, info.dimension, info.metric, info.m, info.ef_construction, info.count))
    out.append([c.name for c in client.list_collections() if c.name == name])
    out.append(client.get(name, ["item-3", "nope", "item-4"], include_vectors=True))
    queries = np.random.default_rng(1).standard_normal((6, DIM)).astype(np.float32)

    def searches() -> list[Any]:
        found: list[Any] = []
        for flt in FILTERS:
            for query in queries:
                hits = client.search(name, query, k=7, ef=400, filter=flt)
                found.append([(h.id, round(h.distance, 3), h.metadata) for h in hits])
        found.append([h.id for h in client.search_by_id(name, "item-0", k=5, ef=400, include_metadata=False)])
        return found

    out += searches()  # the items in the delta layer (exact)
    out.append(sorted(s.count for s in client.compact(name)))
    out += searches()  # now in the graph
    out.append(client.delete(name, ["item-0", "item-1", "missing"]))
    out.append(client.get(name, ["item-0", "item-1"]).missing_ids)
    out.append(client.describe_collection(name).count)
    out.append(client.drop_collection(name))
    out.append(client.drop_collection(name))
    return out


def test_quick_start_answers_as_the_server(embedded: EmbeddedClient, server_address: str) -> None:
    with Client(server_address, timeout=20.0) as remote:
        expected = quick_start(remote, "quick")
    got = quick_start(embedded, "quick")
    assert len(got) == len(expected)
    for index, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        if isinstance(mine, vs.GetResult):
            assert mine.missing_ids == theirs.missing_ids
            assert [(i.id, i.metadata) for i in mine.items] == [(i.id, i.metadata) for i in theirs.items]
            for a, b in zip(mine.items, theirs.items, strict=True):
                assert a.vector is not None and b.vector is not None
                np.testing.assert_array_equal(a.vector, b.vector)
        else:
            assert mine == theirs, f"answer {index} differs"
    # and the searches found what brute force finds (same ids, so both did)
    _, vectors, _ = dataset()
    query = np.random.default_rng(1).standard_normal((6, DIM)).astype(np.float32)[0]
    truth = exact_top_k(vectors, query[None, :], 7, metric="l2")[0]
    assert [h[0] for h in got[7]] == [f"item-{i}" for i in truth]


def test_recall_at_10_against_brute_force(embedded: EmbeddedClient) -> None:
    n, dim = 4000, 64
    base, queries = data_and_queries(n, 200, dim, seed=19)
    base, queries = unit_rows(base), unit_rows(queries)
    embedded.create_collection("recall", dim, metric="inner_product", m=16, ef_construction=200)
    embedded.bulk_upsert("recall", [str(i) for i in range(n)], base, batch_size=1000, progress=False)
    stats = embedded.compact("recall", timeout=300)
    assert [(s.count, s.graph_elements, s.delta_size) for s in stats] == [(n, n, 0)]
    truth = exact_top_k(base, queries, 10, metric="ip")
    found = [[int(h.id) for h in embedded.search("recall", q, k=10, ef=64, include_metadata=False)] for q in queries]
    recall = recall_at_k(truth, found)
    assert recall >= 0.95, recall


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import vectorsearch_client as vs

    client = vs.open(sys.argv[1])
    client.create_collection("durable", 8, metric="l2")
    print("open", flush=True)
    rng = np.random.default_rng(5)
    batch = 0
    while True:
        ids = [f"b{batch}-{i}" for i in range(20)]
        client.upsert("durable", ids, rng.standard_normal((20, 8)).astype(np.float32),
                      [{"attributes": {"batch": batch}}] * 20)
        print("acked", batch, flush=True)  # only after upsert returned
        batch += 1
    """
)


def test_acknowledged_writes_survive_sigkill_and_the_lock_is_released(tmp_path: Path) -> None:
    path = tmp_path / "db"
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: list[int] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "open", proc.stderr.read() if proc.stderr else ""
        # the child owns the directory: opening it here fails with the owner's pid
        with pytest.raises(vs.DirectoryLocked, match=f"pid {proc.pid}"):
            vs.open(path)
        deadline = time.monotonic() + 60
        while len(acked) < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "child ended"
            acked.append(int(line.split()[1]))
        proc.send_signal(signal.SIGKILL)  # mid-write: it keeps upserting until killed
        # everything it printed after the last read is acknowledged too
        rest, _ = proc.communicate(timeout=30)
        acked += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("acked")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(acked) >= 40
    with vs.open(path) as client:  # the kernel released the dead child's lock
        ids = [f"b{b}-{i}" for b in acked for i in range(20)]
        got = client.get("durable", ids)
        assert got.missing_ids == []
        assert {item.metadata.attributes["batch"] for item in got.items} == set(acked)
        assert (client.describe_collection("durable").count or 0) >= len(ids)
        assert len(client.search("durable", np.zeros(8), k=5)) == 5


def test_one_owner_per_directory(tmp_path: Path) -> None:
    path = tmp_path / "db"
    first = vs.open(path)
    with pytest.raises(vs.DirectoryLocked, match="one process owns a directory at a time"):
        vs.open(path)
    with pytest.raises(vs.DirectoryLocked):
        vs.open(str(path) + "/")  # the same directory by another name
    first.create_collection("c", 4)
    first.upsert("c", ["a"], np.ones((1, 4), dtype=np.float32))
    first.close()
    first.close()  # idempotent
    assert first.closed
    with pytest.raises(ValueError, match="closed"):
        first.list_collections()
    with vs.open(path) as second:  # released by close
        assert second.get("c", ["a"]).missing_ids == []
    assert second.closed


def test_close_stops_the_background_threads(tmp_path: Path) -> None:
    def ours() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name in ("compactor", "index-repair") and t.is_alive()]

    before = set(ours())
    client = vs.open(tmp_path / "db")
    assert len(set(ours()) - before) == 2
    client.close()
    assert set(ours()) - before == set()


def bad_calls() -> list[tuple[str, Callable[[Client], Any]]]:
    one = np.ones((1, DIM), dtype=np.float32)
    return [
        ("upsert of a wrong dimension", lambda c: c.upsert("errs", ["x"], np.ones((1, DIM + 3), dtype=np.float32))),
        ("search of a wrong dimension", lambda c: c.search("errs", np.ones(DIM - 1), k=3)),
        ("unknown collection: search", lambda c: c.search("no-such-collection", one)),
        ("unknown collection: upsert", lambda c: c.upsert("no-such-collection", ["x"], one)),
        ("unknown collection: get", lambda c: c.get("no-such-collection", ["x"])),
        ("unknown collection: describe", lambda c: c.describe_collection("no-such-collection")),
        ("unknown item: search_by_id", lambda c: c.search_by_id("errs", "nope")),
        ("k of 0", lambda c: c.search("errs", one, k=0)),
        ("an empty id", lambda c: c.upsert("errs", [""], one)),
        ("a bad collection name", lambda c: c.create_collection("no spaces allowed", DIM)),
        ("another spec under the same name", lambda c: c.create_collection("errs", DIM + 1)),
        ("a filter of the wrong type", lambda c: c.search("errs", one, filter=F.attr("n").eq("text"))),
        ("text search without a model", lambda c: c.search("errs", text="a red bicycle")),
        ("ingestion without a model (a stream)", lambda c: c.ingest_texts("errs", ["a red bicycle"])),
        ("a stream naming no collection", lambda c: c.bulk_upsert("", ["x"], one, progress=False)),
        ("rebalancing", lambda c: c.rebalance()),
    ]


def failure(call: Callable[[Client], Any], client: Client) -> tuple[type[BaseException], str] | None:
    try:
        call(client)
    except vs.VectorSearchError as exc:
        return type(exc), exc.code.name
    return None


def test_bad_input_raises_what_the_grpc_client_raises(embedded: EmbeddedClient, server_address: str) -> None:
    with Client(server_address, timeout=20.0) as remote:
        for client in (remote, embedded):
            client.create_collection("errs", DIM)
            client.upsert("errs", ["a"], np.ones((1, DIM), dtype=np.float32), [{"attributes": {"n": 1}}])
        try:
            for what, call in bad_calls():
                expected = failure(call, remote)
                assert expected is not None, f"{what}: the server accepted it"
                assert failure(call, embedded) == expected, what
        finally:
            remote.drop_collection("errs")
    with pytest.raises(vs.InvalidArgument, match="dimension"):
        embedded.upsert("errs", ["b"], np.ones((1, DIM + 1), dtype=np.float32))
    with pytest.raises(vs.NotFound):
        embedded.search("nowhere", np.ones(DIM))
    with pytest.raises(vs.FailedPrecondition, match="triton_url"):
        embedded.search("errs", text="hello")


def test_missing_server_package_is_a_clear_import_error(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["server"] = None  # as if only the SDK were installed
        import vectorsearch_client as vs
        try:
            vs.open(sys.argv[1])
        except ImportError as exc:
            print(exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "db")], env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert "pip install" in out.stdout and "server package" in out.stdout, out.stdout + out.stderr
    assert not (tmp_path / "db").exists()


def test_the_directory_is_served_by_the_single_node_server_afterwards(tmp_path: Path) -> None:
    """The layout is the single-node server's: DIR/meta.db and DIR/shard, so a directory grown
    embedded can be served as it is (``--database-url sqlite:///DIR/meta.db --local-shard
    DIR/shard``); never while the other has it open (both lock DIR/shard)."""
    ids, vectors, metadata = dataset(seed=3)
    server = SingleNodeProcess(tmp_path)
    with vs.open(tmp_path) as client:
        client.create_collection("moved", DIM)
        client.upsert("moved", ids, vectors, metadata)
        before = [h.id for h in client.search("moved", vectors[5], k=5, ef=400, filter=F.tag("odd"))]
        with pytest.raises(RuntimeError, match="exited with 2"):  # the shard is open here: it refuses
            server.start(timeout=60)
        assert "is open in another vectorsearch process" in server.log_tail()
    try:
        with Client(server.start(timeout=60), timeout=20.0) as remote:
            assert remote.describe_collection("moved").count == N
            assert [h.id for h in remote.search("moved", vectors[5], k=5, ef=400, filter=F.tag("odd"))] == before
            with pytest.raises(vs.DirectoryLocked):  # and the other way round
                vs.open(tmp_path)
    finally:
        server.stop()


def test_text_and_image_with_triton(tmp_path: Path, clip_repo: ClipRepo) -> None:
    triton = triton_process.TritonProcess(clip_repo.repo, tmp_path / "triton")
    triton.start(timeout=120)
    try:
        with vs.open(tmp_path / "db", timeout=30.0, triton_url=triton.grpc_url) as client:
            served = client.describe_embedding_model()
            assert (served.embedding_model, served.dimension) == (clip_repo.identity.id, clip_repo.identity.dim)
            client.create_collection("media", served.dimension)
            images = pictures(4, seed=5)
            result = client.ingest_images("media", [vs.ImageItem(data=d, metadata={"tags": ["pic"]}) for d in images])
            assert (result.ingested, result.failed) == (4, 0)
            hits = client.search("media", image=images[2], k=3, filter=F.tag("pic"))
            assert hits[0].id == result.items[2].id and hits[0].distance < 1e-4
            texts = ["a red bicycle by a wall", "a cat asleep on a sofa"]
            client.create_collection("captions", served.dimension)
            written = client.ingest_texts("captions", texts, batch_size=1)  # two messages on the stream
            assert written.ingested == 2
            assert client.search("captions", text=texts[1], k=2)[0].id == written.items[1].id
            with pytest.raises(vs.InvalidArgument):
                client.search("captions", text="", k=3)
    finally:
        triton.close()


def test_the_asyncio_variant(tmp_path: Path) -> None:
    ids, vectors, metadata = dataset(seed=5)
    queries = np.random.default_rng(2).standard_normal((8, DIM)).astype(np.float32)

    async def main() -> list[list[str]]:
        async with vs.open_async(tmp_path / "db", timeout=20.0) as client:
            assert await client.create_collection("a", DIM, metric="l2") is True
            assert await client.upsert("a", ids[:100], vectors[:100], metadata[:100]) == 100
            assert await client.bulk_upsert("a", ids[100:], vectors[100:], metadata[100:], progress=False) == N - 100
            with pytest.raises(vs.NotFound):
                await client.get("missing", ["x"])
            with pytest.raises(vs.InvalidArgument):
                await client.search("a", np.ones(DIM - 1), k=3)
            found = await asyncio.gather(  # concurrent calls, each in a worker thread
                *(client.search("a", q, k=5, ef=400, filter=F.tag("even")) for q in queries)
            )
        assert client.closed
        return [[h.id for h in hits] for hits in found]

    found = asyncio.run(main())
    with vs.open(tmp_path / "db") as sync:  # released by the async close; the same answers
        assert found == [[h.id for h in sync.search("a", q, k=5, ef=400, filter=F.tag("even"))] for q in queries]
    mask = np.arange(N) % 2 == 0
    rows = np.flatnonzero(mask)
    truth = [[f"item-{rows[j]}" for j in row] for row in exact_top_k(vectors[rows], queries, 5, metric="l2")]
    assert found == truth
