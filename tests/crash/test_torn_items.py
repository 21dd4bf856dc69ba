"""No torn item, with clients that never retry: a single-node server (server and shard in one
process; metadata in the real Postgres, or SQLite) dies at random between the moment a write is
durable on its shard and the moment its SQL rows commit (fault point ``after_shard_write`` /
``after_shard_delete``, as abrupt as SIGKILL), and every other cycle also from a SIGKILL at a
random moment, while compactions are started over and over, so deaths land mid-write,
mid-commit and mid-compaction. Writers own disjoint ids, write each id's vector as a pure function of
(id, write number) with the write number in its metadata, and stop at their first failure.

After every restart, for every id: Get shows the vector and the metadata of one single write
(never a new vector with old metadata, never a vector without its metadata), that write is the
last acknowledged one or the one in flight when the server died, and a filtered search returns
only items whose own metadata matches, each with its own vector; Describe counts exactly the
items present; and the server repairs the SQL index of the interrupted writes, so the index holds
exactly the items present and a filtered search finds items by their current metadata. On the
real Postgres and on SQLite.

The same runs in the distributed shape (server + 2 shard processes), where a server or a shard
process is SIGKILLed in turn.

``VS_TORN_CYCLES`` sets the number of crash cycles (default 20 on Postgres, half that on SQLite
and in the distributed shape).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import sqlalchemy as sa

from core import schema
from testkit.clusterproc import ClusterProcess
from testkit.serverproc import SingleNodeProcess
from tests.pg import fresh_schema_url
from vsproto.v1 import admin_service_pb2 as admin_pb
from vsproto.v1 import admin_service_pb2_grpc as admin_grpc
from vsproto.v1 import search_service_pb2 as pb
from vsproto.v1 import search_service_pb2_grpc as pb_grpc
from vsproto.v1 import types_pb2

DIM = 8
WRITERS = 2
IDS_PER_WRITER = 60
BATCH = 6
CYCLES = int(os.environ.get("VS_TORN_CYCLES", "20"))
DELETED = -1


def vector_for(item: str, write: int) -> np.ndarray:
    seed = [write, *item.encode()]
    row = np.random.default_rng(seed).standard_normal(DIM)
    return (row / np.linalg.norm(row)).astype(np.float32)  # cosine: stored normalised


@dataclass
class Writer:
    ids: list[str]
    acked: dict[str, int] = field(default_factory=dict)  # id -> write number, or DELETED
    in_flight: dict[str, int] = field(default_factory=dict)


def run_writer(writer: Writer, stub: pb_grpc.SearchServiceStub, rng: random.Random, first_write: int) -> None:
    """Writes until the first failure (never retrying); records acknowledged and in-flight writes."""
    write = first_write
    while True:
        write += 1
        chosen = rng.sample(writer.ids, BATCH)
        delete = rng.random() < 0.2
        state = DELETED if delete else write
        writer.in_flight = dict.fromkeys(chosen, state)
        try:
            if delete:
                stub.Delete(pb.DeleteRequest(collection="items", ids=chosen), timeout=10)
            else:
                matrix = np.stack([vector_for(item, write) for item in chosen])
                request = pb.UpsertRequest(
                    collection="items",
                    vectors=types_pb2.Vectors(dimension=DIM, packed=matrix.tobytes(), rows=len(chosen)),
                )
                for item in chosen:
                    entry = request.items.add(id=item)
                    entry.metadata.uri = f"s3://bucket/{item}/{write}"
                    entry.metadata.tags.extend([f"write-{write}", f"parity-{write % 2}"])
                    entry.metadata.attributes["write"].int_value = write
                stub.Upsert(request, timeout=10)
        except grpc.RpcError:
            return  # the server died: this write may or may not have landed, and is never retried
        writer.acked.update(writer.in_flight)
        writer.in_flight = {}


def kill_quietly(pid: int) -> None:
    """SIGKILL, unless a fault point already ended that process."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def compact_until_dead(admin: admin_grpc.AdminServiceStub) -> None:
    """Starts compactions (folds, snapshots, log truncation) over and over, so that deaths land
    during them too; stops at the first failure."""
    while True:
        try:
            admin.Compact(admin_pb.CompactRequest(collection="items", wait=False), timeout=10)
        except grpc.RpcError:
            return
        time.sleep(0.05)


