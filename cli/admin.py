"""``vsearch admin ...``: the cluster's topology through AdminService (docs/rebalancing-api.md).

    vsearch admin add-shard ID HOST:PORT [--weight W] [--no-rebalance]
    vsearch admin drain-shard ID
    vsearch admin remove-shard ID
    vsearch admin rebalance [--dry-run]
    vsearch admin rebalance-status [--id N] [--watch]
    vsearch admin abort-rebalance
    vsearch admin keys create NAME --role read|write|admin [--collection C]... [--requests-per-s N] [--items-per-s N]
    vsearch admin keys list [--all]
    vsearch admin keys revoke ID

Contract: each subcommand is one RPC (``rebalance-status --watch`` polls GetRebalanceStatus
every second until the rebalance is done or aborted, printing a line per change). Plans and
statuses print as tables (per move: source → target, state, items copied/planned, WAL lag,
elapsed, error), or as JSON with ``--json`` (``--watch --json``: one object per line per
change). ``keys create`` prints the new key once (``--json``: ``{"key": {...}, "api_key": ...}``);
``keys list`` a table of ids, names, roles, collections, limits and times, never secrets (docs/api-keys.md).
Exit codes: 0 success; 1 ``rebalance-status --watch`` saw the rebalance end aborted;
2 an error as one line (the server's status code and message).

The calls go through the Python SDK (``vectorsearch_client``); its typed replies are converted
to ``router.moves`` domain types and rendered from those, so the rendering is tested without a
server.
"""

from __future__ import annotations

import argparse
import enum
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, TypeVar

import vectorsearch_client as sdk
from vectorsearch_client import UnreadableReply, VectorSearchError

from cli import table
from cli.common import CliError, Connection, call_error
from router.moves import Kind, MovePlan, MoveStatus, RebalanceStatus, State

WATCH_INTERVAL_S = 1.0
ROLES = ("read", "write", "admin")
T = TypeVar("T")
ARROW = "→"


