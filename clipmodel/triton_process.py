"""NVIDIA Triton Inference Server as a child process: ``start(repo)`` -> a running, READY server
on free loopback ports; ``stop()`` ends it and every process it started.

The server is the ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel (python backend
only). For each start a private backends directory is assembled in the work directory (the
wheel's python backend plus the backend stub built for this Python version: the wheel does not
ship them together), the interpreter's ``bin`` goes first on PATH (the stub's embedded Python
finds the virtual environment, hence numpy, onnxruntime, Pillow, through it) and its ``lib`` on
LD_LIBRARY_PATH (the stub must load this interpreter's libpython, not another 3.11 build's).
gRPC, HTTP and metrics listen on 127.0.0.1 only.

Errors: ``TritonNotFoundError`` when no tritonserver is installed; ``TritonStartError`` when the
process exits or is not READY (server and every model in the repository) within the timeout,
with the tail of its log. A start that lost a port race is retried on new ports.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

LOG_TAIL_CHARS = 6000
_HINT = "bash scripts/setup.sh installs it: pip install --no-deps nvidia-pytriton, which bundles tritonserver"


class TritonNotFoundError(RuntimeError):
    """No tritonserver to run."""


class TritonStartError(RuntimeError):
    """tritonserver exited, or was not READY in time; the message ends with its log tail."""


@dataclass(frozen=True)
class TritonInstall:
    """``binary``: the tritonserver executable; ``python_backend``: the directory holding
    ``libtriton_python.so``; ``stub``: ``triton_python_backend_stub`` for this Python version;
    ``libs``: the shared libraries they link (found through a relative RPATH, which a copy of
    the backend loses, so they also go on LD_LIBRARY_PATH)."""

    binary: Path
    python_backend: Path
    stub: Path
    libs: Path

    def check(self) -> TritonInstall:
        """Itself, or TritonNotFoundError naming the first missing file."""
        for path in (self.binary, self.python_backend / "libtriton_python.so", self.stub):
            if not path.is_file():
                raise TritonNotFoundError(f"tritonserver install incomplete: {path} is missing ({_HINT})")
        return self


@dataclass(frozen=True)
class Ports:
    grpc: int
    http: int
    metrics: int


def find_install() -> TritonInstall:
    """The tritonserver of the installed nvidia-pytriton wheel (found without importing it)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotFoundError(f"tritonserver not found: the nvidia-pytriton package is not installed ({_HINT})")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = TritonInstall(
        binary=root / "bin" / "tritonserver",
        python_backend=root / "backends" / "python",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=root.parent.parent / "nvidia_pytriton.libs",
    )
    return install.check()


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now (a later bind may still lose a race)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def child_env(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the server runs in: this interpreter's bin first on PATH; on
    LD_LIBRARY_PATH its lib directory (when it holds a shared libpython) first, then the
    install's libraries."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    libdir = sysconfig.get_config_var("LIBDIR")
    ldlibrary = sysconfig.get_config_var("LDLIBRARY")
    own = [libdir] if libdir and ldlibrary and (Path(libdir) / str(ldlibrary)).exists() else []
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*own, str(install.libs), *filter(None, [env.get("LD_LIBRARY_PATH")])])
    return env


def _backends_dir(install: TritonInstall, workdir: Path) -> Path:
    """``workdir/backends/python``: the wheel's python backend with this Python's stub beside it."""
    target = workdir / "backends" / "python"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(install.python_backend, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(install.stub, target / "triton_python_backend_stub")
    return workdir / "backends"


def _models(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())


class TritonProcess:
    """One tritonserver serving ``repo``. ``start()`` returns when it is READY; the handle is a
    context manager that stops it. ``grpc_url`` is ``127.0.0.1:PORT`` (for tritonclient.grpc)."""

    def __init__(
        self,
        repo: Path,
        workdir: Path | None = None,
        *,
        ports: Ports | None = None,
        install: TritonInstall | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.repo = repo.resolve()
        self._own_workdir = workdir is None
        self.workdir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="vs-triton-"))
        self._fixed_ports = ports
        self.ports = ports
        self._install = install
        self.extra_args = extra_args
        self.log_path = self.workdir / "tritonserver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    @property
    def grpc_url(self) -> str:
        if self.ports is None:
            raise RuntimeError("tritonserver is not started")
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("tritonserver is not started")
        return self.proc.pid

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def start(self, timeout: float = 120.0, attempts: int = 3) -> TritonProcess:
        """Starts the server and waits until it and every model of the repository are READY."""
        install = self._install.check() if self._install else find_install()
        models = _models(self.repo)
        if not models:
            raise TritonStartError(f"{self.repo} holds no model (no */config.pbtxt)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        backends = _backends_dir(install, self.workdir)
        began = time.monotonic()
        for attempt in range(1, attempts + 1):
            self.ports = self._fixed_ports or Ports(*free_ports(3))
            self._spawn(install, backends)
            try:
                self._wait_ready(models, began + timeout)
                self.start_seconds = time.monotonic() - began
                return self
            except TritonStartError:
                tail = self.log_tail()
                self.stop()
                lost_port = "already in use" in tail or "Failed to start" in tail
                if self._fixed_ports is not None or not lost_port or attempt == attempts:
                    raise
        raise AssertionError("unreachable")

    def _spawn(self, install: TritonInstall, backends: Path) -> None:
        assert self.ports is not None
        command = [
            str(install.binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={backends}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.ports.grpc}",
            "--http-address=127.0.0.1",
            f"--http-port={self.ports.http}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.ports.metrics}",
            "--disable-auto-complete-config",
            "--exit-on-error=true",
            "--exit-timeout-secs=10",
            *self.extra_args,
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"\n== {' '.join(command)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=child_env(install),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self, models: list[str], deadline: float) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        assert self.proc is not None
        with grpcclient.InferenceServerClient(self.grpc_url) as client:
            while True:
                if self.proc.poll() is not None:
                    raise TritonStartError(
                        f"tritonserver exited with {self.proc.returncode} before READY; log:\n{self.log_tail()}"
                    )
                try:
                    if client.is_server_ready(client_timeout=2) and all(
                        client.is_model_ready(name, client_timeout=2) for name in models
                    ):
                        return
                except InferenceServerException:
                    pass
                if time.monotonic() > deadline:
                    raise TritonStartError(f"tritonserver not READY in time; log:\n{self.log_tail()}")
                time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, SIGKILL after ``timeout`` s; then SIGKILL for anything left in its process
        group (python backend stubs). Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Stops the server and removes the work directory if this handle created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> TritonProcess:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def start(repo: Path, workdir: Path | None = None, ports: Ports | None = None, timeout: float = 120.0) -> TritonProcess:
    """A READY tritonserver serving ``repo`` (see ``TritonProcess``)."""
    process = TritonProcess(repo, workdir, ports=ports)
    try:
        return process.start(timeout=timeout)
    except BaseException:
        process.close()
        raise
