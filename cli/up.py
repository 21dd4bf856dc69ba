"""``vsearch up``: a local cluster (shards, the public server, Triton serving CLIP) on embedded
defaults, in the foreground until Ctrl-C or SIGTERM.

Contract: runs ``server.cluster`` in this process with SQLite metadata and data in
``--data-dir`` (default ``$VSEARCH_HOME/data``), listening on ``--listen`` (default the
``vsearch`` address). The model: ``--weights HF_DIR`` (a local Hugging Face-format CLIP, e.g.
openai/clip-vit-base-patch32, exported once into the cache by ``clipmodel.export``), or
``--triton-repo DIR`` (an exported repository), else the small random CLIP, whose results carry
no meaning (a loud note says so). Once serving it prints the address and writes
``$VSEARCH_HOME/up.json`` (address, model, dimension) for the other commands; removed on exit.
Exit code: 0 after a clean stop, 1 when something did not start (the reason is logged).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cli.common import UpState, home

if TYPE_CHECKING:
    from clipmodel.identity import ModelIdentity

RANDOM_NOTE = """\
!!! vsearch is serving a RANDOMLY INITIALISED CLIP: embeddings, search results and scores carry
!!! NO MEANING (an image still finds itself). For real search, point it at real weights:
!!!   vsearch up --weights /path/to/clip-vit-base-patch32   (a local Hugging Face-format directory)"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir", type=Path, default=None, help="where shards and metadata live (default: $VSEARCH_HOME/data)"
    )
    p.add_argument("--listen", default=None, help="host:port to serve on (default: the vsearch address)")
    p.add_argument("--shards", type=int, default=3)
    model = p.add_mutually_exclusive_group()
    model.add_argument("--weights", type=Path, default=None, help="local Hugging Face-format CLIP directory")
    model.add_argument("--triton-repo", type=Path, default=None, help="an exported Triton model repository")
    p.add_argument(
        "--tls",
        type=Path,
        default=None,
        metavar="DIR",
        help="TLS (and mutual TLS to the shards) with a development CA made in DIR; then pass "
        "--tls-ca DIR/ca.pem to the other commands",
    )
    p.add_argument("--verbose", action="store_true", help="log every component at INFO (default: warnings)")


def cluster_argv(args: argparse.Namespace, address: str) -> list[str]:
    """The ``python -m server.cluster`` arguments for ``args``."""
    data_dir = args.data_dir or home() / "data"
    argv = ["--shards", str(args.shards), "--data-dir", str(data_dir), "--listen", args.listen or address]
    if args.triton_repo is not None:
        argv += ["--triton-repo", str(args.triton_repo)]
    else:
        argv += ["--clip", str(args.weights.resolve()) if args.weights is not None else "random"]
    argv += [
        "--log-level",
        "INFO" if args.verbose else "WARNING",
        "--database-url",
        f"sqlite:///{data_dir.resolve() / 'meta.db'}",
    ]
    if getattr(args, "tls", None) is not None:
        argv += ["--tls", str(args.tls)]
    return argv


def run(args: argparse.Namespace, address: str) -> int:
    from server import cluster

    argv = cluster_argv(args, address)
    data_dir = Path(argv[argv.index("--data-dir") + 1])
    random_model = args.weights is None and args.triton_repo is None
    states: list[UpState] = []
    if random_model:
        print(RANDOM_NOTE, file=sys.stderr, flush=True)
    print(f"vsearch up: starting {args.shards} shards, the server and Triton (data in {data_dir}) ...", flush=True)

    def on_ready(served: str, identity: ModelIdentity | None) -> None:
        model = identity.id if identity is not None else ""
        state = UpState(served, model, identity.dim if identity is not None else 0, str(data_dir), os.getpid())
        state.write()
        states.append(state)
        print(f"vsearch up: serving on {served}", flush=True)
        print(f"  model: {model} ({state.dimension}-d)", flush=True)
        if random_model:
            print(RANDOM_NOTE, file=sys.stderr, flush=True)
        print(f"  try:   vsearch index ~/Pictures && vsearch search 'a red bicycle'   (address {served})", flush=True)
        print("  Ctrl-C stops everything.", flush=True)

    try:
        return cluster.main(argv, on_ready=on_ready)
    finally:
        for state in states:
            state.remove()
