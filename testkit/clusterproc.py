"""Runs ``python -m server.cluster`` (N shard processes + the public server)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc

from testkit.procutil import REPO, read_tail, tree_env, wait_for_ready_file
from vsproto.v1 import admin_service_pb2_grpc, search_service_pb2_grpc


class ClusterProcess:
    """``root`` is the source tree the cluster runs from (default: this checkout); the cluster
    starts its shards from its own tree, with this environment."""

    def __init__(
        self,
        data_dir: Path,
        *extra_args: str,
        shards: int = 3,
        database_url: str | None = None,
        root: Path = REPO,
    ) -> None:
        self.data_dir = data_dir
        self.shards = shards
        self.extra_args = list(extra_args)
        self.database_url = database_url
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.channel: grpc.Channel | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self, timeout: float = 120.0) -> search_service_pb2_grpc.SearchServiceStub:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready = self.data_dir / "server.ready"
        ready.unlink(missing_ok=True)
        command = [
            sys.executable,
            "-m",
            "server.cluster",
            "--shards",
            str(self.shards),
            "--data-dir",
            str(self.data_dir),
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
            *self.extra_args,
        ]
        if self.database_url:
            command += ["--database-url", self.database_url]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=tree_env(self.root),
                start_new_session=True,  # its own process group, so stop() can sweep orphaned shards
            )
        try:
            self.address = wait_for_ready_file(self.proc, ready, timeout, "cluster", self.log_tail)
        except TimeoutError:
            self.stop()
            raise
        self.channel = grpc.insecure_channel(self.address)
        return search_service_pb2_grpc.SearchServiceStub(self.channel)

    def admin(self) -> admin_service_pb2_grpc.AdminServiceStub:
        assert self.channel is not None
        return admin_service_pb2_grpc.AdminServiceStub(self.channel)

    def log_tail(self, chars: int = 6000) -> str:
        return read_tail(self.log_path, chars)

    def shard_pid(self, index: int) -> int:
        """The pid of shard ``index`` (found by its data directory on the command line)."""
        marker = str(self.data_dir / f"shard-{index}").encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"-m\x00shard\x00" in cmdline and marker + b"\x00" in cmdline:
                return int(entry.name)
        raise LookupError(f"shard-{index} is not running")

    def stop(self) -> None:
        """SIGTERM (the cluster drains its shards), SIGKILL after 30 s, then kills whatever is
        left of its process group (shards orphaned by a SIGKILL)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