# ---------------------------------------------------------------------------------- arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``admin`` subcommands (``args.admin_command``) on the ``admin`` parser ``p``."""
    sub = p.add_subparsers(dest="admin_command", required=True, metavar="ADMIN_COMMAND")

    add = sub.add_parser("add-shard", help="register a shard and move its share of the ring to it")
    add.add_argument("shard_id", metavar="ID")
    add.add_argument("shard_address", metavar="HOST:PORT", help="the shard's gRPC address")
    add.add_argument("--weight", type=float, default=1.0, help="its share of the ring relative to the others (1.0)")
    add.add_argument("--no-rebalance", action="store_true", help="only register it (start later with `rebalance`)")

    drain = sub.add_parser("drain-shard", help="move everything off a shard; it leaves the ring")
    drain.add_argument("shard_id", metavar="ID")

    remove = sub.add_parser("remove-shard", help="forget a shard that holds nothing (drained or never joined)")
    remove.add_argument("shard_id", metavar="ID")

    rebalance = sub.add_parser("rebalance", help="start the moves the ring implies (--dry-run: show them)")
    rebalance.add_argument("--dry-run", action="store_true", help="print the plan, start nothing")

    status = sub.add_parser("rebalance-status", help="where the running (or latest) rebalance stands")
    status.add_argument("--id", type=int, default=0, help="a rebalance id (default: the running or latest)")
    status.add_argument("--watch", action="store_true", help="poll every second until it is done or aborted")

    sub.add_parser("abort-rebalance", help="abort the running rebalance (rolls forward after the switch)")

    keys = sub.add_parser("keys", help="API keys: create, list, revoke (docs/api-keys.md)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="KEYS_COMMAND")
    create = keys_sub.add_parser("create", help="create an API key (printed once: store it)")
    create.add_argument("name", metavar="NAME", help="a label, e.g. ingest-job")
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument(
        "--collection", action="append", default=[], help="restrict the key to this collection (repeatable)"
    )
    create.add_argument("--requests-per-s", type=float, default=None, help="per-key request rate limit")
    create.add_argument("--items-per-s", type=float, default=None, help="per-key item rate limit")
    listing = keys_sub.add_parser("list", help="the API keys (never their secrets)")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    revoke = keys_sub.add_parser("revoke", help="revoke an API key (every server refuses it within 2 s)")
    revoke.add_argument("key_id", metavar="ID")

    for command in [*sub.choices.values(), *keys_sub.choices.values()]:
        if command is not keys:
            command.add_argument("--json", action="store_true", help="JSON instead of tables")


def check_arguments(args: argparse.Namespace) -> None:
    """What the server would refuse anyway, refused before connecting (CliError)."""
    if args.admin_command == "add-shard" and not args.weight > 0:  # also refuses NaN
        raise CliError(f"--weight must be a number > 0, not {args.weight}")
    if args.admin_command == "rebalance-status" and args.id < 0:
        raise CliError(f"--id must be >= 0, not {args.id}")


# ---------------------------------------------------------------------------------- calls


def _call(what: str, call: Callable[[], T]) -> T:
    """``call()``; a refused call, or a reply this client cannot read, as a one-line CliError."""
    try:
        return call()
    except VectorSearchError as exc:
        raise call_error(exc, what) from None
    except UnreadableReply as exc:  # e.g. a state this client does not know (a newer server)
        raise CliError(f"{what}: cannot read the reply: {exc}") from None


def move_status(m: sdk.MoveStatus) -> MoveStatus:
    return MoveStatus(
        m.source, m.target, State(m.state), m.items_planned, m.items_copied, m.wal_lag, m.elapsed_s, m.error
    )


def rebalance_of(s: sdk.RebalanceStatus | None) -> RebalanceStatus | None:
    """The domain status of the SDK's (None stays None)."""
    if s is None:
        return None
    return RebalanceStatus(
        rebalance_id=s.rebalance_id,
        kind=Kind(s.kind),
        state=State(s.state),
        from_version=s.from_ring_version,
        to_version=s.to_ring_version,
        moves=[move_status(m) for m in s.moves],
        shard=s.shard_id,
        error=s.error,
        started_at=s.started_at,
        updated_at=s.updated_at,
        elapsed_s=s.elapsed_s,
    )


def add_shard(conn: Connection, shard_id: str, address: str, weight: float, start: bool) -> RebalanceStatus | None:
    client = conn.client
    started = _call("add-shard", lambda: client.add_shard(shard_id, address, weight=weight, no_rebalance=not start))
    return rebalance_of(started)


def drain_shard(conn: Connection, shard_id: str) -> RebalanceStatus | None:
    client = conn.client
    return rebalance_of(_call("drain-shard", lambda: client.drain_shard(shard_id)))


def remove_shard(conn: Connection, shard_id: str) -> None:
    client = conn.client
    _call("remove-shard", lambda: client.remove_shard(shard_id))


def rebalance(conn: Connection, dry_run: bool) -> tuple[list[MovePlan], RebalanceStatus | None]:
    client = conn.client
    result = _call("rebalance", lambda: client.rebalance(dry_run=dry_run))
    plan = [MovePlan(m.source, m.target, m.ranges, dict(m.items)) for m in result.moves]
    return plan, rebalance_of(result.rebalance)


def rebalance_status(conn: Connection, rebalance_id: int = 0) -> RebalanceStatus | None:
    client = conn.client
    return rebalance_of(_call("rebalance-status", lambda: client.rebalance_status(rebalance_id)))


def abort_rebalance(conn: Connection) -> RebalanceStatus | None:
    client = conn.client
    return rebalance_of(_call("abort-rebalance", lambda: client.abort_rebalance()))


def create_key(conn: Connection, args: argparse.Namespace) -> sdk.CreatedApiKey:
    client = conn.client
    return _call(
        "keys create",
        lambda: client.create_api_key(
            args.name,
            args.role,
            collections=args.collection or None,
            requests_per_s=args.requests_per_s,
            items_per_s=args.items_per_s,
        ),
    )


def key_dict(k: sdk.ApiKey) -> dict[str, Any]:
    return dict(asdict(k), collections=list(k.collections) if k.collections is not None else None)


def when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def format_keys(keys: Sequence[sdk.ApiKey]) -> str:
    """The keys as a table (one row per key), never a secret."""
    if not keys:
        return "no API keys (the server runs open unless it has a bootstrap key)"
    rows = [
        [
            k.key_id,
            k.name,
            k.role,
            ", ".join(k.collections) if k.collections else "all",
            "/".join("-" if x is None else f"{x:g}" for x in (k.requests_per_s, k.items_per_s)),
            when(k.created_at),
            when(k.revoked_at),
        ]
        for k in keys
    ]
    return table.render(["id", "name", "role", "collections", "req/s / items/s", "created", "revoked"], rows)


def run_keys(conn: Connection, args: argparse.Namespace) -> tuple[Any, str]:
    """``vsearch admin keys ...``: the JSON value and the text to print."""
    client = conn.client
    if args.keys_command == "create":
        created = create_key(conn, args)
        k = created.key
        scope = f", collections {', '.join(k.collections)}" if k.collections else ""
        text = (
            f"API key {k.key_id} ({k.name}, {k.role}{scope}) created:\n\n    {created.api_key}\n\n"
            "Store it now: it is not shown again (the server keeps only its hash)."
        )
        return {"key": key_dict(k), "api_key": created.api_key}, text
    if args.keys_command == "list":
        keys = _call("keys list", lambda: client.list_api_keys(include_revoked=args.all))
        return [key_dict(k) for k in keys], format_keys(keys)
    revoked = _call("keys revoke", lambda: client.revoke_api_key(args.key_id))
    text = f"API key {args.key_id} revoked" if revoked else f"API key {args.key_id} was already revoked"
    return {"key_id": args.key_id, "revoked": revoked}, text


# ---------------------------------------------------------------------------------- rendering


def duration(seconds: float) -> str:
    """``4.2s``, ``3m07s``, ``2h05m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def format_plan(moves: Sequence[MovePlan]) -> str:
    """The plan as a table (one row per move), with a one-line summary above it."""
    if not moves:
        return "nothing to move: every shard holds the ranges the ring gives it"
    total = sum(m.total_items for m in moves)
    rows = [
        [
            f"{m.source} {ARROW} {m.target}",
            m.ranges,
            m.total_items,
            ", ".join(f"{c}={n}" for c, n in sorted(m.items.items())) or "-",
        ]
        for m in moves
    ]
    head = f"{len(moves)} moves, {total} items"
    return head + "\n\n" + table.render(["move", "ranges", "items", "per collection"], rows)


def status_line(s: RebalanceStatus) -> str:
    """One line: id, kind (and shard), state, ring versions, items copied, WAL lag, elapsed."""
    planned = sum(m.items_planned for m in s.moves)
    copied = sum(m.items_copied for m in s.moves)
    lag = sum(m.wal_lag for m in s.moves)
    kind = f"{s.kind.value} {s.shard}" if s.shard else s.kind.value
    ring = f"ring v{s.from_version} {ARROW} v{s.to_version}" if s.to_version else f"ring v{s.from_version}"
    line = (
        f"rebalance {s.rebalance_id} ({kind}): {s.state.value}, {ring}, {copied}/{planned} items copied, "
        f"WAL lag {lag}, {duration(s.elapsed_s)}"
    )
    return line + (f", error: {s.error}" if s.error else "")


def format_status(s: RebalanceStatus | None) -> str:
    """The status line, then one table row per move."""
    if s is None:
        return "no rebalance has run on this cluster"
    rows = [
        [
            f"{m.source} {ARROW} {m.target}",
            m.state.value,
            f"{m.items_copied}/{m.items_planned}",
            m.wal_lag,
            duration(m.elapsed_s),
            m.error or "-",
        ]
        for m in s.moves
    ]
    headers = ["move", "state", "copied/planned", "WAL lag", "elapsed", "error"]
    return status_line(s) + "\n\n" + table.render(headers, rows, right=[False, False, True, True, True, False])


def watch_line(s: RebalanceStatus) -> str:
    """A ``--watch`` line: the time, the status line and how many moves are in each state."""
    states = Counter(m.state.value for m in s.moves)
    moves = ", ".join(f"{n} {state}" for state, n in states.items())
    return f"{time.strftime('%H:%M:%S')} {status_line(s)}" + (f" [moves: {moves}]" if moves else "")


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def plan_dict(m: MovePlan) -> dict[str, Any]:
    return dict(asdict(m), total_items=m.total_items)


def status_dict(s: RebalanceStatus | None) -> dict[str, Any] | None:
    """The status as JSON-ready data (enums as their values); None for no rebalance."""
    return None if s is None else _plain(asdict(s))


def format_json(value: Any, *, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent)


# ---------------------------------------------------------------------------------- commands


def watch(
    poll: Callable[[int], RebalanceStatus | None],
    rebalance_id: int,
    emit: Callable[[RebalanceStatus], None],
    *,
    interval_s: float | None = None,
    sleep: Callable[[float], None] | None = None,
) -> RebalanceStatus | None:
    """Polls ``poll(id)`` every ``interval_s`` until the rebalance is finished, calling ``emit``
    for each status that differs from the last (ignoring the clocks); returns the last one
    (None when there never was a rebalance). Follows the rebalance first seen when ``id`` is 0.
    Defaults: WATCH_INTERVAL_S, time.sleep."""
    interval = WATCH_INTERVAL_S if interval_s is None else interval_s
    pause = time.sleep if sleep is None else sleep
    last: tuple[Any, ...] | None = None
    while True:
        s = poll(rebalance_id)
        if s is None:
            return None
        rebalance_id = s.rebalance_id
        key = (
            s.state,
            s.to_version,
            s.error,
            tuple((m.state, m.items_copied, m.wal_lag, m.error) for m in s.moves),
        )
        if key != last:
            emit(s)
            last = key
        if s.state.finished:
            return s
        pause(interval)


def run(args: argparse.Namespace) -> int:
    """Runs one ``vsearch admin`` subcommand; returns its exit code (see the module doc)."""
    check_arguments(args)
    command = args.admin_command
    out: Any
    with Connection.from_args(args).open() as conn:
        if command == "keys":
            out, text = run_keys(conn, args)
        elif command == "add-shard":
            started = add_shard(conn, args.shard_id, args.shard_address, args.weight, not args.no_rebalance)
            out = {"shard_id": args.shard_id, "rebalance": status_dict(started)}
            text = f"shard {args.shard_id} added at {args.shard_address} (weight {args.weight:g})"
            if started is None:
                text += ", joining: start moving its share with `vsearch admin rebalance`"
            else:
                text += "\n" + format_status(started)
        elif command == "drain-shard":
            s = drain_shard(conn, args.shard_id)
            out = {"shard_id": args.shard_id, "rebalance": status_dict(s)}
            text = f"draining shard {args.shard_id}\n" + format_status(s)
        elif command == "remove-shard":
            remove_shard(conn, args.shard_id)
            out = {"shard_id": args.shard_id, "removed": True}
            text = f"shard {args.shard_id} removed"
        elif command == "rebalance":
            plan, s = rebalance(conn, args.dry_run)
            out = {"moves": [plan_dict(m) for m in plan], "rebalance": status_dict(s)}
            text = format_plan(plan)
            if s is not None:
                text += "\n\nstarted " + format_status(s)
            elif plan and args.dry_run:
                text += "\n\n(dry run: nothing started)"
        elif command == "rebalance-status" and args.watch:

            def emit(s: RebalanceStatus) -> None:
                print(format_json(status_dict(s), indent=None) if args.json else watch_line(s), flush=True)

            last = watch(lambda i: rebalance_status(conn, i), args.id, emit)
            if last is None:
                print(format_json(None) if args.json else format_status(None))
            return 1 if last is not None and last.state is State.ABORTED else 0
        elif command == "rebalance-status":
            s = rebalance_status(conn, args.id)
            out, text = status_dict(s), format_status(s)
        elif command == "abort-rebalance":
            s = abort_rebalance(conn)
            out = status_dict(s)
            text = "abort requested: " + format_status(s)
        else:  # argparse allows only the commands above
            raise CliError(f"unknown admin command {command!r}")
    print(format_json(out) if args.json else text)
    return 0
