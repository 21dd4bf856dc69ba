"""The rebalancing edge of AdminService: router.moves domain types <-> proto (server/convert.py),
every State and Kind with its enum value, the checks of AddShard/DrainShard/RemoveShard input,
ClusterStatus with and without shard states, and the servicer over a fake RebalanceAdmin
(INVALID_ARGUMENT before the rebalancer is called, FAILED_PRECONDITION without one)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from core.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument
from router.moves import Kind, MovePlan, MoveStatus, RebalanceStatus, State
from server import convert
from server.query import ShardHealth
from vsproto.v1 import admin_service_pb2 as admin_pb


def move(state: State = State.COPYING, **kw: Any) -> MoveStatus:
    values: dict[str, Any] = dict(
        source="s1", target="s4", state=state, items_planned=500, items_copied=120, wal_lag=7, elapsed_s=3.25
    )
    values.update(kw)
    return MoveStatus(**values)


def rebalance(state: State = State.COPYING, kind: Kind = Kind.ADD, **kw: Any) -> RebalanceStatus:
    values: dict[str, Any] = dict(
        rebalance_id=42,
        kind=kind,
        state=state,
        from_version=5,
        to_version=0,
        moves=[move(state), move(state, source="s2", items_copied=500, wal_lag=0, error="slow disk")],
        shard="s4",
        error="",
        started_at=1_700_000_000.5,
        updated_at=1_700_000_010.25,
        elapsed_s=9.75,
    )
    values.update(kw)
    return RebalanceStatus(**values)


# ---------------------------------------------------------------------------------- enums


@pytest.mark.parametrize("state", list(State))
def test_every_state_has_its_proto_value_and_back(state: State) -> None:
    value = convert.state_to_proto(state)  # Internal if a State has no RebalanceState value
    assert value != admin_pb.REBALANCE_STATE_UNSPECIFIED
    assert admin_pb.RebalanceState.Name(value) == f"REBALANCE_STATE_{state.name}"
    assert convert.state_from_proto(value) is state


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_has_its_proto_value_and_back(kind: Kind) -> None:
    value = convert.kind_to_proto(kind)
    assert value != admin_pb.REBALANCE_KIND_UNSPECIFIED
    assert admin_pb.RebalanceKind.Name(value) == f"REBALANCE_KIND_{kind.name}"
    assert convert.kind_from_proto(value) is kind


def test_every_proto_value_but_unspecified_has_a_domain_value() -> None:
    states = {v for n, v in admin_pb.RebalanceState.items() if not n.endswith("_UNSPECIFIED")}
    kinds = {v for n, v in admin_pb.RebalanceKind.items() if not n.endswith("_UNSPECIFIED")}
    assert {convert.state_to_proto(s) for s in State} == states
    assert {convert.kind_to_proto(k) for k in Kind} == kinds


def test_a_state_missing_from_the_proto_is_internal_not_a_wrong_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(convert._STATE_TO_PROTO, State.FENCING)
    with pytest.raises(Internal, match="FENCING"):
        convert.state_to_proto(State.FENCING)


@pytest.mark.parametrize("value", [admin_pb.REBALANCE_STATE_UNSPECIFIED, 99])
def test_unspecified_or_unknown_state_is_invalid(value: int) -> None:
    with pytest.raises(InvalidArgument, match="rebalance state"):
        convert.state_from_proto(value)


@pytest.mark.parametrize("value", [admin_pb.REBALANCE_KIND_UNSPECIFIED, 99])
def test_unspecified_or_unknown_kind_is_invalid(value: int) -> None:
    with pytest.raises(InvalidArgument, match="rebalance kind"):
        convert.kind_from_proto(value)


# ---------------------------------------------------------------------------------- messages


def test_move_plan_round_trip_with_total() -> None:
    plan = MovePlan("s1", "s4", 37, {"images": 1200, "texts": 34})
    message = convert.move_plan_to_proto(plan)
    assert (message.source, message.target, message.ranges, message.total_items) == ("s1", "s4", 37, 1234)
    assert dict(message.items) == {"images": 1200, "texts": 34}
    wire = admin_pb.MovePlan.FromString(message.SerializeToString())
    assert convert.move_plan_from_proto(wire) == plan


@pytest.mark.parametrize("state", list(State))
def test_rebalance_status_round_trip(state: State) -> None:
    status = rebalance(state, to_version=6 if state is State.DONE else 0, error="x" if state is State.ABORTED else "")
    message = convert.rebalance_status_to_proto(status)
    assert message.from_ring_version == 5 and message.shard_id == "s4" and len(message.moves) == 2
    assert message.moves[1].error == "slow disk" and message.moves[0].wal_lag == 7
    wire = admin_pb.RebalanceStatus.FromString(message.SerializeToString())
    assert convert.rebalance_status_from_proto(wire) == status


def test_responses_leave_rebalance_unset_for_none() -> None:
    assert not convert.add_shard_response_to_proto(None).HasField("rebalance")
    assert not convert.rebalance_status_response_to_proto(None).HasField("rebalance")
    dry = convert.rebalance_response_to_proto([MovePlan("s1", "s4", 3, {"c": 1})], None)
    assert not dry.HasField("rebalance") and len(dry.moves) == 1
    assert convert.optional_rebalance_from_proto(dry) is None
    started = convert.rebalance_response_to_proto([], rebalance(kind=Kind.REBALANCE, shard=""))
    assert convert.optional_rebalance_from_proto(started) == rebalance(kind=Kind.REBALANCE, shard="")
    assert convert.drain_shard_response_to_proto(rebalance(kind=Kind.DRAIN)).rebalance.kind == (
        admin_pb.REBALANCE_KIND_DRAIN
    )
    assert convert.abort_rebalance_response_to_proto(rebalance(State.ABORTING)).rebalance.state == (
        admin_pb.REBALANCE_STATE_ABORTING
    )


HEALTH = [
    ShardHealth("s1", "h1:1", 1.0, True, {"images": 10}),
    ShardHealth("s4", "h4:1", 2.0, False, {}, "unreachable"),
]


def test_cluster_status_as_before_without_rebalancing() -> None:
    reply = convert.cluster_status_to_proto(7, HEALTH)
    assert reply.ring_version == 7 and [s.state for s in reply.shards] == ["", ""]
    assert not reply.HasField("rebalance")
    assert dict(reply.shards[0].collection_counts) == {"images": 10} and reply.shards[1].error == "unreachable"


def test_cluster_status_with_states_and_the_running_rebalance() -> None:
    reply = convert.cluster_status_to_proto(
        7, HEALTH, shard_states={"s1": "active", "s4": "joining", "gone": "drained"}, rebalance=rebalance()
    )
    assert [(s.shard_id, s.state) for s in reply.shards] == [("s1", "active"), ("s4", "joining")]
    assert reply.rebalance.rebalance_id == 42 and reply.rebalance.state == admin_pb.REBALANCE_STATE_COPYING


# ---------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("address", ["127.0.0.1:7001", "shard-4.internal:443", "[::1]:7001", "localhost:1", "h:65535"])
def test_good_addresses(address: str) -> None:
    assert convert.shard_address_from_proto(address) == address


@pytest.mark.parametrize(
    "address",
    ["", "host", "host:", ":7001", "host:0", "host:65536", "host:http", "host:７", "a b:1", "dns:///h:1", "h\x00:1"],
)
def test_bad_addresses(address: str) -> None:
    with pytest.raises(InvalidArgument):
        convert.shard_address_from_proto(address)


@pytest.mark.parametrize("weight, expected", [(0.0, 1.0), (2.5, 2.5), (1e-3, 1e-3)])
def test_weights(weight: float, expected: float) -> None:
    assert convert.shard_weight_from_proto(weight) == expected


@pytest.mark.parametrize("weight", [-1.0, math.nan, math.inf, -math.inf])
def test_bad_weights(weight: float) -> None:
    with pytest.raises(InvalidArgument, match="weight"):
        convert.shard_weight_from_proto(weight)


@pytest.mark.parametrize("shard_id", ["", "a\x00b", "x" * (convert.MAX_SHARD_ID_BYTES + 1)])
def test_bad_shard_ids(shard_id: str) -> None:
    with pytest.raises(InvalidArgument, match="shard_id"):
        convert.shard_id_from_proto(shard_id)


def test_add_shard_request() -> None:
    request = admin_pb.AddShardRequest(shard_id="s4", address="h:1")
    assert convert.add_shard_from_proto(request) == ("s4", "h:1", 1.0, True)
    request = admin_pb.AddShardRequest(shard_id="s4", address="h:1", weight=3, no_rebalance=True)
    assert convert.add_shard_from_proto(request) == ("s4", "h:1", 3.0, False)


# ---------------------------------------------------------------------------------- the servicer


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def is_active(self) -> bool:
        return True

    def time_remaining(self) -> float:
        return 10.0

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted()

    def set_trailing_metadata(self, metadata: Any) -> None:
        pass


class FakeRebalancer:
    """Records calls; ``running`` is what status(0) returns."""

    def __init__(self, running: RebalanceStatus | None = None, error: Exception | None = None) -> None:
        self.calls: list[Any] = []
        self.running = running
        self.error = error
        self.moves = [MovePlan("s1", "s4", 12, {"images": 40})]
        self.refuse_start: Exception | None = None

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        if self.error is not None:
            raise self.error

    def add_shard(self, shard_id: str, address: str, weight: float, start: bool = True) -> RebalanceStatus | None:
        self._record("add_shard", shard_id, address, weight, start)
        return rebalance() if start else None

    def drain_shard(self, shard_id: str) -> RebalanceStatus:
        self._record("drain_shard", shard_id)
        return rebalance(kind=Kind.DRAIN)

    def remove_shard(self, shard_id: str) -> None:
        self._record("remove_shard", shard_id)

    def plan(self) -> list[MovePlan]:
        self._record("plan")
        return self.moves

    def rebalance(self) -> RebalanceStatus:
        self._record("rebalance")
        if self.refuse_start is not None:
            raise self.refuse_start
        return rebalance(State.PLANNED, Kind.REBALANCE, shard="")

    def status(self, rebalance_id: int = 0) -> RebalanceStatus | None:
        self._record("status", rebalance_id)
        return self.running

    def abort(self) -> RebalanceStatus:
        self._record("abort")
        return rebalance(State.ABORTING)

    def shard_states(self) -> dict[str, str]:
        return {"s1": "active", "s4": "joining"}


def servicer(rebalancer: FakeRebalancer | None) -> Any:
    from server.service import AdminServicer

    topology = SimpleNamespace(load=lambda: SimpleNamespace(ring_version=7))
    engine = SimpleNamespace(shard_health=lambda topology, timeout: HEALTH)
    return AdminServicer(topology, engine, 0.5, rebalancer=rebalancer)  # type: ignore[arg-type]


def call(target: Any, method: str, request: Any) -> tuple[Any, FakeContext]:
    context = FakeContext()
    try:
        return getattr(target, method)(request, context), context
    except Aborted:
        return None, context


REQUESTS = [
    ("AddShard", admin_pb.AddShardRequest(shard_id="s4", address="h:1")),
    ("DrainShard", admin_pb.DrainShardRequest(shard_id="s1")),
    ("RemoveShard", admin_pb.RemoveShardRequest(shard_id="s1")),
    ("Rebalance", admin_pb.RebalanceRequest(dry_run=True)),
    ("GetRebalanceStatus", admin_pb.GetRebalanceStatusRequest()),
    ("AbortRebalance", admin_pb.AbortRebalanceRequest()),
]


@pytest.mark.parametrize("method, request_", REQUESTS)
def test_without_a_rebalancer_every_topology_rpc_is_failed_precondition(method: str, request_: Any) -> None:
    reply, context = call(servicer(None), method, request_)
    assert reply is None and context.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "rebalancing is not available" in context.details


@pytest.mark.parametrize(
    "method, request_",
    [
        ("AddShard", admin_pb.AddShardRequest(shard_id="", address="h:1")),
        ("AddShard", admin_pb.AddShardRequest(shard_id="s4", address="nohost")),
        ("AddShard", admin_pb.AddShardRequest(shard_id="s4", address="h:1", weight=-2)),
        ("AddShard", admin_pb.AddShardRequest(shard_id="s4", address="h:1", weight=math.nan)),
        ("DrainShard", admin_pb.DrainShardRequest()),
        ("RemoveShard", admin_pb.RemoveShardRequest()),
    ],
)
def test_bad_input_is_invalid_argument_before_the_rebalancer_is_called(method: str, request_: Any) -> None:
    fake = FakeRebalancer()
    reply, context = call(servicer(fake), method, request_)
    assert reply is None and context.code == grpc.StatusCode.INVALID_ARGUMENT and fake.calls == []


def test_the_rpcs_call_the_rebalancer() -> None:
    fake = FakeRebalancer()
    target = servicer(fake)
    reply, _ = call(target, "AddShard", admin_pb.AddShardRequest(shard_id="s4", address="h:1"))
    assert fake.calls[-1] == ("add_shard", "s4", "h:1", 1.0, True) and reply.rebalance.rebalance_id == 42
    reply, _ = call(target, "AddShard", admin_pb.AddShardRequest(shard_id="s5", address="h:2", no_rebalance=True))
    assert fake.calls[-1] == ("add_shard", "s5", "h:2", 1.0, False) and not reply.HasField("rebalance")
    reply, _ = call(target, "DrainShard", admin_pb.DrainShardRequest(shard_id="s1"))
    assert fake.calls[-1] == ("drain_shard", "s1") and reply.rebalance.kind == admin_pb.REBALANCE_KIND_DRAIN
    reply, _ = call(target, "RemoveShard", admin_pb.RemoveShardRequest(shard_id="s1"))
    assert fake.calls[-1] == ("remove_shard", "s1") and reply == admin_pb.RemoveShardResponse()
    reply, _ = call(target, "GetRebalanceStatus", admin_pb.GetRebalanceStatusRequest(rebalance_id=3))
    assert fake.calls[-1] == ("status", 3) and not reply.HasField("rebalance")
    reply, _ = call(target, "AbortRebalance", admin_pb.AbortRebalanceRequest())
    assert fake.calls[-1] == ("abort",) and reply.rebalance.state == admin_pb.REBALANCE_STATE_ABORTING


def test_rebalance_dry_run_plans_only_and_a_real_one_starts() -> None:
    fake = FakeRebalancer()
    target = servicer(fake)
    reply, _ = call(target, "Rebalance", admin_pb.RebalanceRequest(dry_run=True))
    assert fake.calls == [("plan",)] and not reply.HasField("rebalance") and reply.moves[0].total_items == 40
    reply, _ = call(target, "Rebalance", admin_pb.RebalanceRequest())
    assert fake.calls[1:] == [("plan",), ("rebalance",)] and reply.rebalance.kind == admin_pb.REBALANCE_KIND_REBALANCE
    fake.refuse_start = FailedPrecondition("nothing to move")  # the rebalancer decides, the status says so
    reply, context = call(target, "Rebalance", admin_pb.RebalanceRequest())
    assert reply is None and context.code == grpc.StatusCode.FAILED_PRECONDITION and fake.calls[-1] == ("rebalance",)


def test_rebalancer_errors_keep_their_status() -> None:
    fake = FakeRebalancer(error=AlreadyExists("shard 's4' exists"))
    reply, context = call(servicer(fake), "AddShard", admin_pb.AddShardRequest(shard_id="s4", address="h:1"))
    assert reply is None and context.code == grpc.StatusCode.ALREADY_EXISTS and "s4" in context.details


def test_cluster_status_shows_states_and_only_a_running_rebalance() -> None:
    reply, _ = call(servicer(None), "ClusterStatus", admin_pb.ClusterStatusRequest())
    assert reply.ring_version == 7 and [s.state for s in reply.shards] == ["", ""]
    assert not reply.HasField("rebalance")
    fake = FakeRebalancer(running=rebalance(State.CATCHING_UP))
    reply, _ = call(servicer(fake), "ClusterStatus", admin_pb.ClusterStatusRequest())
    assert [s.state for s in reply.shards] == ["active", "joining"]
    assert fake.calls == [("status", 0)] and reply.rebalance.state == admin_pb.REBALANCE_STATE_CATCHING_UP
    fake.running = rebalance(State.DONE, to_version=8)
    reply, _ = call(servicer(fake), "ClusterStatus", admin_pb.ClusterStatusRequest())
    assert not reply.HasField("rebalance")
