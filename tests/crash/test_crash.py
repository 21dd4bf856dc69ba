"""Crash test: SIGKILL a shard under concurrent writes, at random moments and mid-compaction.

Writers own disjoint ids (so each id's history is sequential) and record what was
acknowledged. Each vector is a pure function of (op number, id), so a torn or mixed write is
recognisable. After every restart: each id shows its last acknowledged state or the state of
the one write that was in flight when the process died; an in-flight batch is all-or-nothing;
searches return only present ids with their current vectors; the count matches.

``VS_CRASH_CYCLES`` sets the number of kill/restart cycles (default 30).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from testkit.shard_client import ShardClient
from testkit.shardproc import ShardProcess

DIM = 16
WRITERS = 3
IDS_PER_WRITER = 200
CYCLES = int(os.environ.get("VS_CRASH_CYCLES", "30"))

State = int | None  # op number that wrote the current vector, or None when absent/deleted


def vector_for(op: int, index: int) -> np.ndarray:
    return np.random.default_rng([op, index]).standard_normal(DIM).astype(np.float32)


@dataclass
class Ledger:
    """What the test knows: acknowledged states and the in-flight batch per writer."""

    acked: dict[str, State] = field(default_factory=dict)
    in_flight: dict[int, tuple[list[str], State]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    ops: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def writer_ids(writer: int) -> list[str]:
    return [f"w{writer}-{j}" for j in range(IDS_PER_WRITER)]


def index_of(item: str) -> int:
    writer, j = item[1:].split("-")
    return int(writer) * IDS_PER_WRITER + int(j)


def run_writer(writer: int, client: ShardClient, ledger: Ledger, op_base: int, stop: threading.Event) -> None:
    rng = random.Random(op_base + writer)
    ids = writer_ids(writer)
    op = op_base + writer * 1_000_000_000
    while not stop.is_set():
        op += 1
        batch = rng.sample(ids, rng.randint(1, 25))
        deleting = rng.random() < 0.25
        state: State = None if deleting else op
        ledger.in_flight[writer] = (batch, state)
        try:
            if deleting:
                client.delete("crash", batch)
            else:
                client.upsert("crash", batch, np.stack([vector_for(op, index_of(i)) for i in batch]))
        except grpc.RpcError as exc:
            if not stop.is_set() and exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                ledger.unexpected.append(f"{exc.code()}: {exc.details()}")
            return  # the process is gone (or going): this batch stays in flight
        except ValueError:  # the channel was closed after the kill, before this call went out
            return
        with ledger.lock:
            for item in batch:
                ledger.acked[item] = state
            ledger.ops += 1
        del ledger.in_flight[writer]


def verify(client: ShardClient, ledger: Ledger, universe: list[str]) -> dict[str, State]:
    """Checks the recovered shard against the ledger; returns the state of every id."""
    got = client.get("crash", universe)
    in_flight_items = {item: state for batch, state in ledger.in_flight.values() for item in batch}
    seen: dict[str, State] = {}
    for item in universe:
        allowed = {ledger.acked.get(item)}
        if item in in_flight_items:
            allowed.add(in_flight_items[item])
        vec = got.get(item)
        matches = [
            state
            for state in allowed
            if (state is None and vec is None)
            or (state is not None and vec is not None and np.array_equal(vec, vector_for(state, index_of(item))))
        ]
        assert matches, f"{item}: recovered {vec}, which is neither acknowledged state {allowed} (torn write?)"
        seen[item] = matches[0]
    for batch, state in ledger.in_flight.values():
        applied = [seen[i] == state for i in batch if ledger.acked.get(i) != state]
        assert all(applied) or not any(applied), f"in-flight batch applied partially: {applied}"
    present = [i for i in universe if seen[i] is not None]
    assert client.stats("crash").count == len(present)
    if present:
        sample = present[:: max(1, len(present) // 20)]
        queries = np.stack([vector_for(seen[i], index_of(i)) for i in sample])  # type: ignore[arg-type]
        for item, hits in zip(sample, client.search("crash", queries, 5), strict=True):
            assert hits[0] == (item, 0.0), f"{item}: nearest is {hits[0]}"
            for hit, _ in hits:
                assert seen[hit] is not None, f"search returned deleted id {hit}"
    return seen


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    rng = random.Random(20261122)
    env_pause = os.environ.get("VS_SHARD_FAULT_COMPACT_PAUSE_S")
    os.environ["VS_SHARD_FAULT_COMPACT_PAUSE_S"] = "0.15"
    proc = ShardProcess(tmp_path / "shard", "--compact-delta-items", "400", "--compact-age-s", "0.5")
    try:
        client = proc.start()
        client.create_collection("crash", DIM, "l2", ef_search=128)
        universe = [i for w in range(WRITERS) for i in writer_ids(w)]
        ledger = Ledger()
        mid_compaction = 0
        for cycle in range(CYCLES):
            stop = threading.Event()
            threads = [
                threading.Thread(target=run_writer, args=(w, client, ledger, cycle * 10_000_000, stop))
                for w in range(WRITERS)
            ]
            for t in threads:
                t.start()
            if cycle % 2:
                # kill while a compaction is running (it pauses twice, so it is easy to catch)
                client.compact("crash", wait=False)
                deadline = time.monotonic() + 5
                while not client.stats("crash").compacting and time.monotonic() < deadline:
                    time.sleep(0.01)
                compacting = client.stats("crash").compacting
                time.sleep(rng.uniform(0.0, 0.3))
            else:
                time.sleep(rng.uniform(0.05, 0.8))
                compacting = client.stats("crash").compacting
            mid_compaction += int(compacting)
            stop.set()
            proc.kill(signal.SIGKILL)
            for t in threads:
                t.join()
            assert ledger.unexpected == [], ledger.unexpected
            client = proc.start()
            seen = verify(client, ledger, universe)
            ledger.acked = dict(seen)
            ledger.in_flight.clear()
        assert ledger.ops > CYCLES * 10, f"only {ledger.ops} acknowledged writes: the test did not load the shard"
        assert mid_compaction >= CYCLES // 4, f"only {mid_compaction} kills landed during a compaction"
        print(
            f"crash test: {CYCLES} SIGKILL cycles, {ledger.ops} acknowledged batches, "
            f"{mid_compaction} kills during compaction"
        )
    finally:
        proc.kill()
        if env_pause is None:
            os.environ.pop("VS_SHARD_FAULT_COMPACT_PAUSE_S", None)
        else:
            os.environ["VS_SHARD_FAULT_COMPACT_PAUSE_S"] = env_pause
