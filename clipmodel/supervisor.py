"""``TritonSupervisor``: one tritonserver kept running for a long-lived process (the local
cluster): started and waited for, restarted on the same ports when it dies.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from clipmodel.triton_process import TritonProcess

log = logging.getLogger(__name__)


class TritonSupervisor:
    """Runs tritonserver for ``repo`` from ``workdir``: ``start()`` returns once it is READY
    (``TritonNotFoundError`` / ``TritonStartError`` with the log tail otherwise); a watcher thread
    logs an exit with the log tail and restarts it on the same ports, at most ``restarts`` times;
    ``stop()`` ends the watcher and the server. ``url`` is the gRPC ``host:port``."""

    def __init__(self, repo: Path, workdir: Path, restarts: int = 3, timeout: float = 180.0) -> None:
        self.repo = repo
        self.workdir = workdir
        self.restarts = restarts
        self.timeout = timeout
        self.process: TritonProcess | None = None
        self.url = ""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="triton-watch", daemon=True)

    def start(self) -> str:
        process = TritonProcess(self.repo, self.workdir)
        try:
            process.start(timeout=self.timeout)
        except BaseException:
            process.stop()
            raise
        self.process, self.url = process, process.grpc_url
        log.info("tritonserver READY on %s in %.1f s (log %s)", self.url, process.start_seconds, process.log_path)
        self._watcher.start()
        return self.url

    def _watch(self) -> None:
        left = self.restarts
        while not self._stopping.wait(0.5):
            with self._lock:
                current = self.process
                proc = current.proc if current is not None else None
                if current is None or proc is None or proc.poll() is None or self._stopping.is_set():
                    continue
                log.error(
                    "tritonserver exited with %s: search and ingestion by text and image are UNAVAILABLE; "
                    "log tail (%s):\n%s",
                    proc.returncode,
                    current.log_path,
                    current.log_tail(3000),
                )
                current.stop()
                while left > 0 and not self._stopping.is_set():
                    left -= 1
                    if self._restart(current):
                        break
                else:
                    log.error("tritonserver not restarted (%d restarts allowed); stopping to watch it", self.restarts)
                    self.process = None
                    return

    def _restart(self, dead: TritonProcess) -> bool:
        """Starts a new tritonserver on the ports of ``dead``; False (logged) when it fails."""
        replacement = TritonProcess(self.repo, self.workdir, ports=dead.ports)
        try:
            replacement.start(timeout=self.timeout)
        except Exception as exc:
            replacement.stop()
            log.error("tritonserver restart failed: %s", exc)
            return False
        self.process = replacement
        log.warning("tritonserver restarted on %s", self.url)
        return True

    def stop(self) -> None:
        """Stops the watcher, then the server (SIGTERM, then SIGKILL). Idempotent."""
        self._stopping.set()
        with self._lock:
            if self.process is not None:
                self.process.stop()
                self.process = None
