"""Hypothesis state machine over a real shard process, checked against a brute-force model.

Rules: upsert, delete, search, get, compact, and restart (SIGKILL, then recovery). Invariants:
no deleted or unknown id is ever returned; every returned distance is the distance to the
id's latest vector (so no superseded vector is returned); get returns the latest vectors; the
live count matches; recall@10 against exact search over the model is at least 0.95 overall.
"""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from testkit.shardproc import ShardProcess

DIM = 8
POOL = [f"id-{i}" for i in range(400)]
ids_strategy = st.lists(st.sampled_from(POOL), min_size=1, max_size=60)


def model_distances(metric: str, query: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    if metric == "l2":
        return ((matrix - query) ** 2).sum(axis=1)
    return 1.0 - matrix @ query


class ShardMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="vs-sm-")
        # a small delta threshold so background compactions interleave with the rules
        self.proc = ShardProcess(Path(self.tmp.name) / "shard", "--compact-delta-items", "64")
        self.client = self.proc.start()
        self.model: dict[str, np.ndarray] = {}
        self.hits = 0
        self.expected = 0
        self.metric = "l2"
        self.created = False

    @initialize(metric=st.sampled_from(["l2", "ip"]))
    def create(self, metric: str) -> None:
        self.metric = metric
        self.client.create_collection("sm", DIM, metric)
        self.created = True

    @rule(ids=ids_strategy, seed=st.integers(0, 2**32 - 1))
    def upsert(self, ids: list[str], seed: int) -> None:
        vectors = np.random.default_rng(seed).standard_normal((len(ids), DIM)).astype(np.float32)
        reply = self.client.upsert("sm", ids, vectors)
        for item, vector in zip(ids, vectors, strict=True):
            self.model[item] = vector  # last duplicate wins
        assert reply.upserted == len(set(ids))

    @rule(ids=ids_strategy)
    def delete(self, ids: list[str]) -> None:
        reply = self.client.delete("sm", ids)
        existing = {i for i in ids if i in self.model}
        assert reply.deleted == len(existing)
        for item in existing:
            del self.model[item]

    @rule(seed=st.integers(0, 2**32 - 1), k=st.sampled_from([1, 5, 10]))
    def search(self, seed: int, k: int) -> None:
        query = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        (result,) = self.client.search("sm", query, k)
        ids = [i for i, _ in result]
        assert len(set(ids)) == len(ids), "duplicate ids in one result"
        assert len(ids) == min(k, len(self.model))
        for item, distance in result:
            assert item in self.model, f"{item} is deleted or unknown but was returned"
            expected = model_distances(self.metric, query, self.model[item][None, :])[0]
            assert abs(distance - expected) <= 1e-3 * max(1.0, abs(expected)), f"{item}: stale vector"
        distances = [d for _, d in result]
        assert distances == sorted(distances)
        if self.model:
            names = list(self.model)
            exact = model_distances(self.metric, query, np.stack([self.model[n] for n in names]))
            truth = {names[i] for i in np.argsort(exact, kind="stable")[:k]}
            self.hits += len(truth & set(ids))
            self.expected += len(truth)

    @rule(ids=ids_strategy)
    def get(self, ids: list[str]) -> None:
        got = self.client.get("sm", ids)
        assert set(got) == {i for i in ids if i in self.model}
        for item, vector in got.items():
            np.testing.assert_array_equal(vector, self.model[item])

    @rule()
    def compact(self) -> None:
        reply = self.client.compact("sm", wait=True)
        event("compact rebuilt the graph" if reply.rebuilt else "compact folded the delta")

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def restart(self) -> None:
        self.client = self.proc.restart(signal.SIGKILL)
        event("restart")

    @invariant()
    def count_matches(self) -> None:
        if self.created:
            assert self.client.stats("sm").count == len(self.model)

    def teardown(self) -> None:
        self.proc.kill()
        self.tmp.cleanup()
        if self.expected >= 50:
            assert self.hits / self.expected >= 0.95, f"recall@k {self.hits / self.expected:.3f} < 0.95"


ShardMachine.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_shard_state_machine = ShardMachine.TestCase