def check(stub: pb_grpc.SearchServiceStub, writers: list[Writer]) -> int:
    """Every id shows one write's (vector, metadata), the acknowledged or the in-flight one.
    Settles each writer's in-flight write: what the store shows is what it holds from now on."""
    present = 0
    for writer in writers:
        got = stub.Get(pb.GetRequest(collection="items", ids=writer.ids, include_vectors=True), timeout=30)
        found = {item.id: item for item in got.items}
        for item_id in writer.ids:
            allowed = {writer.acked.get(item_id, DELETED)}
            if item_id in writer.in_flight:
                allowed.add(writer.in_flight[item_id])
            item = found.get(item_id)
            if item is None:
                assert DELETED in allowed, f"{item_id}: acknowledged write {allowed} is missing"
                writer.acked[item_id] = DELETED
                continue
            present += 1
            assert item.metadata.attributes["write"].HasField("int_value"), f"{item_id}: a vector without metadata"
            write = item.metadata.attributes["write"].int_value
            assert write in allowed, f"{item_id}: shows write {write}, expected one of {allowed}"
            np.testing.assert_allclose(item.vector, vector_for(item_id, write), atol=1e-6, err_msg=f"{item_id}: torn")
            assert item.metadata.uri == f"s3://bucket/{item_id}/{write}", f"{item_id}: torn uri"
            assert sorted(item.metadata.tags) == sorted([f"write-{write}", f"parity-{write % 2}"])
            writer.acked[item_id] = write
        writer.in_flight = {}
    described = stub.DescribeCollection(pb.DescribeCollectionRequest(collection="items"), timeout=30)
    assert described.count == present, "Describe counts what the store holds"
    # a filtered search returns only items whose own metadata matches, each with its own vector
    query = types_pb2.Vectors(dimension=DIM, packed=vector_for("q", 0).tobytes())
    flt = pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value="parity-1")))
    reply = stub.Search(
        pb.SearchRequest(
            collection="items", queries=query, k=20, filter=flt, include_metadata=True, include_vectors=True
        ),
        timeout=30,
    )
    for hit in reply.results[0].hits:
        assert "parity-1" in hit.metadata.tags, f"{hit.id}: returned for a filter its metadata does not match"
        write = hit.metadata.attributes["write"].int_value
        np.testing.assert_allclose(hit.vector, vector_for(hit.id, write), atol=1e-6)
    return present


def index_rows(database: str) -> tuple[int, int]:
    """(item rows of the collection in the SQL index, pending-write markers)."""
    engine = sa.create_engine(database)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(sa.func.count()).select_from(schema.items).where(schema.items.c.collection == "items")
            ).scalar_one()
            pending = conn.execute(sa.select(sa.func.count()).select_from(schema.pending_writes)).scalar_one()
    finally:
        engine.dispose()
    return int(rows), int(pending)


def wait_for_repaired_index(
    stub: pb_grpc.SearchServiceStub, database: str, writers: list[Writer], present: int
) -> None:
    """The server repairs the index rows of interrupted writes: the SQL index ends up holding
    exactly the items present, and a filtered search finds items by their current metadata."""
    deadline = time.monotonic() + 60
    while index_rows(database) != (present, 0):
        assert time.monotonic() < deadline, f"index rows and markers {index_rows(database)}, {present} items present"
        time.sleep(0.2)
    sample = [(item, w) for writer in writers for item, w in writer.acked.items() if w != DELETED][:5]
    for item, write in sample:
        flt = pb.Filter(condition=pb.Condition(field="tags", eq=pb.AttributeValue(string_value=f"write-{write}")))
        query = types_pb2.Vectors(dimension=DIM, packed=vector_for(item, write).tobytes())
        reply = stub.Search(pb.SearchRequest(collection="items", queries=query, k=BATCH, filter=flt), timeout=30)
        assert item in {h.id for h in reply.results[0].hits}, f"{item}: not found by its own tag write-{write}"


def begin_cycle(stub: pb_grpc.SearchServiceStub, cycle: int, database: str, writers: list[Writer]) -> None:
    """The first cycle creates the collection; every later one checks what the last death left."""
    if cycle == 0:
        spec = types_pb2.CollectionSpec(name="items", dimension=DIM, metric=types_pb2.METRIC_COSINE)
        stub.CreateCollection(pb.CreateCollectionRequest(spec=spec))
        keep_sql_index(database, "items")
    else:
        wait_for_repaired_index(stub, database, writers, check(stub, writers))


def keep_sql_index(database: str, collection: str) -> None:
    """Makes the collection one created before payload-only collections, which keeps the SQL item
    index and its repair (what this test checks besides torn items). Before its first write, so
    the server has not cached the collection's kind yet."""
    engine = sa.create_engine(database)
    with engine.begin() as conn:
        conn.execute(schema.payload_only.delete().where(schema.payload_only.c.collection == collection))
    engine.dispose()


