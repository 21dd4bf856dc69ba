"""Local cluster in one command: N shard processes and the public server, on loopback; with
``--clip`` or ``--triton-repo``, also NVIDIA Triton serving CLIP for search and ingestion by
text and image.

    python -m server.cluster --shards 3 --data-dir ./data/cluster [--listen 127.0.0.1:7000]
                             [--database-url postgresql+psycopg://...] [--ready-file F]
                             [--clip random|HF_DIR | --triton-repo DIR] [--tls DIR]

Embedded defaults: metadata and topology in SQLite at ``<data-dir>/meta.db``. Shards keep
their data in ``<data-dir>/shard-<i>`` and listen on free loopback ports; they are
(re)registered in the topology under ids ``shard-<i>`` at every start, so a restart finds its
data again. SIGTERM/SIGINT stop the server, then Triton, then the shards (each drains and fsyncs).

TLS: ``--tls DIR`` makes a development CA and certificates in DIR unless usable ones are there
(``core.devcerts``: ``ca.pem``, ``server.pem``, ``shard.pem``, ``client.pem`` and keys) and runs
everything on them: the public port serves TLS (clients trust ``DIR/ca.pem``: ``vsearch --tls-ca
DIR/ca.pem status``), every shard takes only mutual TLS with the cluster client certificate,
which the server presents. Without it: plain text on loopback, as before. docs/tls.md.

Triton: ``--triton-repo DIR``
serves an exported model repository (``python -m clipmodel.export``); ``--clip random`` builds
the small random CLIP of ``clipmodel.random`` and ``--clip HF_DIR`` exports local Hugging
Face-format weights, each once, into the cache (``clipmodel.vocab.cache_dir()/models``). Triton
runs from ``<data-dir>/triton`` (its log: ``tritonserver.log`` there) on free loopback ports; the
cluster waits until it and both models are READY, passes ``--triton-url`` to the server and
writes the served model's identity to ``<data-dir>/embedding-model.json``. A missing
tritonserver or one that does not come up ends the start with exit code 1 and its log tail; one
that dies later is logged with its log tail and restarted on the same ports (at most
``--triton-restarts`` times); meanwhile search and ingestion by text and image are UNAVAILABLE.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from core import logs
from server.main import ServerProcess, add_arguments, wait_for_signal
from shard import blas, heap

if TYPE_CHECKING:
    from clipmodel.identity import ModelIdentity
    from clipmodel.supervisor import TritonSupervisor

log = logging.getLogger("cluster")
REPO = Path(__file__).resolve().parent.parent
MODEL_FILE = "embedding-model.json"

OnReady = Callable[[str, "ModelIdentity | None"], None]


def start_shard(data_dir: Path, index: int, shard_args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    shard_dir = data_dir / f"shard-{index}"
    ready = data_dir / f"shard-{index}.ready"
    ready.unlink(missing_ok=True)
    Path(f"{ready}.metrics").unlink(missing_ok=True)
    log_file = open(data_dir / f"shard-{index}.log", "ab")  # noqa: SIM115  (handed to the child)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shard",
            "--data-dir",
            str(shard_dir),
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            *shard_args,
        ],
        # A checkout run without installing needs its root as the working directory.
        cwd=REPO if (REPO / "pyproject.toml").exists() else None,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    log_file.close()
    return proc, ready


def add_triton_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Triton (search and ingestion by text and image)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument(
        "--clip",
        metavar="random|HF_DIR",
        default=None,
        help="start Triton with CLIP: 'random' (a small random model: results carry no meaning) or a local "
        "Hugging Face-format CLIP directory (e.g. openai/clip-vit-base-patch32), exported once into the cache",
    )
    choice.add_argument("--triton-repo", type=Path, default=None, help="start Triton serving this exported repository")
    group.add_argument("--model-cache", type=Path, default=None, help="where --clip exports go (default: user cache)")
    group.add_argument("--triton-timeout-s", type=float, default=180.0, help="how long Triton may take to be READY")
    group.add_argument("--triton-restarts", type=int, default=3, help="restarts of a Triton that died")


# ---------------------------------------------------------------------------- the cluster
def _wait_for_shards(shards: list[tuple[subprocess.Popen[bytes], Path]], data_dir: Path) -> list[str] | None:
    deadline = time.monotonic() + 120
    addresses = []
    for index, (proc, ready) in enumerate(shards):
        while not ready.exists():
            if proc.poll() is not None:
                log.error("shard-%d exited with %s; see %s", index, proc.returncode, data_dir / f"shard-{index}.log")
                return None
            if time.monotonic() > deadline:
                log.error("shard-%d not ready after 120 s", index)
                return None
            time.sleep(0.05)
        addresses.append(ready.read_text())
    return addresses


def _start_triton(args: argparse.Namespace) -> tuple[TritonSupervisor, ModelIdentity] | None:
    """Triton for ``--clip``/``--triton-repo``, READY; None (error logged) when it cannot start."""
    from clipmodel.identity import ModelIdentity
    from clipmodel.repository import prepare_model_repo
    from clipmodel.supervisor import TritonSupervisor
    from clipmodel.triton_process import TritonNotFoundError, TritonStartError

    try:
        repo = args.triton_repo.resolve() if args.triton_repo else prepare_model_repo(args.clip, args.model_cache)
        identity = ModelIdentity.read(repo)
    except (OSError, ValueError) as exc:
        log.error("no model repository for Triton: %s", exc)
        return None
    supervisor = TritonSupervisor(repo, args.data_dir / "triton", args.triton_restarts, args.triton_timeout_s)
    try:
        supervisor.start()
    except TritonNotFoundError as exc:
        log.error("%s", exc)
        return None
    except TritonStartError as exc:
        log.error("tritonserver did not start: %s", exc)
        return None
    (args.data_dir / MODEL_FILE).write_text(identity.to_json())
    return supervisor, identity


def shard_arguments(args: argparse.Namespace) -> list[str]:
    """Every shard's extra flags: ``--shard-arg`` values, plus ``--metrics-listen HOST:0`` (a free
    port each, on the server's metrics host) when the server exports metrics and they do not
    say otherwise."""
    extra = list(args.shard_arg)
    if args.metrics_listen and not any(a.startswith("--metrics-listen") for a in extra):
        host = args.metrics_listen.rsplit(":", 1)[0] or "127.0.0.1"
        extra += ["--metrics-listen", f"{host}:0"]
    return extra


def _log_shard_metrics(data_dir: Path, shards: int) -> None:
    for i in range(shards):
        metrics = data_dir / f"shard-{i}.ready.metrics"
        if metrics.exists():
            log.info("shard-%d metrics on http://%s/metrics", i, metrics.read_text().strip())


def _raise_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _use_tls(args: argparse.Namespace) -> None:
    """``--tls DIR``: the development certificates in DIR (made when missing) for the public
    port, every shard (mutual TLS) and the server's channels to them."""
    from core import devcerts

    certs = args.tls.resolve()
    if devcerts.ensure(certs):
        log.info("made a development CA and certificates in %s", certs)
    args.tls_cert, args.tls_key = str(certs / "server.pem"), str(certs / "server-key.pem")
    args.shard_tls_ca = str(certs / "ca.pem")
    args.shard_tls_cert, args.shard_tls_key = str(certs / "client.pem"), str(certs / "client-key.pem")
    args.shard_arg = [
        *args.shard_arg,
        f"--tls-cert={certs / 'shard.pem'}",
        f"--tls-key={certs / 'shard-key.pem'}",
        f"--tls-ca={certs / 'ca.pem'}",
    ]


