"""``vsearch admin``: argument parsing, the tables and JSON rendered from router.moves domain
objects, ``--watch`` (a line per change, stops when finished), and each subcommand through
``cli.main.main`` against a fake AdminService stub (no server): output and exit codes."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from vectorsearch_client import Client

from cli import admin
from cli.common import CliError
from cli.main import build_parser, main
from router.moves import Kind, MovePlan, MoveStatus, RebalanceStatus, State
from server import convert
from vsproto.v1 import admin_service_pb2 as admin_pb


def status(state: State = State.COPYING, **kw: Any) -> RebalanceStatus:
    values: dict[str, Any] = dict(
        rebalance_id=7,
        kind=Kind.ADD,
        state=state,
        from_version=3,
        to_version=0,
        moves=[
            MoveStatus("s1", "s4", state, 1000, 250, 12, 4.5),
            MoveStatus("s2", "s4", state, 800, 800, 0, 125.0, error="retrying: source busy"),
        ],
        shard="s4",
        error="",
        started_at=1_700_000_000.0,
        updated_at=1_700_000_004.5,
        elapsed_s=4.5,
    )
    values.update(kw)
    return RebalanceStatus(**values)


PLAN = [MovePlan("s1", "s4", 21, {"images": 900, "docs": 100}), MovePlan("s2", "s4", 17, {"images": 800})]


# ---------------------------------------------------------------------------------- parsing


def parse(*argv: str) -> Any:
    return build_parser().parse_args(["--address", "10.0.0.1:7000", "admin", *argv])


def test_add_shard_arguments() -> None:
    args = parse("add-shard", "s4", "10.0.0.4:7001", "--weight", "2.5", "--no-rebalance")
    assert (args.command, args.admin_command) == ("admin", "add-shard")
    assert (args.shard_id, args.shard_address, args.weight, args.no_rebalance) == ("s4", "10.0.0.4:7001", 2.5, True)
    assert args.address == "10.0.0.1:7000"  # the server's, not the shard's
    args = parse("add-shard", "s4", "h:1")
    assert (args.weight, args.no_rebalance, args.json) == (1.0, False, False)


def test_other_arguments() -> None:
    assert parse("drain-shard", "s2").shard_id == "s2"
    assert parse("remove-shard", "s2", "--json").json
    assert parse("rebalance", "--dry-run").dry_run and not parse("rebalance").dry_run
    args = parse("rebalance-status", "--id", "3", "--watch", "--json")
    assert (args.id, args.watch, args.json) == (3, True, True)
    args = parse("rebalance-status")
    assert (args.id, args.watch) == (0, False)
    assert parse("abort-rebalance").admin_command == "abort-rebalance"


@pytest.mark.parametrize(
    "argv", [[], ["add-shard", "s4"], ["drain-shard"], ["rebalance-status", "--id", "x"], ["frobnicate"]]
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2


@pytest.mark.parametrize("weight", ["0", "-1", "nan"])
def test_bad_weight_is_refused_before_connecting(weight: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--address", "127.0.0.1:1", "admin", "add-shard", "s4", "h:1", f"--weight={weight}"]) == 2
    assert capsys.readouterr().err.startswith("vsearch: --weight must be a number > 0")
    with pytest.raises(CliError):
        admin.check_arguments(parse("add-shard", "s4", "h:1", f"--weight={-math.inf}"))


# ---------------------------------------------------------------------------------- rendering


def test_duration() -> None:
    assert [admin.duration(s) for s in (0, 4.54, 59.9, 60, 187, 3600, 7530)] == [
        "0.0s",
        "4.5s",
        "59.9s",
        "1m00s",
        "3m07s",
        "1h00m",
        "2h05m",
    ]


def test_plan_table() -> None:
    text = admin.format_plan(PLAN)
    lines = text.splitlines()
    assert lines[0] == "2 moves, 1800 items"
    assert lines[2].split() == ["move", "ranges", "items", "per", "collection"]
    assert lines[4].split() == ["s1", "→", "s4", "21", "1000", "docs=100,", "images=900"]
    assert lines[5].split() == ["s2", "→", "s4", "17", "800", "images=800"]
    assert "nothing to move" in admin.format_plan([])


def test_status_table() -> None:
    lines = admin.format_status(status()).splitlines()
    assert lines[0] == "rebalance 7 (add s4): copying, ring v3, 1050/1800 items copied, WAL lag 12, 4.5s"
    assert lines[2].split() == ["move", "state", "copied/planned", "WAL", "lag", "elapsed", "error"]
    assert lines[4].split() == ["s1", "→", "s4", "copying", "250/1000", "12", "4.5s", "-"]
    assert lines[5].split()[:7] == ["s2", "→", "s4", "copying", "800/800", "0", "2m05s"]
    assert lines[5].endswith("retrying: source busy")


def test_status_line_with_new_ring_and_error() -> None:
    s = status(State.ABORTED, kind=Kind.REBALANCE, shard="", to_version=4, error="target s4 died")
    line = admin.status_line(s)
    assert line.startswith("rebalance 7 (rebalance): aborted, ring v3 → v4, ")
    assert line.endswith(", error: target s4 died")
    assert admin.format_status(None) == "no rebalance has run on this cluster"


def test_json_uses_enum_values_and_totals() -> None:
    data = json.loads(admin.format_json(admin.status_dict(status(State.CATCHING_UP))))
    assert data["kind"] == "add" and data["state"] == "catching_up" and data["shard"] == "s4"
    assert data["moves"][1] == {
        "source": "s2",
        "target": "s4",
        "state": "catching_up",
        "items_planned": 800,
        "items_copied": 800,
        "wal_lag": 0,
        "elapsed_s": 125.0,
        "error": "retrying: source busy",
    }
    assert admin.status_dict(None) is None
    assert admin.plan_dict(PLAN[0]) == {
        "source": "s1",
        "target": "s4",
        "ranges": 21,
        "items": {"images": 900, "docs": 100},
        "total_items": 1000,
    }


@pytest.mark.parametrize("state", list(State))
def test_every_state_renders(state: State) -> None:
    assert f": {state.value}," in admin.format_status(status(state))
    assert json.loads(admin.format_json(admin.status_dict(status(state))))["state"] == state.value


# ---------------------------------------------------------------------------------- watch


def test_watch_emits_each_change_once_and_stops_when_finished() -> None:
    sequence = [
        status(State.COPYING),
        status(State.COPYING, elapsed_s=5.5),  # only the clock moved: no line
        status(State.CATCHING_UP),
        status(State.DONE, to_version=4),
        status(State.DONE, to_version=4),  # never polled
    ]
    polled: list[int] = []
    emitted: list[RebalanceStatus] = []
    sleeps: list[float] = []

    def poll(rebalance_id: int) -> RebalanceStatus | None:
        polled.append(rebalance_id)
        return sequence[len(polled) - 1]

    last = admin.watch(poll, 0, emitted.append, interval_s=1.0, sleep=sleeps.append)
    assert last is not None and last.state is State.DONE
    assert [s.state for s in emitted] == [State.COPYING, State.CATCHING_UP, State.DONE]
    assert polled == [0, 7, 7, 7]  # follows the rebalance it saw first
    assert sleeps == [1.0, 1.0, 1.0]


def test_watch_without_any_rebalance() -> None:
    emitted: list[RebalanceStatus] = []
    assert admin.watch(lambda i: None, 0, emitted.append, sleep=lambda s: None) is None and emitted == []


def test_watch_line() -> None:
    line = admin.watch_line(status())
    assert " rebalance 7 (add s4): copying," in line and line.endswith("[moves: 2 copying]")


# ---------------------------------------------------------------------------------- commands, fake stub


class FakeCall(grpc.RpcError, grpc.Call):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


class FakeAdmin:
    """Answers each RPC from ``replies`` (a message, a list consumed in order, or an exception)."""

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.requests: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        def rpc(request: Any, timeout: float | None = None) -> Any:
            self.requests.append((name, request))
            reply = self.replies[name]
            if isinstance(reply, list):
                reply = reply.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply

        return rpc


class FakeConnection:
    admin_stub: FakeAdmin

    def __init__(self, address: str, api_key: str | None = None) -> None:
        self.address = address
        self.api_key = api_key
        self.client = Client.from_stubs(admin=FakeConnection.admin_stub)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FakeConnection:
        return cls(args.address, getattr(args, "api_key", None))

    def open(self) -> FakeConnection:
        return self

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAdmin]:
    fake = FakeAdmin({})
    FakeConnection.admin_stub = fake
    monkeypatch.setattr(admin, "Connection", FakeConnection)
    monkeypatch.setattr(admin, "WATCH_INTERVAL_S", 0.0)
    yield fake


def run(*argv: str) -> int:
    return main(["--address", "127.0.0.1:1", "admin", *argv])


def test_add_shard_command(stub: FakeAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    stub.replies["AddShard"] = convert.add_shard_response_to_proto(status(State.PLANNED))
    assert run("add-shard", "s4", "10.0.0.4:7001", "--weight", "2") == 0
    name, request = stub.requests[0]
    assert name == "AddShard" and request == admin_pb.AddShardRequest(
        shard_id="s4", address="10.0.0.4:7001", weight=2.0, no_rebalance=False
    )
    out = capsys.readouterr().out
    assert out.startswith("shard s4 added at 10.0.0.4:7001 (weight 2)\nrebalance 7 (add s4): planned,")
    stub.replies["AddShard"] = admin_pb.AddShardResponse()
    assert run("add-shard", "s5", "h:1", "--no-rebalance", "--json") == 0
    assert stub.requests[1][1].no_rebalance
    assert json.loads(capsys.readouterr().out) == {"shard_id": "s5", "rebalance": None}


def test_rebalance_commands(stub: FakeAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    stub.replies["Rebalance"] = convert.rebalance_response_to_proto(PLAN, None)
    assert run("rebalance", "--dry-run") == 0
    assert stub.requests[-1][1].dry_run
    out = capsys.readouterr().out
    assert out.startswith("2 moves, 1800 items") and "(dry run: nothing started)" in out
    stub.replies["Rebalance"] = convert.rebalance_response_to_proto(PLAN, status(State.PLANNED))
    assert run("rebalance", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["total_items"] for m in data["moves"]] == [1000, 800] and data["rebalance"]["state"] == "planned"


def test_status_drain_remove_abort(stub: FakeAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    stub.replies["GetRebalanceStatus"] = convert.rebalance_status_response_to_proto(None)
    assert run("rebalance-status") == 0
    assert capsys.readouterr().out.strip() == "no rebalance has run on this cluster"
    assert run("rebalance-status", "--json", "--id", "9") == 0
    assert capsys.readouterr().out.strip() == "null" and stub.requests[-1][1].rebalance_id == 9
    stub.replies["DrainShard"] = convert.drain_shard_response_to_proto(status(kind=Kind.DRAIN, shard="s2"))
    assert run("drain-shard", "s2") == 0
    assert capsys.readouterr().out.startswith("draining shard s2\nrebalance 7 (drain s2): copying,")
    stub.replies["RemoveShard"] = admin_pb.RemoveShardResponse()
    assert run("remove-shard", "s2") == 0 and capsys.readouterr().out.strip() == "shard s2 removed"
    stub.replies["AbortRebalance"] = convert.abort_rebalance_response_to_proto(status(State.ABORTING))
    assert run("abort-rebalance", "--json") == 0
    assert json.loads(capsys.readouterr().out)["state"] == "aborting"


def test_watch_command(stub: FakeAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    to_proto = convert.rebalance_status_response_to_proto
    stub.replies["GetRebalanceStatus"] = [to_proto(status(State.COPYING)), to_proto(status(State.ABORTED))]
    assert run("rebalance-status", "--watch") == 1  # it ended aborted
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and ": copying," in lines[0] and ": aborted," in lines[1]
    stub.replies["GetRebalanceStatus"] = [to_proto(status(State.CLEANUP)), to_proto(status(State.DONE))]
    assert run("rebalance-status", "--watch", "--json") == 0
    assert [json.loads(line)["state"] for line in capsys.readouterr().out.splitlines()] == ["cleanup", "done"]


def test_a_refused_call_is_one_line_and_exit_2(stub: FakeAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    stub.replies["RemoveShard"] = FakeCall(grpc.StatusCode.FAILED_PRECONDITION, "shard 's2' holds 12 items")
    assert run("remove-shard", "s2") == 2
    err = capsys.readouterr().err
    assert err == "vsearch: remove-shard: FAILED_PRECONDITION: shard 's2' holds 12 items\n"


def test_an_unknown_state_from_a_newer_server_is_one_line(stub: FakeAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    reply = convert.rebalance_status_response_to_proto(status())
    reply.rebalance.state = 77  # type: ignore[assignment]
    stub.replies["GetRebalanceStatus"] = reply
    assert run("rebalance-status") == 2
    assert capsys.readouterr().err.startswith(
        "vsearch: rebalance-status: cannot read the reply: unknown rebalance state 77"
    )


def test_keys_commands(stub: FakeAdmin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    key = admin_pb.ApiKey(
        key_id="0123456789ab", name="ingest", role=admin_pb.API_KEY_ROLE_WRITE, collections=["docs"], created_at=1.0
    )
    secret = "vs_0123456789ab_" + "s" * 43
    stub.replies["CreateApiKey"] = admin_pb.CreateApiKeyResponse(key=key, api_key=secret)
    stub.replies["ListApiKeys"] = admin_pb.ListApiKeysResponse(keys=[key])
    stub.replies["RevokeApiKey"] = [admin_pb.RevokeApiKeyResponse(revoked=True), admin_pb.RevokeApiKeyResponse()]
    assert run("keys", "create", "ingest", "--role", "write", "--collection", "docs", "--items-per-s", "100") == 0
    out = capsys.readouterr().out
    assert secret in out and "not shown again" in out
    request = stub.requests[-1][1]
    assert (request.name, request.role, list(request.collections), request.items_per_s, request.requests_per_s) == (
        "ingest",
        admin_pb.API_KEY_ROLE_WRITE,
        ["docs"],
        100.0,
        0.0,
    )
    assert run("keys", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == [
        {
            "key_id": "0123456789ab",
            "name": "ingest",
            "role": "write",
            "collections": ["docs"],
            "requests_per_s": None,
            "items_per_s": None,
            "created_at": 1.0,
            "revoked_at": None,
        }
    ]
    assert run("keys", "list", "--all") == 0
    table_out = capsys.readouterr().out
    assert "0123456789ab" in table_out and secret not in table_out
    assert stub.requests[-1][1].include_revoked
    assert run("keys", "revoke", "0123456789ab") == 0 and capsys.readouterr().out.strip().endswith("revoked")
    assert run("keys", "revoke", "0123456789ab") == 0 and "already revoked" in capsys.readouterr().out
    stub.replies["ListApiKeys"] = FakeCall(grpc.StatusCode.PERMISSION_DENIED, "ListApiKeys needs the admin role")
    assert run("keys", "list") == 2
    assert capsys.readouterr().err.strip() == (
        "vsearch: keys list: PERMISSION_DENIED: ListApiKeys needs the admin role"
    )


def test_the_api_key_comes_from_the_flag_or_the_environment(
    stub: FakeAdmin, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str | None] = []

    class Recording(FakeConnection):
        def __init__(self, address: str, api_key: str | None = None) -> None:
            super().__init__(address, api_key)
            seen.append(api_key)

    monkeypatch.setattr(admin, "Connection", Recording)
    stub.replies["AbortRebalance"] = admin_pb.AbortRebalanceResponse()
    assert main(["--address", "127.0.0.1:1", "--api-key", "k1", "admin", "abort-rebalance"]) == 0
    monkeypatch.setenv("VSEARCH_API_KEY", "k2")
    assert main(["--address", "127.0.0.1:1", "admin", "abort-rebalance"]) == 0
    assert seen == ["k1", "k2"]