def write_until_death(
    stub: pb_grpc.SearchServiceStub,
    admin: admin_grpc.AdminServiceStub,
    writers: list[Writer],
    rng: random.Random,
    cycle: int,
    killer: threading.Timer | None,
) -> None:
    """Runs the writers and the compactor until they fail (a death), with ``killer`` armed."""
    threads = [
        threading.Thread(target=run_writer, args=(w, stub, random.Random(rng.random()), (cycle * 10 + i) * 1000))
        for i, w in enumerate(writers)
    ]
    threads.append(threading.Thread(target=compact_until_dead, args=(admin,)))
    if killer is not None:
        killer.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    if killer is not None:
        killer.cancel()


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("backend", "cycles"), [("postgres", CYCLES), ("sqlite", max(1, CYCLES // 2))])
def test_items_are_never_torn_when_the_server_dies_between_shard_and_sql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, cycles: int
) -> None:
    monkeypatch.setenv("VS_FAULTS", "after_shard_write:0.15,after_shard_delete:0.15")
    database = fresh_schema_url() if backend == "postgres" else f"sqlite:///{tmp_path / 'meta.db'}"
    flags = ("--database-url", database, "--repair-after-s", "0", "--repair-interval-s", "0.5")
    writers = [Writer([f"w{w}-{j}" for j in range(IDS_PER_WRITER)]) for w in range(WRITERS)]
    rng = random.Random(20261202)
    deaths = 0
    for cycle in range(cycles):
        server = SingleNodeProcess(tmp_path / "node", *flags)
        channel = grpc.insecure_channel(server.start())
        stub = pb_grpc.SearchServiceStub(channel)
        try:
            begin_cycle(stub, cycle, database, writers)
            assert server.proc is not None
            # Every other cycle also gets a SIGKILL at a random moment (mid-write, mid-compaction):
            # whichever comes first, it or a fault point, ends the cycle.
            delay = rng.uniform(0.05, 1.5)
            killer = threading.Timer(delay, server.proc.send_signal, (signal.SIGKILL,)) if cycle % 2 else None
            write_until_death(stub, admin_grpc.AdminServiceStub(channel), writers, rng, cycle, killer)
            deaths += server.proc.wait(timeout=60) != 0  # the writers stop only when it died
        finally:
            channel.close()
            server.stop()
    server = SingleNodeProcess(tmp_path / "node", *flags)
    channel = grpc.insecure_channel(server.start())
    try:
        stub = pb_grpc.SearchServiceStub(channel)
        present = check(stub, writers)
        wait_for_repaired_index(stub, database, writers, present)
    finally:
        channel.close()
        server.stop()
    assert deaths == cycles, "every cycle ends with the server dying (a fault point or SIGKILL)"
    assert present > 0


@pytest.mark.timeout(900)
def test_items_are_never_torn_in_a_cluster_when_any_process_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The distributed shape (server + 2 shard processes, Postgres): each cycle SIGKILLs the
    server, shard 0 or shard 1 in turn, at a random moment, while the fault points and
    compactions go on."""
    monkeypatch.setenv("VS_FAULTS", "after_shard_write:0.05,after_shard_delete:0.05")
    database = fresh_schema_url()
    flags = ("--repair-after-s", "0", "--repair-interval-s", "0.5")
    writers = [Writer([f"w{w}-{j}" for j in range(IDS_PER_WRITER)]) for w in range(WRITERS)]
    rng = random.Random(20261203)
    victims: list[str] = []
    for cycle in range(max(1, CYCLES // 2)):
        cluster = ClusterProcess(tmp_path / "cluster", *flags, shards=2, database_url=database)
        stub = cluster.start()
        try:
            begin_cycle(stub, cycle, database, writers)
            victim = ["server", "shard-0", "shard-1"][cycle % 3]
            victims.append(victim)
            assert cluster.proc is not None
            pid = cluster.proc.pid if victim == "server" else cluster.shard_pid(int(victim[-1]))
            killer = threading.Timer(rng.uniform(0.05, 1.0), kill_quietly, (pid,))
            write_until_death(stub, cluster.admin(), writers, rng, cycle, killer)
        finally:
            cluster.stop()  # also sweeps shards orphaned by a killed server
    cluster = ClusterProcess(tmp_path / "cluster", *flags, shards=2, database_url=database)
    stub = cluster.start()
    try:
        present = check(stub, writers)
        wait_for_repaired_index(stub, database, writers, present)
    finally:
        cluster.stop()
    assert present > 0 and set(victims) == {"server", "shard-0", "shard-1"}
