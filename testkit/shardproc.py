"""Runs real shard server processes: start, wait for readiness, kill, restart."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc

from testkit.procutil import REPO, read_tail, tree_env, wait_for_ready_file
from testkit.shard_client import ShardClient


class ShardProcess:
    """A ``python -m shard`` subprocess on a free loopback port with its own data directory.

    ``root`` is the source tree the shard runs from (default: this checkout). ``credentials``:
    what its client connects with (a shard started with ``--tls-*`` needs the cluster client
    certificate).
    """

    def __init__(
        self,
        data_dir: Path,
        *extra_args: str,
        log_path: Path | None = None,
        root: Path = REPO,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.credentials = credentials
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.log_path = log_path or data_dir.parent / f"{data_dir.name}.log"
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.client: ShardClient | None = None

    def start(self, timeout: float = 60.0) -> ShardClient:
        ready = self.data_dir.parent / f"{self.data_dir.name}.ready"
        ready.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "shard",
            "--data-dir",
            str(self.data_dir),
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, env=tree_env(self.root)
            )
        try:
            self.address = wait_for_ready_file(self.proc, ready, timeout, "shard", self.log_tail)
        except TimeoutError:
            self.kill()
            raise
        self.client = ShardClient(self.address, credentials=self.credentials)
        self.client.wait_ready()
        return self.client

    def log_tail(self, chars: int = 4000) -> str:
        return read_tail(self.log_path, chars)

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        """Signals the process and waits for it; then closes the client channel."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
            code = self.proc.wait(timeout=60)
            self.proc = None
        if self.client is not None:
            self.client.close()
            self.client = None
        return code

    def stop(self) -> int | None:
        return self.kill(signal.SIGTERM)

    def restart(self, sig: int = signal.SIGKILL) -> ShardClient:
        self.kill(sig)
        return self.start()

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)
