"""``vsearch``: the command line of vectorsearch.

    vsearch up [--weights HF_DIR]                  a local cluster with CLIP on Triton (Ctrl-C stops it)
    vsearch index DIR|GLOB ... [--collection C]    index image files (resumable)
    vsearch search "a red bicycle" | --image FILE  the nearest images, as a table (--tag T: only tagged ones)
    vsearch status                                 collections, counts, model, shard health
    vsearch admin add-shard ID HOST:PORT [--weight W] [--no-rebalance]
                                                   register a shard and move its share to it
    vsearch admin drain-shard ID                   move everything off a shard (it leaves the ring)
    vsearch admin remove-shard ID                  forget an empty shard (drained or never joined)
    vsearch admin rebalance [--dry-run]            start (or only plan) the moves the ring implies
    vsearch admin rebalance-status [--id N] [--watch]
                                                   a rebalance's state, per move (--watch: until done)
    vsearch admin abort-rebalance                  abort the running rebalance
    vsearch admin keys create NAME --role R [--collection C]...
                                                   an API key (printed once); list [--all]; revoke ID

Every command but ``up`` talks to ``--address`` (else ``$VSEARCH_ADDRESS``, else
127.0.0.1:7000), over TLS with ``--tls-ca FILE`` (``$VSEARCH_TLS_CA``; docs/tls.md), sending
``--api-key`` (else ``$VSEARCH_API_KEY``) when the server needs keys. ``status``, ``search`` and
the ``admin`` commands print JSON with ``--json``.
Exit codes: 0 success; 1 ``index`` finished but some files failed, or ``admin rebalance-status
--watch`` saw the rebalance end aborted; 2 an error reported as one line (server unreachable,
unknown collection, bad arguments, a refused admin call).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli import common
from cli.common import CliError, Connection


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsearch", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--address", default=common.default_address(), help="server host:port (env VSEARCH_ADDRESS)")
    common.add_tls_arguments(parser)
    parser.add_argument(
        "--api-key",
        default=common.default_api_key(),
        help="the API key to send (env VSEARCH_API_KEY; prefer the variable: a flag shows in the process list)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from cli import up

    up.add_arguments(commands.add_parser("up", help="start a local cluster with CLIP on Triton"))

    index = commands.add_parser("index", help="index image files (directories, globs)")
    index.add_argument("paths", nargs="+", metavar="DIR|GLOB")
    index.add_argument("--collection", default=common.DEFAULT_COLLECTION)
    index.add_argument("--dim", type=int, default=None, help="dimension when creating the collection")
    index.add_argument("--batch", type=int, default=32, help="files per request (at most 256)")
    index.add_argument("--jobs", type=int, default=4, help="requests in flight at once")
    index.add_argument(
        "--tag", action="append", default=[], help="a tag for every newly indexed image (repeat for more)"
    )
    index.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="the progress bar on stderr (auto: when stderr is a terminal)",
    )

    search = commands.add_parser("search", help="search by text or by image")
    search.add_argument("text", nargs="?", default=None)
    search.add_argument("--image", type=Path, default=None, help="an image file to search by")
    search.add_argument("--collection", default=common.DEFAULT_COLLECTION)
    search.add_argument("-k", type=int, default=10, help="results (default 10)")
    search.add_argument("--json", action="store_true", help="JSON instead of a table")
    search.add_argument("--wide", action="store_true", help="full ids")
    search.add_argument("--tag", action="append", default=[], help="only images with this tag (repeat: all of them)")
    search.add_argument("--explain", action="store_true", help="how each shard searched (plan and counts)")

    status = commands.add_parser("status", help="collections, counts, embedding model, shard health")
    status.add_argument("--json", action="store_true", help="JSON instead of tables")

    from cli import admin

    admin.add_arguments(commands.add_parser("admin", help="shards, rebalancing and API keys"))
    return parser


def cmd_index(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cli.index import BatchResult, Indexer, IndexOptions, ensure_collection, find_files

    if not 1 <= args.batch <= 256 or args.jobs < 1:
        raise CliError("--batch must be 1..256 and --jobs at least 1")
    files = find_files(args.paths)
    options = IndexOptions(args.collection, batch=args.batch, jobs=args.jobs, dim=args.dim, tags=tuple(args.tag))
    with Connection.from_args(args).open() as conn:
        described = ensure_collection(conn, options)
        print(
            f"indexing {len(files)} files into {args.collection!r} ({described.count} items, "
            f"{described.dimension}-d) on {args.address}",
            flush=True,
        )
        bar = tqdm(
            total=len(files),
            unit="img",
            disable={"auto": None, "on": False, "off": True}[args.progress],
            dynamic_ncols=True,
        )
        counts = {"new": 0, "skipped": 0, "failed": 0}

        def progress(batch: BatchResult) -> None:
            counts["new"] += batch.indexed
            counts["skipped"] += batch.skipped
            counts["failed"] += len(batch.failed)
            bar.set_postfix(counts, refresh=False)
            bar.update(batch.files)

        try:
            report = Indexer(conn, options).run(files, progress)
        finally:
            bar.close()
    for path, why in report.failed:
        print(f"failed: {path}: {why}", file=sys.stderr)
    rate = report.files / report.seconds if report.seconds else 0.0
    new_rate = report.indexed / report.seconds if report.seconds else 0.0
    print(
        f"done: {report.indexed} new, {report.skipped} already indexed, {len(report.failed)} failed "
        f"of {len(files)} files in {report.seconds:.1f} s ({rate:.1f} files/s, {new_rate:.1f} new images/s)"
    )
    return 1 if report.failed else 0


def cmd_search(args: argparse.Namespace) -> int:
    from cli import search

    with Connection.from_args(args).open() as conn:
        answer = search.search(
            conn, args.collection, args.k, text=args.text, image=args.image, tags=args.tag, explain=args.explain
        )
    print(search.format_json(answer) if args.json else search.format_table(answer, wide=args.wide))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from cli import status

    with Connection.from_args(args).open() as conn:
        result = status.status(conn)
    print(status.format_json(result) if args.json else status.format_text(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit code (see the module doc)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "up":
            from cli import up

            return up.run(args, args.address)
        if args.command == "admin":
            from cli import admin

            return admin.run(args)
        handler = {"index": cmd_index, "search": cmd_search, "status": cmd_status}[args.command]
        return handler(args)
    except CliError as exc:
        print(f"vsearch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