def run(args: argparse.Namespace, on_ready: OnReady | None = None) -> int:
    """Starts the cluster of parsed ``args``, calls ``on_ready(address, identity)`` once it serves
    (identity: the CLIP model Triton serves, or None without Triton), waits for SIGTERM/SIGINT,
    stops everything. Returns the exit code: 0, or 1 when something did not start."""
    args.data_dir.mkdir(parents=True, exist_ok=True)
    if not args.database_url:
        args.database_url = f"sqlite:///{args.data_dir.resolve() / 'meta.db'}"
    with_triton = bool(args.clip or args.triton_repo)
    if with_triton and args.triton_url:
        log.error("--triton-url names a running Triton; --clip/--triton-repo start one: pass only one of them")
        return 2
    if args.tls is not None:
        _use_tls(args)
    if with_triton:  # a SIGTERM while Triton starts still stops what was started
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
    shards = [start_shard(args.data_dir, i, shard_arguments(args)) for i in range(args.shards)]
    triton: TritonSupervisor | None = None
    try:
        identity = None
        if with_triton:
            started = _start_triton(args)
            if started is None:
                return 1
            triton, identity = started
            args.triton_url = triton.url
        addresses = _wait_for_shards(shards, args.data_dir)
        if addresses is None:
            return 1
        args.register_shard = [f"shard-{i}={a}" for i, a in enumerate(addresses)] + list(args.register_shard)
        _log_shard_metrics(args.data_dir, len(shards))
        process = ServerProcess(args)
        process.start()
        log.info(
            "cluster up: server %s, shards %s%s",
            process.address,
            ", ".join(addresses),
            f", Triton {triton.url} serving {identity.id}" if triton and identity else "",
        )
        if on_ready is not None:
            on_ready(process.address, identity)
        wait_for_signal()
        process.stop()
        return 0
    finally:
        if triton is not None:
            triton.stop()
        for proc, _ in shards:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in shards:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m server.cluster", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--shards", type=int, default=3)
    p.add_argument("--data-dir", type=Path, default=Path("./data/cluster"))
    p.add_argument("--shard-arg", action="append", default=[], help="extra flag for every shard (repeatable)")
    p.add_argument(
        "--tls",
        type=Path,
        default=None,
        metavar="DIR",
        help="TLS on the public port and mutual TLS to every shard, with a development CA made in DIR when "
        "missing (clients trust DIR/ca.pem)",
    )
    add_arguments(p)
    add_triton_arguments(p)
    p.set_defaults(database_url=os.environ.get("VS_SERVER_DATABASE_URL"))
    return p


def main(argv: list[str] | None = None, on_ready: OnReady | None = None) -> int:
    heap.limit_arenas()  # before any thread starts (shard/heap.py)
    blas.limit_threads()  # one-query products on the caller's thread alone (shard/blas.py)
    args = parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    return run(args, on_ready)


if __name__ == "__main__":
    raise SystemExit(main())
