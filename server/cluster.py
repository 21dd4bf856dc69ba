"""Local cluster in one command: N shard processes and the public server, on loopback.

    python -m server.cluster --shards 3 --data-dir ./data/cluster [--listen 127.0.0.1:7000]
                             [--database-url postgresql+psycopg://...] [--ready-file F]

Embedded defaults: metadata and topology in SQLite at ``<data-dir>/meta.db``. Shards keep
their data in ``<data-dir>/shard-<i>`` and listen on free loopback ports; they are
(re)registered in the topology under ids ``shard-<i>`` at every start, so a restart finds its
data again. SIGTERM/SIGINT stop the server and then the shards (each drains and fsyncs).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from server.main import ServerProcess, add_arguments, wait_for_signal

log = logging.getLogger("cluster")
REPO = Path(__file__).resolve().parent.parent


def start_shard(data_dir: Path, index: int, shard_args: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    shard_dir = data_dir / f"shard-{index}"
    ready = data_dir / f"shard-{index}.ready"
    ready.unlink(missing_ok=True)
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
        cwd=REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    log_file.close()
    return proc, ready


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("./data/cluster"))
    parser.add_argument("--shard-arg", action="append", default=[], help="extra flag for every shard (repeatable)")
    add_arguments(parser)
    parser.set_defaults(database_url=os.environ.get("VS_SERVER_DATABASE_URL"))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout
    )
    args.data_dir.mkdir(parents=True, exist_ok=True)
    if not args.database_url:
        args.database_url = f"sqlite:///{args.data_dir.resolve() / 'meta.db'}"
    shards = [start_shard(args.data_dir, i, args.shard_arg) for i in range(args.shards)]
    try:
        deadline = time.monotonic() + 120
        addresses = []
        for index, (proc, ready) in enumerate(shards):
            while not ready.exists():
                if proc.poll() is not None:
                    log.error(
                        "shard-%d exited with %s; see %s", index, proc.returncode, args.data_dir / f"shard-{index}.log"
                    )
                    return 1
                if time.monotonic() > deadline:
                    log.error("shard-%d not ready after 120 s", index)
                    return 1
                time.sleep(0.05)
            addresses.append(ready.read_text())
        args.register_shard = [f"shard-{i}={a}" for i, a in enumerate(addresses)] + list(args.register_shard)
        process = ServerProcess(args)
        process.start()
        log.info("cluster up: server %s, shards %s", process.address, ", ".join(addresses))
        wait_for_signal()
        process.stop()
        return 0
    finally:
        for proc, _ in shards:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in shards:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    raise SystemExit(main())
