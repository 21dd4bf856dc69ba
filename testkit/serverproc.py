"""Runs the single-node shape: ``python -m server --local-shard DIR`` (the public server owning
one shard in its own process), with metadata in SQLite."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from testkit.procutil import REPO, read_tail, tree_env, wait_for_ready_file


class SingleNodeProcess:
    """``root`` is the source tree the server runs from (default: this checkout). With
    ``local_shard=False`` the server owns no shard (and has none unless ``extra_args`` register
    some): a server of a cluster, or one with no shards at all."""

    def __init__(self, workdir: Path, *extra_args: str, root: Path = REPO, local_shard: bool = True) -> None:
        self.workdir = workdir
        self.local_shard = local_shard
        self.extra_args = list(extra_args)
        self.root = root
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    def start(self, timeout: float = 120.0) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / "server.ready"
        ready.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "server",
            "--database-url",
            f"sqlite:///{self.workdir / 'meta.db'}",
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            *(("--local-shard", str(self.workdir / "shard")) if self.local_shard else ()),
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=tree_env(self.root)
            )
        try:
            self.address = wait_for_ready_file(self.proc, ready, timeout, "server", self.log_tail)
        except TimeoutError:
            self.stop()
            raise
        return self.address

    def log_tail(self, chars: int = 6000) -> str:
        return read_tail(self.log_path, chars)

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
